"""The ``popscore`` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from popscore.settings import Settings

STACK_COMMANDS = frozenset({"up", "bench", "demo"})
"""The commands that start a stack: SIGTERM, SIGHUP and SIGINT stop that stack before they exit."""


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings()
    if getattr(args, "run_dir", None):
        settings.stack.run_dir = Path(args.run_dir)
    if getattr(args, "model_repo", None):
        settings.stack.model_repo = Path(args.model_repo)
    if getattr(args, "redis_cluster", False):
        settings.redis.mode = "cluster"
    return settings


def _print(message: str) -> None:
    print(f"[popscore] {message}", flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    from popscore.tools.stack.process import Terminated
    from popscore.tools.stack.stack import EmbeddedStack

    stack = EmbeddedStack(_settings(args), fixed_ports=_fixed_ports(args), log=_print)
    state = stack.start(with_worker=not args.no_worker)
    _print(f"stack running; logs and state under {state.run_dir}")
    for name, url in state.endpoints_obj().as_dict().items():
        _print(f"  {name:16} {url}")
    if args.detach:
        _print("detached; stop it with `popscore down`")
        return 0
    _print("press Ctrl-C to stop")
    try:
        while True:
            time.sleep(0.5)
            dead = [n for n, c in stack.status()["components"].items() if not c["alive"]]
            if dead:
                _print(f"component(s) exited: {', '.join(dead)}; see the logs in {state.run_dir}/logs")
                return 1
    except Terminated:  # Ctrl-C or SIGTERM is how a foreground stack is meant to end
        return 0
    finally:
        _print("stopping the stack ...")
        stack.stop()
        _print("stopped")


def _fixed_ports(args: argparse.Namespace) -> dict[str, int]:
    return {name: port for name, port in (("broker_port", args.broker_port), ("redis_port", args.redis_port))
            if port}


def cmd_down(args: argparse.Namespace) -> int:
    from popscore.tools.stack.stack import EmbeddedStack

    stack = EmbeddedStack(_settings(args))
    stopped = stack.stop()
    if not stopped:
        _print(f"no stack running from {stack.run_dir}; nothing to stop")
        return 0
    _print(f"stack stopped ({', '.join(stopped)})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from popscore.tools.stack.stack import EmbeddedStack

    status = EmbeddedStack(_settings(args)).status()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        if not status["components"]:
            _print(f"no stack running from {status['run_dir']}")
        for name, url in status.get("endpoints", {}).items():
            print(f"{name:16} {url}")
        for name, c in status["components"].items():
            ports = f" web :{c['web_port']}, metrics :{c['metrics_port']}" if "web_port" in c else ""
            print(f"{name:8} pid {c['pid']:<8} {'healthy' if c['healthy'] else 'ALIVE, NOT HEALTHY' if c['alive'] else 'DOWN'}"
                  f"{ports}")
    return 0 if status["running"] else 1


def cmd_worker(args: argparse.Namespace) -> int:
    from faust import Worker

    from popscore.stream.app import create_app

    settings = _settings(args)
    # Faust creates its data folder inside the run directory without parents: a fresh run directory would
    # end the worker in a traceback from deep inside Faust.
    settings.stack.run_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    Worker(app, loglevel=args.loglevel).execute_from_commandline()
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from popscore.contract import json_schemas

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        path = out / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        _print(f"wrote {path}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from popscore.settings import settings_reference

    for env, value, description in settings_reference(_settings(args)):
        line = f"{env}={value}" if value else f"# {env}= (unset)"
        print(line + (f"  # {description}" if description and args.describe else ""))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from popscore.tools.bench import BenchConfig, render_table, run_bench, run_image_bench

    if (args.images or args.cluster) and args.readme or args.images and args.cluster:
        print("--readme writes the whole bench table: run it without --images or --cluster (one at a time)",
              file=sys.stderr)
        return 2
    config = BenchConfig()
    if args.quick:
        config = BenchConfig(live_posts=10_000, batch_seconds=10, record_seconds=5, latency_seconds=5,
                             naive_snapshots=500, memory_posts=50_000, image_posts=200)
    log = (lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True)) if args.json else _print
    if args.cluster:
        from popscore.tools.bench import render_cluster_table, run_cluster_bench

        results = run_cluster_bench(_settings(args), config, log=log)
        command = "popscore bench --cluster" + (" --quick" if args.quick else "")
        print(json.dumps(results, indent=2) if args.json else render_cluster_table(results, command))
        return 0
    results = (run_image_bench if args.images else run_bench)(_settings(args), config, log=log)
    command = "popscore bench" + (" --quick" if args.quick else "") + (" --images" if args.images else "")
    table = render_table(results, command)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(table)
    if args.readme:
        from popscore.tools.bench import write_into_readme

        note = (f"Measured {time.strftime('%Y-%m-%d')} on this 2-core machine, everything (broker, Redis, Triton, "
                f"worker, load generator) on it at once.")
        write_into_readme(args.readme, table, note)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from popscore.tools.demo import run_demo

    return run_demo(_settings(args), data=Path(args.data) if args.data else None, seconds=args.seconds, log=_print)


RUN_DIR_HELP = "where the embedded stack keeps logs and state (default .popscore/run)"
MODEL_REPO_HELP = "Triton model repository (default model_repo/)"


def _stack_options() -> argparse.ArgumentParser:
    """--run-dir and --model-repo after the subcommand too (``popscore up --run-dir X``). SUPPRESS: a
    subcommand that is not given them keeps the value given before it."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--run-dir", default=argparse.SUPPRESS, help=RUN_DIR_HELP)
    options.add_argument("--model-repo", default=argparse.SUPPRESS, help=MODEL_REPO_HELP)
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="popscore", description=__doc__)
    parser.add_argument("--run-dir", help=RUN_DIR_HELP)
    parser.add_argument("--model-repo", help=MODEL_REPO_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    stack_options = [_stack_options()]

    up = sub.add_parser("up", parents=stack_options,
                        help="start the embedded stack: broker, Redis, Triton and the worker")
    up.add_argument("--detach", action="store_true", help="return once everything is healthy")
    up.add_argument("--no-worker", action="store_true", help="start the infrastructure only")
    up.add_argument("--broker-port", type=int, help="fixed broker port (default: a free one)")
    up.add_argument("--redis-port", type=int, help="fixed Redis port (default: a free one; with --redis-cluster, "
                    "the first node's)")
    up.add_argument("--redis-cluster", action="store_true", help="a local Redis Cluster instead of one Redis "
                    "(POPSCORE_STACK__REDIS_CLUSTER_MASTERS masters, each with POPSCORE_STACK__REDIS_CLUSTER_REPLICAS "
                    "replicas; the same as POPSCORE_REDIS__MODE=cluster)")
    up.set_defaults(func=cmd_up)

    sub.add_parser("down", parents=stack_options, help="stop a (detached) embedded stack").set_defaults(func=cmd_down)

    status = sub.add_parser("status", parents=stack_options, help="endpoints and health of the embedded stack")
    status.add_argument("--json", action="store_true", help="print the status as one JSON object")
    status.set_defaults(func=cmd_status)

    worker = sub.add_parser("worker", parents=stack_options,
                            help="run the Faust stream worker (configured from POPSCORE_* env)")
    worker.add_argument("--loglevel", default="info", help="Faust's log level: debug, info, warning or error")
    worker.set_defaults(func=cmd_worker)

    schema = sub.add_parser("schema", help="write the JSON Schemas of the v1 event contract")
    schema.add_argument("--out", default="schemas", help="folder to write the schemas into (created)")
    schema.set_defaults(func=cmd_schema)

    config = sub.add_parser("config", parents=stack_options,
                            help="print every setting as the environment variable that sets it")
    config.add_argument("--describe", action="store_true", help="add each setting's description")
    config.set_defaults(func=cmd_config)

    bench = sub.add_parser("bench", parents=stack_options,
                           help="measure throughput, latency and Redis memory on the embedded stack")
    bench.add_argument("--json", action="store_true", help="print the results as one JSON object")
    bench.add_argument("--quick", action="store_true", help="a small run (minutes) instead of the full one")
    bench.add_argument("--images", action="store_true", help="only the phase of posts with pictures (and its "
                       "naive one-request-per-picture baseline), on a stack of its own")
    bench.add_argument("--cluster", action="store_true", help="only the sustained phase, on one Redis and then on a "
                       "local three-master Redis Cluster, each on a stack of its own (scale_out_workers workers)")
    bench.add_argument("--readme", help="write the results table between the bench markers of this file (docs/benchmarks.md holds them)")
    bench.set_defaults(func=cmd_bench)

    demo = sub.add_parser("demo", parents=stack_options,
                          help="the main job: start the embedded stack, replay the built-in sample (or --data), show "
                               "live predictions and the leaderboard, stop")
    demo.add_argument("--data", help="an event file (JSON Lines of v1 events) instead of the built-in sample")
    demo.add_argument("--seconds", type=float, default=10.0, help="replay the sample's time span in this long")
    demo.set_defaults(func=cmd_demo)
    from popscore.tools.datacli import add_data_commands

    add_data_commands(sub)
    from popscore.tools.traincli import add_train_commands

    add_train_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. A user's mistake (a missing file, an invalid setting, a service that does not
    answer) ends in one line on stderr and exit code 2, never a traceback; a stopping signal ends a command
    that started a stack only after that stack is stopped."""
    args = build_parser().parse_args(argv)
    from popscore.tools.stack.process import Terminated, stop_on_termination

    try:
        with stop_on_termination() if args.command in STACK_COMMANDS else nullcontext():
            return args.func(args)
    except Terminated as exc:
        _print(f"{exc}; the stack it started is stopped")
        return 128 + exc.signum
    except Exception as exc:  # noqa: BLE001 - only the kinds user_error() knows; the others re-raise
        message = user_error(exc)
        if message is None:
            raise
        first, _, details = message.partition("\n")  # details: a component's log tail, after the one line
        print(f"popscore {args.command}: error: {first}" + (f"\n{details}" if details else ""), file=sys.stderr)
        return 2


def user_error(exc: Exception) -> str | None:
    """The one-line message for an error a user caused or can fix, None for a bug (which keeps its traceback)."""
    from pydantic import ValidationError
    from redis.exceptions import ConnectionError as RedisConnectionError

    from popscore.eventfile import EventFileError
    from popscore.tools.stack.process import StackError

    if isinstance(exc, StackError):
        return str(exc)
    if isinstance(exc, ValidationError) and exc.title == Settings.__name__:  # from the POPSCORE_* environment
        return "invalid setting: " + "; ".join(
            f"POPSCORE_{'__'.join(str(part) for part in error['loc']).upper()}={error.get('input')!r}: {error['msg']}"
            for error in exc.errors())
    if isinstance(exc, RedisConnectionError):  # redis-py names the address in the message
        return f"Redis unreachable: {exc}"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    if isinstance(exc, EventFileError):
        return str(exc)
    return None


if __name__ == "__main__":
    sys.exit(main())
