"""Replay an event file to Kafka in event-time order, keyed by ``post_id``, paced and counted exactly.

Posts go to the posts topic, snapshots to the snapshots topic, both keyed by ``post_id`` so every post's
events land on one partition in order (aiokafka keeps one batch in flight per partition, so order per
key holds). Pacing is either event time × ``speed`` (``speed=60``: an hour of data in a minute) or at most
``rate`` events per second; with neither, as fast as the broker takes it.

``batch=True`` sends snapshots as ``snapshot-batch.v1`` envelopes, one per partition and flush, with the
partition computed by the same murmur2 partitioner a keyed record would get (``redis_schema.shard_of``:
the Java client's and aiokafka's default), so a batch holds exactly the posts whose
keyed events live on that partition. Envelopes carry no key and an explicit partition. Buffers are
flushed before any pacing sleep longer than 50 ms and at least every 100 ms, so batching holds an event
back at most about 100 ms past its due time, even under ``--rate``.

The result counts every event read and every record acknowledged by the broker; ``complete`` is true
only when each event read was acknowledged exactly once (the producer does not retry on its own;
an unacknowledged send raises).
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterable, Iterator

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from popscore.contract import MAX_BATCH_SNAPSHOTS, Post, Snapshot
from popscore.settings import TopicSettings
from popscore.stream.redis_schema import shard_of
from popscore.stream.topics import check_partition_counts

BATCH_PREFIX = b'{"schema":"snapshot-batch.v1","snapshots":['
BATCH_SUFFIX = b"]}"
MAX_BATCH_BYTES = 512 * 1024  # well under the broker's and the worker's 1 MiB record cap
PENDING_ACKS = 5_000
MIN_SLEEP_S = 0.002
FLUSH_BEFORE_SLEEP_S = 0.05
MAX_HOLD_S = 0.1  # await acknowledgements in chunks: bounded memory, steady throughput


@dataclass(frozen=True)
class ReplayOptions:
    speed: float | None = None
    rate: float | None = None
    batch: bool = False
    batch_max: int = 1_000
    create_topics: bool = True
    progress: bool = True
    max_idle_s: float | None = None

    def __post_init__(self) -> None:
        if self.speed is not None and self.rate is not None:
            raise ValueError("choose --speed or --rate, not both")
        if (self.speed is not None and self.speed <= 0) or (self.rate is not None and self.rate <= 0):
            raise ValueError("speed and rate must be positive")
        if not 1 <= self.batch_max <= MAX_BATCH_SNAPSHOTS:
            raise ValueError(f"batch_max must be within 1..{MAX_BATCH_SNAPSHOTS}")


@dataclass
class ReplayResult:
    events_read: int = 0
    posts_acked: int = 0
    snapshots_acked: int = 0
    post_records: int = 0
    snapshot_records: int = 0
    elapsed_s: float = 0.0
    topics: dict[str, str] = field(default_factory=dict)
    batch: bool = False

    @property
    def complete(self) -> bool:
        return self.events_read == self.posts_acked + self.snapshots_acked

    def render(self) -> str:
        rate = self.events_read / self.elapsed_s if self.elapsed_s else 0.0
        how = f"in {self.snapshot_records} snapshot-batch.v1 records" if self.batch else "as single records"
        status = "every event acknowledged exactly once" if self.complete else "INCOMPLETE: events missing"
        return (f"read {self.events_read} events; produced {self.posts_acked} posts to "
                f"'{self.topics.get('posts')}' and {self.snapshots_acked} snapshots to "
                f"'{self.topics.get('snapshots')}' {how}; {self.elapsed_s:.1f} s ({rate:,.0f} events/s); {status}")


class Pacer:
    """When each event is due, in seconds after the replay started.

    With ``max_idle_s``, a quiet stretch of event time longer than that (after scaling) is cut to it:
    a YouTube file whose oldest video was published nine years before it trended would otherwise make
    a speed-paced replay wait for days before the second event.
    """

    def __init__(self, speed: float | None, rate: float | None, max_idle_s: float | None = None) -> None:
        self.speed, self.rate, self.max_idle_s = speed, rate, max_idle_s
        self.first: datetime | None = None
        self.skipped = 0.0
        self.last_due = 0.0

    def due(self, index: int, when: datetime) -> float:
        if self.first is None:
            self.first = when
        if self.speed is not None:
            due = (when - self.first).total_seconds() / self.speed - self.skipped
            if self.max_idle_s is not None and due - self.last_due > self.max_idle_s:
                self.skipped += due - self.last_due - self.max_idle_s
                due = self.last_due + self.max_idle_s
            self.last_due = max(self.last_due, due)
            return max(0.0, due)
        if self.rate is not None:
            return index / self.rate
        return 0.0


def partition_for(post_id: str, partitions: list[int]) -> int:
    """The partition Kafka's default (murmur2) partitioner gives a record keyed by ``post_id``: the worker's
    ``shard_of`` over ``partitions`` (so an envelope holds exactly one Redis shard's posts)."""
    return partitions[shard_of(post_id, len(partitions))]


def batch_envelope(snapshot_lines: list[bytes]) -> bytes:
    """A snapshot-batch.v1 record built from already-encoded snapshot lines (no re-encoding)."""
    return BATCH_PREFIX + b",".join(snapshot_lines) + BATCH_SUFFIX


async def ensure_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    """Create the topics of ``names`` that do not exist; raise ``PartitionCountMismatch`` if one exists with
    another partition count (the worker would refuse it: stream/topics.py)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        missing = await check_partition_counts(admin, names, partitions)
        if missing:
            await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)
                                       for name in missing])
    finally:
        await admin.close()


class _Sender:
    """Sends records, tracks acknowledgements in bounded chunks, and keeps per-partition batch buffers."""

    def __init__(self, producer: AIOKafkaProducer, topics: TopicSettings, result: ReplayResult,
                 options: ReplayOptions, partitions: list[int]) -> None:
        self.producer, self.topics, self.result, self.options = producer, topics, result, options
        self.partitions = partitions
        self.pending: list[tuple[asyncio.Future, str, int]] = []
        self.buffers: dict[int, list[bytes]] = {}
        self.buffer_bytes: dict[int, int] = {}

    async def post(self, raw: bytes, post_id: str) -> None:
        future = await self.producer.send(self.topics.posts, value=raw, key=post_id.encode("utf-8"))
        await self._track(future, "post", 1)

    async def snapshot(self, raw: bytes, post_id: str) -> None:
        if not self.options.batch:
            future = await self.producer.send(self.topics.snapshots, value=raw, key=post_id.encode("utf-8"))
            await self._track(future, "snapshot", 1)
            return
        partition = partition_for(post_id, self.partitions)
        buffer = self.buffers.setdefault(partition, [])
        size = self.buffer_bytes.get(partition, len(BATCH_PREFIX) + len(BATCH_SUFFIX))
        if buffer and size + len(raw) + 1 > MAX_BATCH_BYTES:
            await self._flush_partition(partition)
            buffer, size = self.buffers.setdefault(partition, []), len(BATCH_PREFIX) + len(BATCH_SUFFIX)
        buffer.append(raw)
        self.buffer_bytes[partition] = size + len(raw) + 1
        if len(buffer) >= self.options.batch_max:
            await self._flush_partition(partition)

    async def flush_batches(self) -> None:
        for partition in list(self.buffers):
            await self._flush_partition(partition)

    async def _flush_partition(self, partition: int) -> None:
        lines = self.buffers.pop(partition, [])
        self.buffer_bytes.pop(partition, None)
        if lines:
            future = await self.producer.send(self.topics.snapshots, value=batch_envelope(lines), partition=partition)
            await self._track(future, "snapshot", len(lines))

    async def _track(self, future: asyncio.Future, kind: str, events: int) -> None:
        self.pending.append((future, kind, events))
        if len(self.pending) >= PENDING_ACKS:
            await self.settle()

    async def settle(self) -> None:
        """Wait for every outstanding acknowledgement; a failed send raises here."""
        pending, self.pending = self.pending, []
        await asyncio.gather(*(f for f, _, _ in pending))
        for _, kind, events in pending:
            if kind == "post":
                self.result.posts_acked += events
                self.result.post_records += 1
            else:
                self.result.snapshots_acked += events
                self.result.snapshot_records += 1


async def replay(
    events: Iterable[tuple[bytes, Post | Snapshot]],
    bootstrap: str,
    topics: TopicSettings,
    options: ReplayOptions = ReplayOptions(),
) -> ReplayResult:
    """Produce (raw bytes, event) pairs in the order given; see the module docstring."""
    result = ReplayResult(topics={"posts": topics.posts, "snapshots": topics.snapshots}, batch=options.batch)
    if options.create_topics:
        await ensure_topics(bootstrap, [topics.posts, topics.snapshots], topics.partitions)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, max_batch_size=256 * 1024,
                                acks="all", max_request_size=1_048_576)
    await producer.start()
    started = time.monotonic()
    try:
        partitions = sorted(await producer.partitions_for(topics.snapshots))
        sender = _Sender(producer, topics, result, options, partitions)
        pacer = Pacer(options.speed, options.rate, options.max_idle_s)
        last_flush = started
        for index, (raw, event) in enumerate(events):
            now = time.monotonic()
            wait = pacer.due(index, event.created_at if isinstance(event, Post) else event.observed_at) - (now - started)
            if options.batch and (wait > FLUSH_BEFORE_SLEEP_S or now - last_flush > MAX_HOLD_S):
                await sender.flush_batches()  # nothing waits in a buffer past its due time (give or take MAX_HOLD_S)
                last_flush = now
            if wait > MIN_SLEEP_S:  # finer sleeps cost more than they pace; the debt is paid at the next one
                await asyncio.sleep(wait)
            result.events_read += 1
            if isinstance(event, Post):
                await sender.post(raw, event.post_id)
            else:
                await sender.snapshot(raw, event.post_id)
        await sender.flush_batches()
        await producer.flush()
        await sender.settle()
    finally:
        await producer.stop()
        result.elapsed_s = time.monotonic() - started
    return result


def count_lines(path: Path) -> int:
    from popscore.eventfile import open_text

    with open_text(path, "r") as lines:
        return sum(1 for line in lines if line.strip())


def _with_progress(events: Iterator, total: int) -> Iterator:
    from tqdm import tqdm

    return iter(tqdm(events, total=total, desc="replay", unit="ev", mininterval=0.5, file=sys.stderr))


def replay_file(path: Path, bootstrap: str, topics: TopicSettings, options: ReplayOptions = ReplayOptions()) -> ReplayResult:
    """Replay an event file (validated line by line as it is read; the first bad line stops the replay)."""
    from popscore.eventfile import read_lines

    events: Iterator = read_lines(path)
    if options.progress:
        events = _with_progress(events, count_lines(path))
    return asyncio.run(replay(events, bootstrap, topics, options))
