"""The Faust worker: posts and snapshots in, Redis sequences updated, rejected records to the dead letters.

Values arrive as raw bytes and are validated here, at the boundary, so that a record Faust could not
even decode still reaches the dead-letter topic with its original bytes. Snapshots are handled in
micro-batches (``take_events``): one pipelined Redis round trip per batch, not per record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

import faust
import redis.asyncio as redis
from popscore.contract import DeadLetter, Post, RejectedRecord, RejectReason, Snapshot, SnapshotBatch, \
    decode_record, encode_record
from popscore.settings import Settings
from popscore.stream.metrics import WorkerMetrics
from popscore.stream.sequence_store import APPENDED, CORRECTED, DUPLICATE, OUT_OF_ORDER, SnapshotSequenceStore, \
    count_decreases

log = logging.getLogger(__name__)

MERGE_OUTCOMES = {APPENDED: "appended", DUPLICATE: "duplicate", CORRECTED: "corrected", OUT_OF_ORDER: "out_of_order"}


class Worker:
    """The worker's state, created inside the running event loop (redis.asyncio clients are loop-bound)."""

    def __init__(self, settings: Settings, app: faust.App) -> None:
        self.settings = settings
        self.app = app
        self.metrics = WorkerMetrics()
        self.redis: redis.Redis | None = None
        self.store: SnapshotSequenceStore | None = None
        self.ready = False
        self.assigned = False
        self._start_lock = asyncio.Lock()

    async def ensure_started(self) -> None:
        async with self._start_lock:
            if self.store is None:
                await self._start()

    async def _start(self) -> None:
        self.redis = redis.Redis.from_url(self.settings.redis.url)
        await self.redis.ping()
        self.store = SnapshotSequenceStore(self.redis, self.settings.redis.key_prefix, self.settings.score.horizon_s)
        self.metrics.serve(self.settings.stack.host, self.settings.worker.metrics_port)
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        if self.redis is not None:
            await self.redis.aclose()

    def decode(self, event: faust.EventT, accept: tuple[str, ...]):
        message = event.message
        self.metrics.records_in.labels(message.topic).inc()
        record = decode_record(
            message.value or b"", accept=accept, max_bytes=self.settings.limits.max_record_bytes,
            max_future_skew=timedelta(seconds=self.settings.limits.max_future_skew_s),
        )
        key = message.key
        if isinstance(record, (Post, Snapshot)) and key is not None and key != record.post_id.encode():
            raise RejectedRecord(RejectReason.KEY_MISMATCH,
                                 f"record key {key[:200]!r} differs from post_id {record.post_id!r}")
        return record

    async def dead_letter(self, event: faust.EventT, error: RejectedRecord) -> None:
        message = event.message
        letter = DeadLetter.of(topic=message.topic, partition=message.partition, offset=message.offset,
                               key=message.key, value=message.value or b"", error=error)
        await self.app.topic(self.settings.kafka.topics.deadletter).send(key=message.key, value=encode_record(letter))
        self.metrics.dead_letters.labels(message.topic, error.reason.value).inc()

    async def handle_snapshots(self, events: list[faust.EventT]) -> None:
        snapshots: list[Snapshot] = []
        for event in events:
            try:
                record = self.decode(event, accept=("snapshot.v1", "snapshot-batch.v1"))
            except RejectedRecord as error:
                await self.dead_letter(event, error)
                continue
            snapshots.extend(record.snapshots if isinstance(record, SnapshotBatch) else [record])
        self.metrics.batch_size.observe(len(events))
        if not snapshots:
            return
        started = time.perf_counter()
        updates = await self.store.merge(snapshots)
        self.metrics.redis_seconds.observe(time.perf_counter() - started)
        self.metrics.snapshots_in.inc(len(snapshots))
        for update in updates:
            for status in update.statuses:
                self.metrics.sequence_merges.labels(MERGE_OUTCOMES[status]).inc()
            if update.changed:
                self.metrics.counter_decreases.inc(count_decreases(update.sequence))

    async def handle_posts(self, events: list[faust.EventT]) -> None:
        posts: list[Post] = []
        for event in events:
            try:
                posts.append(self.decode(event, accept=("post.v1",)))
            except RejectedRecord as error:
                await self.dead_letter(event, error)
        if posts:
            await self.store.put_posts(posts)
            self.metrics.posts_in.inc(len(posts))


def create_app(settings: Settings) -> faust.App:
    topics = settings.kafka.topics
    app = faust.App(
        settings.worker.app_id,
        broker=f"kafka://{settings.kafka.bootstrap_servers}",
        datadir=str(settings.stack.run_dir / "worker"),
        web_host=settings.stack.host,
        web_port=settings.worker.web_port,
        topic_partitions=topics.partitions,
        key_serializer="raw",
        value_serializer="raw",
        # Tansu has no transactions (DESIGN.md): at-least-once delivery with idempotent Redis state.
        processing_guarantee="at_least_once",
        broker_rebalance_timeout=settings.worker.rebalance_timeout_s,
        broker_session_timeout=settings.worker.session_timeout_s,
        broker_heartbeat_interval=settings.worker.heartbeat_interval_s,
    )
    worker = Worker(settings, app)
    posts_topic = app.topic(topics.posts, key_type=bytes, value_type=bytes, internal=False)
    snapshots_topic = app.topic(topics.snapshots, key_type=bytes, value_type=bytes, internal=False)
    batch = settings.worker

    @app.on_rebalance_complete.connect
    async def _assigned(app: faust.App, **kwargs) -> None:
        worker.assigned = True

    @app.on_before_shutdown.connect
    async def _before_shutdown(app: faust.App, **kwargs) -> None:
        worker.ready = False

    @app.task
    async def start_worker() -> None:
        await worker.ensure_started()

    @app.agent(snapshots_topic)
    async def snapshots(stream):
        await worker.ensure_started()
        async for events in stream.take_events(batch.batch_size, within=batch.batch_within_s):
            await worker.handle_snapshots(events)

    @app.agent(posts_topic)
    async def posts(stream):
        await worker.ensure_started()
        async for events in stream.take_events(batch.batch_size, within=batch.batch_within_s):
            await worker.handle_posts(events)

    @app.page("/healthz")
    async def healthz(web, request):
        return web.json({"alive": True})

    @app.page("/readyz")
    async def readyz(web, request):
        ready = worker.ready and worker.assigned and not app.rebalancing
        return web.json({"ready": ready}, status=200 if ready else 503)

    app.popscore_worker = worker  # for tests and the web views of later slices
    return app
