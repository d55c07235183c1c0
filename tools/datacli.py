"""The data subcommands of ``popscore``: import, inspect, replay, simulate, simulator-fit.

``add_data_commands(subparsers)`` registers them on the main parser (``tools/cli.py``); each command
is ``func(args) -> exit code`` like the others. Heavy imports happen inside the commands so that
``popscore --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


DATASET_NAMES = ("hackernews", "reddit", "youtube-excel-in", "youtube-excel-us", "youtube-v1-us", "youtube-v2-fr",
                 "youtube-v2-us")
"""The names in ``popscore.datasets.DATASETS``, listed here so that building the parser needs no pandas."""


def fail(command: str, message: object) -> int:
    """One line on stderr and exit code 2: what a user's bad path or file gets, never a traceback."""
    print(f"popscore {command}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def cmd_import(args: argparse.Namespace) -> int:
    try:
        from popscore import datasets, eventfile
    except ImportError as exc:
        return fail("import", f"{exc} (the data adapters need the train extra: pip install 'popscore[train]')")

    for option, path in (("--out", args.out), ("--report", args.report)):
        if path and not Path(path).parent.is_dir():
            return fail("import", f"{option} {path}: folder {Path(path).parent} does not exist")
    try:
        if args.source:
            loaded = datasets.load_source(args.dataset, args.source, limit=args.limit)
        else:
            loaded = datasets.load(args.dataset, args.data_dir, limit=args.limit)
    except datasets.SourceError as exc:
        return fail("import", exc)
    print(loaded.problems.render(), file=sys.stderr)
    try:
        written = eventfile.write(args.out, _progress(loaded.events(), len(loaded.posts) + loaded.n_snapshots,
                                                       f"import {args.dataset}", args.quiet))
        print(f"wrote {written} events ({len(loaded.posts)} posts, {loaded.n_snapshots} snapshots) to {args.out}")
        if args.report:
            Path(args.report).write_text(json.dumps(loaded.problems.as_dict(), indent=2) + "\n")
    except OSError as exc:
        return fail("import", f"cannot write: {exc}")
    return 0


def positive_int(text: str) -> int:
    """argparse type of counts that must be at least 1 (``--limit``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def cmd_inspect(args: argparse.Namespace) -> int:
    from popscore import eventfile

    summary = eventfile.summarise(args.file)
    print(json.dumps(summary.as_dict(), indent=2) if args.json else summary.render())
    return 1 if summary.rejected or summary.out_of_order else 0


def cmd_replay(args: argparse.Namespace) -> int:
    from popscore.settings import Settings
    from popscore.tools.replay import ReplayOptions, replay_file

    settings = Settings()
    options = ReplayOptions(
        speed=args.speed, rate=args.rate, batch=args.batch, batch_max=args.batch_max,
        create_topics=not args.no_create_topics, progress=not args.quiet, max_idle_s=args.max_idle,
    )
    from aiokafka.errors import KafkaConnectionError

    from popscore.tools.stack.process import ServiceUnreachable

    bootstrap = args.bootstrap or settings.kafka.bootstrap_servers
    # aiokafka logs each refused connection itself; the command reports an unreachable broker in one line
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        result = replay_file(Path(args.file), bootstrap, settings.kafka.topics, options)
    except KafkaConnectionError:
        raise ServiceUnreachable("Kafka broker", bootstrap, "no broker answered the bootstrap request") from None
    print(result.render())
    return 0 if result.complete else 1


def cmd_simulate(args: argparse.Namespace) -> int:
    from popscore import eventfile
    from popscore.tools.simulate import SimulatorParams, simulate

    params = SimulatorParams.load(args.params)
    mix = {platform: 1.0 for platform in args.platforms.split(",")} if args.platforms else None
    events = simulate(params, posts=args.posts, seed=args.seed, rate_per_hour=args.rate_per_hour, mix=mix)
    written = eventfile.write(args.out, _progress(events, None, "simulate", args.quiet))
    print(f"wrote {written} events for {args.posts} posts to {args.out}")
    return 0


def cmd_simulator_fit(args: argparse.Namespace) -> int:
    from popscore.tools.simulate import compare_report, fit_params

    params = fit_params(args.data_dir)
    params.save(args.params_out)
    print(f"fitted simulator parameters written to {args.params_out}")
    if args.docs:
        table = compare_report(params, Path(args.docs), posts=args.posts, data_dir=args.data_dir)
        print(table)
    return 0


def _progress(events, total, desc: str, quiet: bool):
    if quiet:
        return events
    from tqdm import tqdm

    return tqdm(events, total=total, desc=desc, unit="ev", mininterval=0.5, file=sys.stderr)


def add_data_commands(sub: argparse._SubParsersAction) -> None:
    """Register import, inspect, replay, simulate and simulator-fit on the ``popscore`` parser."""
    imp = sub.add_parser("import", help="convert a real data set into a time-ordered event file (JSON Lines)")
    imp.add_argument("--dataset", required=True, choices=DATASET_NAMES, help="which adapter reads the data")
    imp.add_argument("--out", required=True, help="event file to write (.jsonl, .jsonl.gz or .jsonl.xz)")
    where = imp.add_mutually_exclusive_group()
    where.add_argument("--data-dir", help="folder of the real data sets in the shared layout (default ../shared/data)")
    where.add_argument("--source", metavar="PATH",
                       help="read the data set from here instead: a file in the adapter's format (plain, .xz or "
                            ".gz; hackernews: items.csv or observations.csv with the other beside it), a folder "
                            "holding its files, or a folder laid out like ../shared/data")
    imp.add_argument("--limit", type=positive_int, help="only the earliest N posts")
    imp.add_argument("--report", help="also write the problem report as JSON here")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.set_defaults(func=cmd_import)

    ins = sub.add_parser("inspect", help="summarise an event file: items, observations per item, span, ranges")
    ins.add_argument("file", help="the event file to check (JSON Lines of v1 events, optionally .gz or .xz)")
    ins.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    ins.set_defaults(func=cmd_inspect)

    rep = sub.add_parser("replay", help="produce an event file to Kafka in event-time order, keyed by post_id")
    rep.add_argument("file", help="the event file to publish (JSON Lines of v1 events, optionally .gz or .xz)")
    rep.add_argument("--bootstrap", help="HOST:PORT of the broker (default: settings kafka.bootstrap_servers)")
    pace = rep.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, help="event time runs this many times faster than real time")
    pace.add_argument("--rate", type=float, help="at most this many events per second")
    rep.add_argument("--max-idle", type=float, help="with --speed: cut quiet stretches to at most this many seconds")
    rep.add_argument("--batch", action="store_true", help="send snapshots as snapshot-batch.v1 per partition")
    rep.add_argument("--batch-max", type=int, default=1000, help="snapshots per batch envelope at most")
    rep.add_argument("--no-create-topics", action="store_true", help="fail instead of creating missing topics")
    rep.add_argument("--quiet", action="store_true", help="no progress bar")
    rep.set_defaults(func=cmd_replay)

    sim = sub.add_parser("simulate", help="write a synthetic event file fitted to the real data (streaming)")
    sim.add_argument("--posts", type=int, required=True, help="number of posts to simulate")
    sim.add_argument("--out", required=True, help="event file to write (.jsonl, .jsonl.gz or .jsonl.xz)")
    sim.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same events")
    sim.add_argument("--rate-per-hour", type=float, help="new posts per hour (default: fitted)")
    sim.add_argument("--platforms", help="comma-separated platforms to simulate, in equal shares "
                                         "(default: the fitted mix of hackernews, reddit and youtube)")
    sim.add_argument("--params", help="fitted parameter JSON (default: the one shipped in tools/sample)")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(func=cmd_simulate)

    fit = sub.add_parser("simulator-fit", help="fit the simulator to the real data; optionally plot the fit")
    fit.add_argument("--data-dir", help="folder of the real data sets (default ../shared/data)")
    fit.add_argument("--params-out", default=str(Path(__file__).parent / "sample" / "simulator_params.json"),
                     help="where to write the fitted parameters (default: the packaged ones)")
    fit.add_argument("--docs", help="write the comparison PNG and quantile table into this folder (e.g. docs)")
    fit.add_argument("--posts", type=int, default=20000, help="simulated posts to compare with")
    fit.set_defaults(func=cmd_simulator_fit)

