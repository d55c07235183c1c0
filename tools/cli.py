"""The ``popscore`` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
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
    if args.detach:
        _print_endpoints(state)
        _print("detached; stop it with `popscore down`")
        return 0
    # Everything after the start is inside the try: a signal that comes while the endpoints are printed (say just
    # after "press Ctrl-C", as soon as a reader sees it) must stop the stack too, not leave it running.
    try:
        _print_endpoints(state)
        _print("press Ctrl-C to stop")
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


def _print_endpoints(state) -> None:
    _print(f"stack running; logs and state under {state.run_dir}")
    for name, url in state.endpoints_obj().as_dict().items():
        _print(f"  {name:16} {url}")


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


def cmd_flat_bench(args: argparse.Namespace) -> int:
    """``popscore bench --flat``: CPU per snapshot against stored observations per post and live posts."""
    from popscore.tools.bench import FlatConfig, render_flat_table, run_flat_bench

    config = FlatConfig(live_posts=(10_000, 100_000), streamed_posts=5_000, rounds=3, repeats=1) if args.quick \
        else FlatConfig()
    overrides = {"live_posts": args.flat_live_posts, "observations": args.flat_observations,
                 "streamed_posts": args.flat_streamed_posts, "repeats": args.flat_repeats}
    config = replace(config, **{name: value for name, value in overrides.items() if value is not None})
    if config.streamed_posts > min(config.live_posts):
        print("--flat-streamed-posts must not exceed the fewest --flat-live-posts", file=sys.stderr)
        return 2
    log = (lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True)) if args.json else _print
    results = run_flat_bench(_settings(args), config, log=log)
    command = "popscore bench --flat" + (" --quick" if args.quick else "")
    print(json.dumps(results, indent=2) if args.json else render_flat_table(results, command))
    return 0


def _counts(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v.replace("_", "")) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"counts must be at least 1: {text!r}")
    return values


def cmd_bench(args: argparse.Namespace) -> int:
    from popscore.tools.bench import BenchConfig, render_table, run_bench, run_image_bench

    if args.flat:
        if args.images or args.cluster or args.readme:
            print("--flat runs on its own: without --images, --cluster or --readme", file=sys.stderr)
            return 2
        return cmd_flat_bench(args)
    if args.replica_acks and not args.cluster:
        print("--replica-acks is a variant of --cluster: give both", file=sys.stderr)
        return 2
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

        results = run_cluster_bench(_settings(args), config, log=log, replica_acks=args.replica_acks)
        command = "popscore bench --cluster" + (" --replica-acks" if args.replica_acks else "") + \
            (" --quick" if args.quick else "")
        print(json.dumps(results, indent=2) if args.json else render_cluster_table(results, command))
        return 0
    results = (run_image_bench if args.images else run_bench)(_settings(args), config, log=log)
    command = "popscore bench" + (" --quick" if args.quick else "") + (" --images" if args.images else "")
    table = render_table(results, command)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(table)
    if args.results_json:  # what `popscore capacity --bench-results` reads
        Path(args.results_json).write_text(json.dumps(results, indent=2) + "\n")
    if args.readme:
        from popscore.tools.bench import write_into_readme

        note = (f"Measured {time.strftime('%Y-%m-%d')} on this 2-core machine, everything (broker, Redis, Triton, "
                f"worker, load generator) on it at once.")
        write_into_readme(args.readme, table, note)
    return 0


def cmd_capacity(args: argparse.Namespace) -> int:
    from popscore.tools.capacity import (DEFAULT_FIGURES, Assumptions, as_json, assumption_options, load_figures,
                                         plan, render)

    assume = Assumptions(**{name: getattr(args, name) for name, _, _ in assumption_options()})
    redis = _settings(args).redis
    try:
        figures = load_figures(args.bench_results, args.phase) if args.bench_results else DEFAULT_FIGURES
        capacity = plan(args.snapshots_per_s, args.live_posts, figures, assume, redis)
    except ValueError as exc:
        print(f"popscore capacity: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(as_json(capacity, figures, assume), indent=2) if args.json else
          render(capacity, figures, assume, redis))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from popscore.tools.calibration import machine_info, time_calibration

    result = {"machine": machine_info(), "calibration": time_calibration()}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        m, c = result["machine"], result["calibration"]
        print(f"{m['cpu_model']} ({m['cpu_family_model_stepping']}), {m['usable_cpus']} CPUs, load average "
              f"{m['load_average']}\ncalibration v{c['version']}: {c['us_per_round']} us of CPU per round "
              f"(min {c['min_us']}, max {c['max_us']})")
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
    bench.add_argument("--replica-acks", action="store_true", help="with --cluster: on a cluster with a replica per "
                       "master, with redis.replica_acks 0 and then 1 (what the replicas' confirmations cost)")
    bench.add_argument("--readme", help="write the results table between the bench markers of this file (docs/benchmarks.md holds them)")
    bench.add_argument("--results-json", metavar="FILE", help="also write the results as one JSON object to FILE "
                       "(what `popscore capacity --bench-results` reads)")
    bench.add_argument("--flat", action="store_true", help="only the phase of CPU per snapshot against observations "
                       "stored per post and live posts (preloaded into Redis), on a stack of its own")
    bench.add_argument("--flat-live-posts", type=_counts, metavar="N,N", help="--flat: live posts of its cases "
                       "(default 100000,1000000; --quick 10000,100000)")
    bench.add_argument("--flat-observations", type=_counts, metavar="N,N", help="--flat: observations stored per "
                       "post (default 25,300)")
    bench.add_argument("--flat-streamed-posts", type=int, metavar="N", help="--flat: posts whose snapshots stream "
                       "through the worker in each case (default 20000; --quick 5000)")
    bench.add_argument("--flat-repeats", type=int, metavar="N", help="--flat: times the cases are measured, every "
                       "other time in reverse order (default 2; --quick 1)")
    bench.set_defaults(func=cmd_bench)

    capacity = sub.add_parser("capacity", help="what serving N snapshots/s for M live posts takes (workers, "
                              "partitions, Redis shards and memory, Triton, broker), from the bench's CPU per snapshot")
    capacity.add_argument("--snapshots-per-s", type=float, required=True, help="snapshots per second to serve")
    capacity.add_argument("--live-posts", type=int, required=True, help="posts whose sequence has not expired")
    capacity.add_argument("--bench-results", metavar="FILE", help="`popscore bench --results-json` output (default: "
                          "the latest full bench's figures, docs/benchmarks.md)")
    capacity.add_argument("--phase", help="the bench phase whose CPU per snapshot to use (default: the sustained "
                          "phase with the most workers)")
    capacity.add_argument("--json", action="store_true", help="print the plan, figures and assumptions as JSON")
    from popscore.tools.capacity import assumption_options

    for name, kind, default in assumption_options():
        capacity.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default,
                              help=f"assumption (default {default}; docs/deployment.md, 'Capacity model')")
    capacity.set_defaults(func=cmd_capacity)

    calibrate = sub.add_parser("calibrate", help="time the bench's calibration workload on this machine (for "
                               "`popscore capacity --host-calibration-us`)")
    calibrate.add_argument("--json", action="store_true", help="print the machine and the timing as JSON")
    calibrate.set_defaults(func=cmd_calibrate)

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
