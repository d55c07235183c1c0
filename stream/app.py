"""The Faust app: topics, agents, timers and web views, wired to a ``StreamWorker`` (``stream/worker.py``).

Agents consume raw bytes in micro-batches (``take_batches``: full, or ``batch_within_s`` after their first event;
the next batch fills while the agent handles one), each through a ``BatchRunner`` (retry, isolate and
dead-letter, or stop: a batch is acknowledged only once processed).
"""

from __future__ import annotations

import faust

from popscore.settings import Settings
from popscore.stream.batch_runner import run_agent
from popscore.stream.faust_ext.app import App
from popscore.stream.health import Probes
from popscore.stream.timers import timer
from popscore.stream.web import readiness, register_views
from popscore.stream.worker import StreamWorker


def create_app(settings: Settings) -> faust.App:
    topics, worker_settings = settings.kafka.topics, settings.worker
    app = App(
        worker_settings.app_id,
        broker=f"popscore-kafka://{settings.kafka.bootstrap_servers}",
        datadir=str(settings.stack.run_dir / "worker"),
        # Faust listens on web_bind (default 0.0.0.0); web_host only names the worker in its URL.
        web_bind=worker_settings.bind_host,
        web_host=worker_settings.bind_host,
        web_port=worker_settings.web_port,
        topic_partitions=topics.partitions,
        key_serializer="raw",
        value_serializer="raw",
        # Tansu has no transactions (docs/architecture.md): at-least-once delivery with idempotent Redis state.
        processing_guarantee="at_least_once",
        broker_rebalance_timeout=worker_settings.rebalance_timeout_s,
        broker_session_timeout=worker_settings.session_timeout_s,
        broker_heartbeat_interval=worker_settings.heartbeat_interval_s,
        # Backpressure: when Redis or Triton slow down, the agent awaits, this buffer fills and Faust pauses
        # fetching; memory stays bounded by it instead of growing.
        stream_buffer_maxsize=worker_settings.stream_buffer_records,
        producer_max_batch_size=worker_settings.producer_batch_bytes,
        producer_compression_type=None if settings.kafka.producer_compression == "none"
        else settings.kafka.producer_compression,
    )
    app.fetch_max_wait_ms = worker_settings.fetch_max_wait_ms  # read by stream/faust_ext/transport.py
    posts_topic = app.topic(topics.posts, key_type=bytes, value_type=bytes)
    snapshots_topic = app.topic(topics.snapshots, key_type=bytes, value_type=bytes)

    # Straight to the producer, past Faust's per-record ``topic.send``; the worker awaits the delivery futures
    # before a batch returns, so offsets are committed only after the outputs are in Kafka.
    async def send(topic: str, key: bytes | None, value: bytes):
        return await app.producer.send(topic, key, value, partition=None, timestamp=None, headers=None)

    async def send_many(topic: str, records: list[tuple[bytes, bytes]]) -> list:
        return await app.producer.send_many(topic, records)  # a record batch per partition: faust_ext/transport.py

    worker = StreamWorker(settings, send, send_many, lambda topic: app.producer.partitioner_for(topic))

    def stopping() -> bool:
        """mode's ``Service.should_stop``: true from the start of ``app.stop()`` (SIGTERM), before Faust waits
        for the agents' batches."""
        return app.should_stop

    @app.agent(snapshots_topic)
    async def snapshots(stream):
        await run_agent(stream, topics.snapshots, worker.handle_snapshots, worker, stopping)

    @app.agent(posts_topic)
    async def posts(stream):
        await run_agent(stream, topics.posts, worker.handle_posts, worker, stopping)

    @app.task
    async def start_worker() -> None:
        await worker.start_when_possible()

    @timer(app, worker, settings.serving.refresh_interval_s)
    async def refresh_models() -> None:
        await worker.models.refresh()

    @timer(app, worker, worker_settings.gauge_interval_s)
    async def update_gauges() -> None:
        await worker.update_gauges(app.consumer)

    @timer(app, worker, worker_settings.gauge_interval_s)
    async def evaluate_matured() -> None:
        await worker.evaluate_matured()

    @timer(app, worker, worker_settings.awaiting_scan_s)
    async def score_overdue() -> None:
        await worker.score_overdue()

    @timer(app, worker, settings.media.retry_scan_s)
    async def retry_media() -> None:
        await worker.retry_media(worker.held_shards(app.consumer))

    probes = Probes(worker.health, settings.kafka.bootstrap_servers, worker_settings.probe_timeout_s)

    @timer(app, worker, worker_settings.probe_interval_s)
    async def probe() -> None:
        await probes.run(worker.redis, app.consumer)
        worker.metrics.ready.set(readiness(app, worker)[0])

    @app.on_rebalance_complete.connect
    async def assigned(app: faust.App, **kwargs) -> None:
        worker.on_partitions_changed()
        worker.assigned = True

    @app.on_before_shutdown.connect
    async def before_shutdown(app: faust.App, **kwargs) -> None:
        await probes.close()
        await worker.stop()

    register_views(app, worker)
    return app
