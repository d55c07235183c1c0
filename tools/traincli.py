"""``popscore train``, ``popscore evaluate`` and ``popscore export-*-encoder``: the trainer's commands, registered on
the main parser (tools/cli.py) by :func:`add_train_commands`. Also runnable alone:
``python -m popscore.tools.traincli train ...``. The argparse wiring lives with the other commands in tools, so the
trainer package stays a library that imports no tool."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from popscore.tools.datacli import DATASET_NAMES, fail, positive_int


MEMES = "reddit-memes"  # images + titles + final upvotes: the static image models (popscore.trainer.memes)


def _add_common(p: argparse.ArgumentParser, extra_datasets: tuple[str, ...] = ()) -> None:
    p.add_argument("--dataset", default="hackernews", choices=DATASET_NAMES + extra_datasets,
                   help="data set (popscore.datasets)" + (f"; {MEMES}: the memes recipe, static image+title models, "
                                                          "exported as popscore_reddit_image_static" if extra_datasets else ""))
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder of the real data sets (default ../shared/data, or $POPSCORE_SHARED_DATA)")
    p.add_argument("--limit", type=int, default=None, help="only the first N posts by first appearance")
    p.add_argument("--report-dir", type=Path, default=Path("reports"), help="folder for the training report")
    p.add_argument("--seed", type=int, default=0, help="random seed of the split and the training")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_train_commands(subparsers) -> None:
    """Register ``train``, ``evaluate`` and ``export-{text,image,audio}-encoder`` on an argparse subparsers object."""
    p = subparsers.add_parser("train", help="train a platform's model set (baselines + MTAF static/temporal) on rolling-origin folds, evaluate, export to model_repo")
    _add_common(p, extra_datasets=(MEMES,))
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs of each MTAF model (default: 6 epochs, at least 1,500 optimiser steps on "
                        "small data sets); an explicit value is honoured exactly")
    p.add_argument("--batch-size", type=int, default=512, help="training batch size (sequences)")
    p.add_argument("--no-text", action="store_true", help="do not use MiniLM title embeddings")
    p.add_argument("--no-gbt", action="store_true", help="skip the gradient-boosted tree baselines")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and the trees (default: the cores idle at start, at least 1)")
    p.add_argument("--embargo-h", type=float, default=None,
                   help="gap between the training and test windows (default 48 h; 12 h for reddit, which spans 41 h)")
    p.add_argument("--model-repo", dest="train_model_repo", type=Path, default=None,
                   help="Triton model repository to export into (default: the global --model-repo or model_repo/)")
    p.add_argument("--folds", type=positive_int, default=None,
                   help="rolling-origin folds; the latest fold's models are exported (default 3; the memes recipe: 6)")
    p.add_argument("--test-frac", type=float, default=0.3,
                   help="share of the posts, the latest, in the folds' test windows together (default 0.3)")
    p.add_argument("--label-wait-h", type=float, default=None,
                   help="leave posts created less than this before the data's end out of every test window (their "
                        "labels may not be final; Reddit: 12); the latest fold then trains on older posts")
    p.add_argument("--no-export", action="store_true", help="do not export/promote into the model repository")
    p.add_argument("--ocr", action="store_true", help=f"{MEMES}: also read each picture's caption with Tesseract "
                   "and compare the models that use it (the tesseract command; ~0.2 CPU-s a picture, cached)")
    p.add_argument("--views", action="store_true", help=f"{MEMES}: also embed each picture whole (letterboxed), in "
                   "three horizontal bands and at mid-level stages with the same frozen encoder, and compare the models "
                   "that use them (~5 encoder passes a picture, cached)")
    p.add_argument("--force", action="store_true", help="promote even if the gate says no")
    p.set_defaults(func=cmd_train)

    add_evaluate_command(subparsers)

    p = subparsers.add_parser("export-text-encoder", help="export the MiniLM title encoder (int8 ONNX + tokenizer) "
                              "into model_repo/popscore_text_encoder as a new version, after a parity check")
    p.add_argument("--model-repo", dest="train_model_repo", type=Path, default=None,
                   help="Triton model repository to export into (default: the global --model-repo or model_repo/)")
    p.add_argument("--max-length", type=int, default=None, help="fixed token length of every request (default 32)")
    p.add_argument("--no-quantize", action="store_true", help="keep fp32 (~90 MB) instead of int8 (~23 MB)")
    p.add_argument("--parity-limit", type=int, default=2000, help="HN titles compared with sentence-transformers")
    p.set_defaults(func=cmd_export_text_encoder)

    for kind, what in (("image", "EfficientNet-Lite0 image/frame encoder (1280-d)"),
                       ("audio", "aiSFX audio encoder (512-d per ~2.3 s block)")):
        p = subparsers.add_parser(f"export-{kind}-encoder", help=f"export the {what} as fp32 ONNX into "
                                  f"<model repo>/popscore_{kind}_encoder as a new version, after a parity check")
        p.add_argument("--model-repo", dest="train_model_repo", type=Path, default=None,
                       help="Triton model repository to export into (default: the global --model-repo or model_repo/)")
        p.add_argument("--max-batch-size", type=int, default=64, help="Triton max_batch_size in config.pbtxt")
        p.add_argument("--threads", type=int, default=2, help="CPU threads of the export")
        p.set_defaults(func=cmd_export_media_encoder, encoder_kind=kind)


def add_evaluate_command(subparsers) -> None:
    """``popscore evaluate``: the served ONNX models of a repository or candidate on a data set or event file."""
    p = subparsers.add_parser(
        "evaluate", help="score a model repository (or candidate) on a data set or event file: per-age table",
        description="Runs the exported ONNX models of every model set (or --platform's) with onnxruntime on "
                    "examples cut by the training feature code, and prints n, MAE, SRCC and 80%% interval "
                    "coverage per observation age beside persistence and Szabo-Huberman.")
    p.add_argument("--model-repo", dest="eval_model_repo", type=Path, default=None,
                   help="model repository, or a candidate folder under .popscore/candidates/<model>/<stamp> "
                        "(default: the global --model-repo or model_repo/)")
    p.add_argument("--platform", help="evaluate only this platform's model set (default: every model set)")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--dataset", choices=DATASET_NAMES, help="a data set read by its adapter; a model trained "
                      "on this very data set is scored on its chronological test window (metadata.json)")
    data.add_argument("--events", type=Path, metavar="FILE",
                      help="a JSON Lines event file (popscore import / simulate): all its posts")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="with --dataset: folder of the real data sets (default ../shared/data)")
    p.add_argument("--source", type=Path, metavar="PATH",
                   help="with --dataset: read it from this file or folder instead (as popscore import --source)")
    p.add_argument("--all-posts", action="store_true",
                   help="score every post with each model set, not only the posts of its platform")
    p.add_argument("--limit", type=positive_int, default=None, help="only the earliest N posts of each selection")
    p.add_argument("--text-encoder-repo", type=Path, default=None,
                   help="where popscore_text_encoder is (default: the model repository; without one titles are masked)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="onnxruntime threads (default: the cores idle at start, at least 1)")
    p.add_argument("--json", action="store_true",
                   help='print {"model_repo", "data", "model_sets", "results": [per model and age]} (NaN as null)')
    p.set_defaults(func=cmd_evaluate)


def cmd_export_media_encoder(args: argparse.Namespace) -> int:
    """``export-image-encoder`` / ``export-audio-encoder`` (popscore.trainer.image_encoder / audio_encoder)."""
    try:
        if args.encoder_kind == "image":
            from popscore.trainer.image_encoder import export_image_encoder as export
        else:
            from popscore.trainer.audio_encoder import export_audio_encoder as export
    except ImportError as exc:
        print(f"not exported: {exc} (install the train extra; aisfx with `pip install --no-deps aisfx`)",
              file=sys.stderr)
        return 2
    try:
        meta = export(_model_repo(args), max_batch_size=args.max_batch_size, threads=args.threads)
    except (RuntimeError, ImportError) as exc:
        print(f"not exported: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: meta[k] for k in ("model", "version", "embedding_dim", "onnx_bytes", "parity")}, indent=1))
    return 0


def cmd_export_text_encoder(args: argparse.Namespace) -> int:
    from popscore.trainer.text_export import DEFAULT_MAX_LENGTH, export_text_encoder

    try:
        meta = export_text_encoder(_model_repo(args), max_length=args.max_length or DEFAULT_MAX_LENGTH,
                                   quantize=not args.no_quantize, parity_limit=args.parity_limit)
    except RuntimeError as exc:
        print(f"not exported: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: meta[k] for k in ("model", "version", "max_length", "onnx_bytes", "parity")}, indent=1))
    return 0


def _model_repo(args: argparse.Namespace) -> Path:
    return Path(args.train_model_repo or getattr(args, "model_repo", None) or "model_repo")


def cmd_train(args: argparse.Namespace) -> int:
    from popscore.trainer.data import shared_data_dir

    data_dir = args.data_dir or shared_data_dir()
    if not Path(data_dir).is_dir():
        return fail("train", f"data directory {data_dir} does not exist (pass --data-dir)")
    if args.dataset == MEMES:
        return train_memes(args)
    from popscore.trainer.report import write_report
    from popscore.trainer.train import TrainConfig, run

    cfg = TrainConfig(
        dataset=args.dataset, limit=args.limit, seed=args.seed, epochs=args.epochs, batch_size=args.batch_size,
        text=not args.no_text, gbt=not args.no_gbt, threads=args.threads, report_dir=args.report_dir,
        model_repo=None if args.no_export else _model_repo(args), folds=args.folds or 3, test_frac=args.test_frac,
        progress=not args.no_progress, force=args.force, data_dir=args.data_dir, label_wait_h=args.label_wait_h,
        embargo_h=args.embargo_h if args.embargo_h is not None else (12.0 if args.dataset == "reddit" else 48.0),
    )  # fmt: skip
    t0 = time.time()
    results = run(cfg)
    command = "popscore train " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 else "popscore train"
    path = write_report(results, Path(args.report_dir) / args.dataset, command=command, wall_s=time.time() - t0)
    print(f"report: {path}")
    return 0


def train_memes(args: argparse.Namespace) -> int:
    """The memes recipe. It takes --limit, --seed, --epochs, --threads, --folds, --embargo-h (default 7 days),
    --report-dir, --model-repo, --no-export, --force, --data-dir, --ocr, --views; its batch size and test windows are its own
    (MemesConfig: the reference split is the last 20 %, six folds share the last 60 %)."""
    from popscore.trainer.memes import MemesConfig, run

    cfg = MemesConfig(
        data_dir=args.data_dir, limit=args.limit, seed=args.seed, epochs=args.epochs, threads=args.threads,
        report_dir=args.report_dir, model_repo=None if args.no_export else _model_repo(args),
        force=args.force, progress=not args.no_progress, ocr=args.ocr, views=args.views,
        **({"embargo_days": args.embargo_h / 24.0} if args.embargo_h is not None else {}),
        **({"folds": args.folds} if args.folds is not None else {}),
    )  # fmt: skip
    results = run(cfg)
    print(f"report: {Path(args.report_dir) / MEMES / 'report.md'}")
    return 0 if results["splits"] else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Load the data, score every model set, print the table or JSON. A bad path, file or model repository
    is one line on stderr and exit code 2."""
    if args.events is not None and (args.data_dir is not None or args.source is not None):
        return fail("evaluate", "--data-dir and --source go with --dataset, not --events")
    if args.data_dir is not None and args.source is not None:
        return fail("evaluate", "give --data-dir or --source, not both")
    try:
        from popscore.trainer import evaluate as E
    except ImportError as exc:
        return fail("evaluate", f"{exc} (evaluate needs onnxruntime: pip install 'popscore[serving]')")
    repo = Path(args.eval_model_repo or getattr(args, "model_repo", None) or "model_repo")
    try:
        sets = E.discover_model_sets(repo)  # a wrong repository or platform fails before the data is read
        if args.platform is not None and args.platform not in sets:
            return fail("evaluate", f"no model set for platform {args.platform!r} in {repo}; it has: "
                                    f"{', '.join(sorted(sets)) or 'none'}")
        if args.events is not None:
            data = E.load_event_file(args.events)
        else:
            data = E.load_dataset_data(args.dataset, data_dir=args.data_dir, source=args.source)
        for note in data.notes:
            E.log_to_stderr(note)
        result = E.evaluate(repo, data, platform=args.platform, all_posts=args.all_posts,
                            text_repo=args.text_encoder_repo, threads=args.threads, limit=args.limit,
                            log=E.log_to_stderr)
    except E.EvaluationError as exc:
        return fail("evaluate", exc)
    except ImportError as exc:
        return fail("evaluate", f"{exc} (reading data sets needs the train extra: pip install 'popscore[train]')")
    try:
        print(json.dumps(E.clean(result), indent=1, allow_nan=False) if args.json else E.render(result), flush=True)
    except BrokenPipeError:  # `popscore evaluate --json | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0 if result["results"] else 1  # nothing scored (no post of any model set's platform): say so


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="popscore")
    add_train_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
