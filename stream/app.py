"""The Faust app: topics, agents, timers and web views, wired to a ``StreamWorker``.

Values arrive as raw bytes and are validated by the worker, at the boundary, so that a record Faust
could not even decode still reaches the dead-letter topic with its original bytes. Agents consume in
micro-batches (``take_batches``: full, or ``batch_within_s`` after their first event, so an idle topic never
stalls a partial batch; the next batch fills while the agent handles one), each through a ``BatchRunner``
(retry, isolate and dead-letter, or stop: a batch is acknowledged only once processed). Timers never raise: a
failed run is logged, counted and tried again at the next tick. ``/readyz`` lists what is failing, the models
served and the model sets that are not servable.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import faust

from popscore.settings import COUNTER_NAMES, Settings
from popscore.stream.batch_runner import BatchRunner, OutageTooLong
from popscore.stream.faust_ext.app import App
from popscore.stream.faust_ext.micro_batches import take_batches
from popscore.stream.health import Probes
from popscore.stream.redis_schema import PostMeta, latest_predictions
from popscore.stream.worker import StreamWorker

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> faust.App:
    topics = settings.kafka.topics
    app = App(
        settings.worker.app_id,
        broker=f"popscore-kafka://{settings.kafka.bootstrap_servers}",
        datadir=str(settings.stack.run_dir / "worker"),
        web_host=settings.worker.bind_host,
        web_port=settings.worker.web_port,
        topic_partitions=topics.partitions,
        key_serializer="raw",
        value_serializer="raw",
        # Tansu has no transactions (DESIGN.md): at-least-once delivery with idempotent Redis state.
        processing_guarantee="at_least_once",
        broker_rebalance_timeout=settings.worker.rebalance_timeout_s,
        broker_session_timeout=settings.worker.session_timeout_s,
        broker_heartbeat_interval=settings.worker.heartbeat_interval_s,
        # Backpressure: when Redis or Triton slow down, the agent awaits, this buffer fills and Faust
        # pauses fetching; memory stays bounded by it instead of growing.
        stream_buffer_maxsize=settings.worker.stream_buffer_records,
        producer_max_batch_size=settings.worker.producer_batch_bytes,
    )
    app.fetch_max_wait_ms = settings.worker.fetch_max_wait_ms  # read by stream/kafka_transport.py
    posts_topic = app.topic(topics.posts, key_type=bytes, value_type=bytes)
    snapshots_topic = app.topic(topics.snapshots, key_type=bytes, value_type=bytes)

    async def send(topic: str, key: bytes | None, value: bytes):
        """Straight to the producer: Faust's ``topic.send`` costs ~0.3 ms a record (DESIGN.md). The worker
        awaits the returned delivery futures before it finishes a batch, so offsets are committed only
        after the outputs are in Kafka."""
        return await app.producer.send(topic, key, value, partition=None, timestamp=None, headers=None)

    async def send_many(topic: str, records: list[tuple[bytes, bytes]]) -> list:
        """A micro-batch's predictions: one record batch per partition (stream/kafka_transport.py)."""
        return await app.producer.send_many(topic, records)

    worker = StreamWorker(settings, send, send_many, lambda topic: app.producer.partitioner_for(topic))
    batch = settings.worker

    def stop_worker(reason: str) -> None:
        """Exit at once with code 3, acknowledging nothing more: the batch in hand is redelivered to whoever takes
        the partition. (A graceful Faust shutdown would wait for that batch to be acknowledged, for ever.)"""
        log.critical("stopping the worker: %s", reason)
        print(f"popscore worker stopped: {reason}", file=sys.stderr, flush=True)
        logging.shutdown()
        os._exit(3)

    async def run_agent(stream, topic: str, handle) -> None:
        runner = BatchRunner(topic, handle, worker.dead_letter_failure, worker.health, worker.metrics,
                             attempts=batch.batch_attempts, outage_budget_s=batch.outage_budget_s,
                             max_backoff_s=batch.retry_max_backoff_s)
        try:
            await start_when_possible()
            worker.health.set(runner.check, True, "running")
            async for events in take_batches(stream, batch.batch_size, within=batch.batch_within_s):
                await runner.run([event.message for event in events])
        except OutageTooLong as exc:
            stop_worker(str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            worker.metrics.agent_crashes.labels(topic).inc()
            worker.health.set(runner.check, False, f"crashed: {exc!r}")
            raise
        finally:
            if worker.health.ok(runner.check):
                worker.health.set(runner.check, False, "stopped")

    async def start_when_possible() -> None:
        """Start the worker (Redis, models), retrying while a service is not there yet."""
        delay = 0.1
        while True:
            try:
                await worker.ensure_started()
                return
            except Exception as exc:
                worker.health.set("started", False, f"cannot start: {exc!r}")
                log.warning("worker cannot start yet (%r); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, batch.retry_max_backoff_s)

    @app.agent(snapshots_topic)
    async def snapshots(stream):
        await run_agent(stream, topics.snapshots, worker.handle_snapshots)

    @app.agent(posts_topic)
    async def posts(stream):
        await run_agent(stream, topics.posts, worker.handle_posts)

    @app.task
    async def start_worker() -> None:
        await start_when_possible()

    def background(interval: float):
        """A timer that runs only once the worker has started and never raises into Faust (a timer's exception
        would stop the app): failures are logged and counted, and the next tick tries again."""
        def register(task):
            async def run() -> None:
                if not worker.ready:
                    return
                try:
                    await task()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    worker.metrics.background_errors.labels(task.__name__).inc()
                    log.warning("%s failed: %r", task.__name__, exc)
            run.__name__ = task.__name__
            return app.timer(interval=interval)(run)
        return register

    @background(settings.serving.refresh_interval_s)
    async def refresh_models() -> None:
        await worker.refresh_models()

    @background(settings.worker.gauge_interval_s)
    async def update_gauges() -> None:
        await worker.update_gauges(app.consumer)

    @background(settings.worker.gauge_interval_s)
    async def evaluate_matured() -> None:
        await worker.evaluate_matured()

    @background(settings.worker.awaiting_scan_s)
    async def score_overdue() -> None:
        await worker.score_overdue()

    probes = Probes(worker.health, settings.kafka.bootstrap_servers, settings.worker.probe_timeout_s)

    @background(settings.worker.probe_interval_s)
    async def probe() -> None:
        await probes.run(worker.redis, app.consumer)
        worker.metrics.ready.set(readiness()[0])

    def readiness() -> tuple[bool, dict]:
        failing = worker.health.failing()
        if not worker.assigned or app.rebalancing:
            failing["partitions"] = {"detail": "rebalancing: partitions not assigned yet"}
        return not failing, failing

    @app.on_rebalance_complete.connect
    async def assigned(app: faust.App, **kwargs) -> None:
        worker.on_partitions_changed()
        worker.assigned = True

    @app.on_before_shutdown.connect
    async def before_shutdown(app: faust.App, **kwargs) -> None:
        await probes.close()
        await worker.stop()

    @app.page("/healthz")
    async def healthz(web, request):
        return web.json({"alive": True})

    @app.page("/readyz")
    async def readyz(web, request):
        ready, failing = readiness()
        # A model set that is not servable does not make the worker unready: its platform gets the fallback,
        # and "model_sets" says why.
        return web.json({"ready": ready, "failing": failing, "checks": worker.health.report(),
                         **worker.models_report()}, status=200 if ready else 503)

    @app.page("/leaderboard")
    async def leaderboard(web, request):
        board = request.query.get("board", "top")
        k = min(int(request.query.get("k", "10")), settings.worker.leaderboard_size)
        rows = await worker.boards.top(board, k)
        return web.json({"board": board, "entries": [{"post_id": p, "value": v} for p, v in rows]})

    @app.page("/posts/{post_id}")
    async def post(web, request, post_id):
        fields = await worker.store.get_post(post_id)
        sequence = await worker.store.get(post_id)
        if not fields and len(sequence) == 0:
            return web.json({"error": f"unknown post {post_id!r}"}, status=404)
        return web.json({
            "post_id": post_id,
            "platform": PostMeta.from_hash(fields).platform,
            "sequence": {"columns": ["observed_at", *COUNTER_NAMES],
                         "rows": [[None if v != v else v for v in row] for row in sequence.tolist()]},
            "predictions": latest_predictions(fields),
        })

    app.popscore_worker = worker  # the web views' and tests' handle on the worker
    return app
