"""``popscore train`` and ``popscore evaluate``: argparse wiring called by popscore/cli.py through
:func:`add_train_commands`. Also runnable alone: ``python -m popscore.trainer.cli train ...``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _add_common(p: argparse.ArgumentParser) -> None:
    from popscore.datacli import DATASET_NAMES  # not popscore.datasets: building the parser must not need pandas

    p.add_argument("--dataset", default="hackernews", choices=DATASET_NAMES, help="data set (popscore.datasets)")
    p.add_argument("--limit", type=int, default=None, help="only the first N posts by first appearance")
    p.add_argument("--report-dir", type=Path, default=Path("reports"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_train_commands(subparsers) -> None:
    """Register ``train``, ``evaluate`` and ``export-{text,image,audio}-encoder`` on an argparse subparsers object."""
    p = subparsers.add_parser("train", help="train baselines + MTAF static/temporal, evaluate, export to model_repo")
    _add_common(p)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--no-text", action="store_true", help="do not use MiniLM title embeddings")
    p.add_argument("--no-gbt", action="store_true", help="skip the gradient-boosted tree baselines")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--embargo-h", type=float, default=None,
                   help="gap between the training and test windows (default 48 h; 12 h for reddit, which spans 41 h)")
    p.add_argument("--model-repo", dest="train_model_repo", type=Path, default=None,
                   help="Triton model repository to export into (default: the global --model-repo or model_repo/)")
    p.add_argument("--no-export", action="store_true", help="do not export/promote into the model repository")
    p.add_argument("--export", action="store_true", help="export even when the data set is not hackernews "
                   "(the default model set is trained on HN; other data sets are evaluated only)")
    p.add_argument("--force", action="store_true", help="promote even if the gate says no")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("evaluate", help="per-age metrics of the last training run (report + plots)")
    _add_common(p)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON (model, age_h, n, mae, ...)")
    p.set_defaults(func=cmd_evaluate)

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
        p.add_argument("--threads", type=int, default=2)
        p.set_defaults(func=cmd_export_media_encoder, encoder_kind=kind)


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
    from popscore.trainer.report import write_report
    from popscore.trainer.train import TrainConfig, run

    cfg = TrainConfig(
        dataset=args.dataset, limit=args.limit, seed=args.seed, epochs=args.epochs, batch_size=args.batch_size,
        text=not args.no_text, gbt=not args.no_gbt, threads=args.threads, report_dir=args.report_dir,
        model_repo=None if args.no_export or (args.dataset != "hackernews" and not args.export) else _model_repo(args),
        progress=not args.no_progress, force=args.force,
        embargo_h=args.embargo_h if args.embargo_h is not None else (12.0 if args.dataset == "reddit" else 48.0),
    )  # fmt: skip
    from popscore.trainer.data import shared_data_dir

    if not shared_data_dir().is_dir():
        print(f"dataset not found under {shared_data_dir()}", file=sys.stderr)
        return 2
    t0 = time.time()
    results = run(cfg)
    command = "popscore train " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 else "popscore train"
    path = write_report(results, Path(args.report_dir) / args.dataset, command=command, wall_s=time.time() - t0)
    print(f"report: {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from popscore.trainer.report import load_results, write_report

    out_dir = Path(args.report_dir) / args.dataset
    try:
        results = load_results(out_dir)
    except FileNotFoundError:
        print(f"no training results under {out_dir}: run `popscore train` first", file=sys.stderr)
        return 2
    if args.json:
        keys = ("model", "age_h", "n", "mae", "mse", "r2", "srcc", "ndcg_at_10")
        clean = lambda v: None if isinstance(v, float) and v != v else v  # noqa: E731  NaN -> null (valid JSON)
        rows = [{k: clean(r[k]) for k in keys} for r in results["metrics"]]
        summary = {"dataset": results.get("dataset", args.dataset), "window": results.get("window"), "results": rows}
        print(json.dumps(summary, indent=1, allow_nan=False))
        return 0
    path = write_report(results, out_dir, command=results.get("command", "popscore train"), wall_s=results.get("train_seconds"))
    print(path.read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="popscore")
    add_train_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
