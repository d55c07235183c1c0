"""``popscore capacity``: what a deployment needs for a snapshot rate and a number of live posts.

The model scales the CPU per snapshot that ``popscore bench`` measures for each component (worker, Redis, broker,
Triton per row) and the bytes per post of Redis's memory budget (``RedisSettings.memory_budget_bytes``) linearly
to the target, then divides by what one unit may carry under the stated assumptions (a core planned at a share of
its time, a Redis shard's memory, a partition's and a broker's bytes per second, a GPU's rows per second), rounding
every count up. Every assumption is a field of ``Assumptions``, printed with the result; docs/deployment.md
(*Capacity model*) argues each and shows the worked example for 10 million live posts at 1 million snapshots/s.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from popscore.settings import RedisSettings

MB = 1_000_000
GIB = 1024 ** 3


@dataclass(frozen=True)
class BenchFigures:
    """What the bench measured in one phase: CPU microseconds per snapshot per component, and the sizes."""

    source: str
    phase: str
    worker_us: float  # all worker processes together
    redis_us: float
    broker_us: float
    triton_us: float
    predictions_per_snapshot: float  # Triton rows per snapshot in that phase (below 1: snapshots folded)
    snapshot_bytes: float  # key and share of a batch envelope, as produced to the broker
    prediction_bytes: float  # one prediction.v1 record (key and value) as the broker stores it: the worker's codec
    calibration_us_per_round: float | None = None  # the run's calibration round (tools/calibration.py), if timed
    redis_sequence_bytes: float | None = None  # Redis bytes per post the bench measured (a sequence key) ...
    redis_sequence_observations: int | None = None  # ... of this many observations

    @property
    def triton_us_per_row(self) -> float:
        return self.triton_us / self.predictions_per_snapshot


DEFAULT_FIGURES = BenchFigures(
    source="docs/benchmarks.md, 2026-12-02 (`popscore bench`, full run): the sustained phase with 2 workers; sizes "
           "from the 2026-12-03 runs (a prediction record as zstd stores it in batches of 256)",
    phase="sustained_scaled_out", worker_us=44.9, redis_us=18.0, broker_us=6.6, triton_us=16.0,
    predictions_per_snapshot=1.0, snapshot_bytes=125.0, prediction_bytes=94.2)
"""The latest full bench's figures (docs/benchmarks.md): the sustained phase, where every snapshot gets its own
prediction at a paced rate, the operating point of a deployment that keeps up. That run timed no calibration."""

FOLDED = 0.9
"""Predictions per snapshot below which a phase's figures come from workers that were behind (and folded)."""

PHASES = ("sustained_scaled_out", "sustained", "batch")
"""Phases to take the figures from, the preferred first: paced phases price a prediction per snapshot; the
full-speed phase (``batch``) folds a backlog's snapshots and so understates the steady cost."""


@dataclass(frozen=True)
class Assumptions:
    """What one unit of each component may carry. docs/deployment.md (*Capacity model*) says why each value."""

    rows_per_snapshot: float = 1.0  # every snapshot gets its own prediction (no folding: the workers keep up)
    worker_utilisation: float = 0.6  # of a worker replica's one core: bursts, rebalances, catching up after outages
    partitions_per_worker: int = 2  # room to double the replicas without changing the partition count
    partition_bytes_per_s: float = 5 * MB  # produced into one partition
    redis_utilisation: float = 0.5  # of a shard's main thread: AOF rewrites, replication, slot migrations
    redis_shard_memory_bytes: int = 25 * GIB  # maxmemory of one shard (fork and copy-on-write, restart time)
    redis_replicas_per_shard: int = 1  # for failover; they double memory, not the CPU the model counts
    triton_utilisation: float = 0.6  # of Triton's cores, or of a GPU's rows per second
    gpu_rows_per_s: float = 200_000  # rows of the temporal model one GPU serves: NOT measured (no GPU here)
    replication_factor: int = 3  # Kafka topics' replicas
    prediction_consumer_groups: int = 1  # consumers reading every prediction besides the workers' own writes
    broker_bytes_per_s: float = 100 * MB  # in + out (replication included) one broker is planned for
    broker_cores_per_host: int = 8  # cores of one broker host
    broker_utilisation: float = 0.6  # of a broker's cores, at the bench broker's (Tansu) CPU per snapshot
    host_calibration_us: float | None = None  # the deployment hosts' calibration round; None: as the bench's host


@dataclass(frozen=True)
class Capacity:
    snapshots_per_s: float
    live_posts: int
    rows_per_s: float
    cpu_scale: float  # the bench's CPU figures times this: the deployment hosts against the bench's
    worker_cores: float
    worker_replicas: int
    partitions: int
    redis_cores: float
    redis_shards_for_cpu: int
    redis_shards_for_memory: int
    redis_shards: int
    redis_bytes_per_post: int
    redis_append_room_bytes: int  # per post, in the bytes per post
    redis_data_bytes: int
    redis_maxmemory_per_shard: int
    redis_memory_bytes: int  # primaries
    redis_memory_with_replicas_bytes: int
    triton_cpu_us_per_row: float
    triton_cores: float
    triton_cpu_cores_planned: int
    gpus: int
    broker_in_bytes_per_s: float  # produced by clients and workers, before replication
    broker_out_bytes_per_s: float  # fetched by workers and prediction consumers, before replication
    broker_replication_bytes_per_s: float
    brokers_for_bytes: int
    broker_cores: float
    brokers_for_cpu: int
    brokers: int


def plan(snapshots_per_s: float, live_posts: int, figures: BenchFigures = DEFAULT_FIGURES,
         assume: Assumptions = Assumptions(), redis: RedisSettings | None = None) -> Capacity:
    """The deployment for ``snapshots_per_s`` and ``live_posts``: the bench's figures scaled, every count rounded
    up. ``redis`` supplies the memory budget's formula and constants (the settings' defaults if None)."""
    redis = redis or RedisSettings()
    scale = 1.0
    if assume.host_calibration_us is not None:
        if figures.calibration_us_per_round is None:
            raise ValueError("--host-calibration-us needs bench figures with a calibration (popscore bench "
                             "--results-json from a run that timed one)")
        scale = assume.host_calibration_us / figures.calibration_us_per_round
    rows = snapshots_per_s * assume.rows_per_snapshot

    worker_cores = snapshots_per_s * figures.worker_us * scale / 1e6
    replicas = _up(worker_cores / assume.worker_utilisation)

    redis_cores = snapshots_per_s * figures.redis_us * scale / 1e6
    shards_cpu = _up(redis_cores / assume.redis_utilisation)
    room = redis.append_room_bytes()
    per_post = redis.sequence_bytes() + room + redis.post_extra_bytes
    data = live_posts * per_post * redis.memory_headroom  # the budget's formula, less the base per shard
    shards_memory = _up(data / (assume.redis_shard_memory_bytes - redis.memory_base_bytes))
    shards = max(1, shards_cpu, shards_memory)
    per_shard = redis.model_copy(update={"capacity_posts": _up(live_posts / shards), "maxmemory_bytes": None})
    maxmemory = per_shard.memory_budget_bytes()

    bytes_in = snapshots_per_s * figures.snapshot_bytes + rows * figures.prediction_bytes
    bytes_out = snapshots_per_s * figures.snapshot_bytes + rows * figures.prediction_bytes * \
        assume.prediction_consumer_groups
    replication = bytes_in * (assume.replication_factor - 1)  # written to the followers, read from the leaders
    brokers_bytes = _up((bytes_in + bytes_out + 2 * replication) / assume.broker_bytes_per_s)
    broker_cores = snapshots_per_s * figures.broker_us * scale / 1e6
    # Every replica writes every byte: the bench broker's CPU (one replica) times the replication factor.
    brokers_cpu = _up(broker_cores * assume.replication_factor / assume.broker_utilisation /
                      assume.broker_cores_per_host)
    # One count for every topic (as TopicSettings.partitions): the replicas, each topic's bytes, the shards (a
    # key layout that ties Redis slots to partitions gives a shard at least one partition).
    topic_bytes = max(snapshots_per_s * figures.snapshot_bytes, rows * figures.prediction_bytes)
    partitions = max(replicas * assume.partitions_per_worker, _up(topic_bytes / assume.partition_bytes_per_s), shards)

    triton_per_row = figures.triton_us_per_row * scale
    triton_cores = rows * triton_per_row / 1e6
    return Capacity(
        snapshots_per_s=snapshots_per_s, live_posts=live_posts, rows_per_s=rows, cpu_scale=round(scale, 3),
        worker_cores=round(worker_cores, 1), worker_replicas=replicas, partitions=partitions,
        redis_cores=round(redis_cores, 1), redis_shards_for_cpu=shards_cpu, redis_shards_for_memory=shards_memory,
        redis_shards=shards, redis_bytes_per_post=round(per_post * redis.memory_headroom),
        redis_append_room_bytes=room,
        redis_data_bytes=round(data), redis_maxmemory_per_shard=maxmemory, redis_memory_bytes=shards * maxmemory,
        redis_memory_with_replicas_bytes=shards * maxmemory * (1 + assume.redis_replicas_per_shard),
        triton_cpu_us_per_row=round(triton_per_row, 2), triton_cores=round(triton_cores, 1),
        triton_cpu_cores_planned=_up(triton_cores / assume.triton_utilisation),
        gpus=_up(rows / (assume.gpu_rows_per_s * assume.triton_utilisation)),
        broker_in_bytes_per_s=round(bytes_in), broker_out_bytes_per_s=round(bytes_out),
        broker_replication_bytes_per_s=round(replication), brokers_for_bytes=brokers_bytes,
        broker_cores=round(broker_cores, 1), brokers_for_cpu=brokers_cpu,
        brokers=max(assume.replication_factor, brokers_bytes, brokers_cpu))


def _up(x: float) -> int:
    """Round up, but not a float's noise (3.0000000001 units are 3)."""
    return max(0, math.ceil(round(x, 9)))


def figures_from_results(results: dict, source: str, phase: str | None = None) -> BenchFigures:
    """The figures of ``phase`` (the first of ``PHASES`` present if None) from ``popscore bench`` JSON results;
    sizes the run did not measure keep their defaults."""
    phase = phase or next((p for p in PHASES if f"{p}_cpu_us_per_snapshot" in results), None)
    cpu = results.get(f"{phase}_cpu_us_per_snapshot") if phase else None
    if not cpu:
        raise ValueError(f"{source}: no CPU per snapshot of phase {phase!r} in the bench results (phases with one: "
                         f"{sorted(k[:-20] for k in results if k.endswith('_cpu_us_per_snapshot'))})")
    # a component's processes summed: worker, worker-2.., redis, redis-2.. (a cluster's nodes)
    per_component = {c: round(sum(us for name, us in cpu.items() if name == c or name.startswith(f"{c}-")), 2)
                     for c in ("worker", "redis", "broker", "triton")}
    missing = [c for c in per_component if not any(name == c or name.startswith(f"{c}-") for name in cpu)]
    if missing:
        raise ValueError(f"{source}: phase {phase}'s CPU per snapshot lacks {missing}")
    return BenchFigures(
        source=source, phase=phase, worker_us=per_component["worker"], redis_us=per_component["redis"],
        broker_us=per_component["broker"], triton_us=per_component["triton"],
        predictions_per_snapshot=results.get(f"{phase}_predictions_per_snapshot") or 1.0,
        snapshot_bytes=results.get("batch_bytes_per_snapshot") or DEFAULT_FIGURES.snapshot_bytes,
        prediction_bytes=(results.get("prediction_wire_bytes") or results.get("prediction_bytes")
                          or DEFAULT_FIGURES.prediction_bytes),
        calibration_us_per_round=results.get("calibration_us_per_round"),
        redis_sequence_bytes=results.get("redis_bytes_per_post"),
        redis_sequence_observations=results.get("config", {}).get("memory_obs"))


def load_figures(path: str | Path, phase: str | None = None) -> BenchFigures:
    return figures_from_results(json.loads(Path(path).read_text()), str(path), phase)


def _n(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.3g}"


def render(cap: Capacity, figures: BenchFigures, assume: Assumptions, redis: RedisSettings | None = None) -> str:
    """The plan with every figure and assumption it rests on."""
    redis = redis or RedisSettings()
    scale = f" x {cap.cpu_scale} (hosts' calibration round {assume.host_calibration_us} us against the bench's " \
            f"{figures.calibration_us_per_round} us)" if assume.host_calibration_us is not None else ""
    lines = [
        f"Capacity for {_n(cap.snapshots_per_s)} snapshots/s and {_n(cap.live_posts)} live posts",
        "",
        f"Measured: {figures.source}; phase {figures.phase}. CPU us per snapshot{scale}:",
        f"  worker {figures.worker_us}, Redis {figures.redis_us}, broker {figures.broker_us}, Triton "
        f"{figures.triton_us} ({figures.predictions_per_snapshot} rows per snapshot: {cap.triton_cpu_us_per_row} us "
        f"per row); {figures.snapshot_bytes} B per snapshot on the broker, {figures.prediction_bytes} B per "
        f"prediction"
        + (f"; calibration round {figures.calibration_us_per_round} us" if figures.calibration_us_per_round else ""),
        *([f"  WARNING: that phase folded snapshots ({figures.predictions_per_snapshot} predictions per snapshot: the "
            f"workers were behind); its worker and Redis CPU per snapshot understate a deployment that predicts "
            f"every snapshot"] if figures.predictions_per_snapshot < FOLDED else []),
        "",
        "Assumptions:",
        "  CPU per snapshot as the bench measured it: its sequences' lengths (up to ~40 observations), every "
        "component on one machine",
        f"  rows per snapshot {assume.rows_per_snapshot} (every snapshot predicted): {_n(cap.rows_per_s)} rows/s",
        f"  a worker replica is one Python process on one core, planned at {assume.worker_utilisation:.0%} busy",
        f"  {assume.partitions_per_worker} partitions per worker replica; at most "
        f"{assume.partition_bytes_per_s / MB:g} MB/s produced into a partition",
        f"  a Redis shard's main thread planned at {assume.redis_utilisation:.0%}; a shard's maxmemory at most "
        f"{assume.redis_shard_memory_bytes / GIB:g} GiB; {assume.redis_replicas_per_shard} replica(s) per shard",
        f"  Redis memory by the budget formula (RedisSettings.memory_budget_bytes): (sequence of "
        f"{redis.observations_per_post} observations {redis.sequence_bytes():,} B + room for its appends "
        f"{cap.redis_append_room_bytes:,} B + post {redis.post_extra_bytes:,} B) x {redis.memory_headroom} per post "
        f"+ {redis.memory_base_bytes / 2 ** 20:g} MiB per shard",
        f"  room Redis keeps in a sequence grown by APPEND (it doubles an outgrown string's allocation): "
        f"{redis.append_room:.0%} of the sequence's bytes (POPSCORE_REDIS__APPEND_ROOM; measured: a 25-observation "
        f"key of 1,352 B took 2,632 B after its appends)",
        *([_sequence_check(figures, redis)] if figures.redis_sequence_bytes and figures.redis_sequence_observations
          else []),
        f"  Triton planned at {assume.triton_utilisation:.0%}; a GPU serves {_n(assume.gpu_rows_per_s)} rows/s "
        f"(an assumption, not measured)",
        f"  Kafka replication factor {assume.replication_factor}; {assume.prediction_consumer_groups} consumer "
        f"group(s) read every prediction; a broker carries {assume.broker_bytes_per_s / MB:g} MB/s in + out, and "
        f"has {assume.broker_cores_per_host} cores planned at {assume.broker_utilisation:.0%} (at the bench "
        f"broker's CPU per snapshot, per replica)",
        "",
        "Needs:",
        f"  workers: {cap.worker_cores} cores busy -> {cap.worker_replicas:,} replicas (one core each)",
        f"  Kafka partitions (each topic): {cap.partitions:,}",
        f"  Redis: {cap.redis_cores} cores of main thread -> {cap.redis_shards_for_cpu:,} shards for CPU; "
        f"{cap.redis_data_bytes / GIB:,.1f} GiB of data ({cap.redis_bytes_per_post:,} B per post) -> "
        f"{cap.redis_shards_for_memory:,} shards for memory; {cap.redis_shards:,} shards, maxmemory "
        f"{cap.redis_maxmemory_per_shard:,} B ({cap.redis_maxmemory_per_shard / GIB:.1f} GiB) each, "
        f"{cap.redis_memory_bytes / GIB:,.1f} GiB in all, {cap.redis_memory_with_replicas_bytes / GIB:,.1f} GiB "
        f"with replicas",
        f"  Triton: {_n(cap.rows_per_s)} rows/s -> on CPU {cap.triton_cores} cores busy, "
        f"{cap.triton_cpu_cores_planned:,} cores planned; on GPU {cap.gpus:,} GPUs",
        f"  broker: in {cap.broker_in_bytes_per_s / MB:,.1f} MB/s, out {cap.broker_out_bytes_per_s / MB:,.1f} MB/s, "
        f"replication {cap.broker_replication_bytes_per_s / MB:,.1f} MB/s -> {cap.brokers_for_bytes:,} brokers for "
        f"bytes; {cap.broker_cores} cores at the bench broker's CPU -> {cap.brokers_for_cpu:,} brokers for CPU; "
        f"{cap.brokers:,} brokers",
    ]
    return "\n".join(textwrap.fill(line, WIDTH, subsequent_indent=" " * (len(line) - len(line.lstrip()) + 2),
                                   break_on_hyphens=False) if line else line for line in lines)


def _sequence_check(figures: BenchFigures, redis: RedisSettings) -> str:
    """The bench's measured sequence key beside the formula's for the same observations: the formula's constants
    (settings.SEQUENCE_KEY_BYTES, RECORD_BYTES) are current when the two agree."""
    n = figures.redis_sequence_observations
    formula = redis.model_copy(update={"observations_per_post": n}).sequence_bytes()
    return (f"  (the bench measured {figures.redis_sequence_bytes:,} B for a sequence of {n} observations; the "
            f"formula gives {formula:,} B, {figures.redis_sequence_bytes / formula - 1:+.0%})")


WIDTH = 110
"""Columns of the printed plan."""


def assumption_options() -> list[tuple[str, type, object]]:
    """(field, type, default) of every assumption: the command takes each as an option."""
    return [(f.name, float if f.name == "host_calibration_us" else type(f.default), f.default)
            for f in fields(Assumptions)]


def as_json(cap: Capacity, figures: BenchFigures, assume: Assumptions) -> dict:
    return {"capacity": asdict(cap), "figures": asdict(figures), "assumptions": asdict(assume)}
