"""The worker's two paths, composed of the stages in ``stream/stages/`` (docs/architecture.md draws them):

    snapshots: decode -> pipeline(merge -> features -> infer -> publish)      (``stream/pipeline.py``)
    posts:     decode -> features (titles, content vectors) -> store -> infer -> publish -> rescore the waiting
    timers:    the waiting posts' snapshots scored without them; pictures read again after a store outage
               (``media_retry.py``: the post scored again with its picture); matured predictions evaluated

A batch's outputs are awaited before it returns, so Faust commits its offsets only after the outputs are produced
(at-least-once); with ``redis.replica_acks``, replicas confirm its Redis writes before anything is published and
before it returns (``replication.py``). What happens when a batch fails is ``batch_runner.py``'s; the model sets
and routing are ``served_models.py``'s.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import Counter
from collections.abc import Iterable

import numpy as np
from aiokafka.admin import AIOKafkaAdminClient

from popscore import features as F
from popscore.media import UNAVAILABLE
from popscore.settings import Settings
from popscore.stream.batch_runner import stop_worker
from popscore.stream.failpoints import Failpoints
from popscore.stream.health import Health
from popscore.stream.leaderboard import Leaderboards
from popscore.stream.media_retry import OUTCOMES as MEDIA_RETRY_OUTCOMES, UNAVAILABLE_AGAIN, MediaRetries, \
    RetryPolicy
from popscore.stream.metrics import WorkerMetrics
from popscore.stream.online_accuracy import AccuracyKey, OnlineAccuracy, model_labels
from popscore.stream.pipeline import SnapshotPipeline, StepStages
from popscore.stream.redis_client import AsyncClient, connect, used_memory
from popscore.stream.redis_schema import BoardLimits, RedisKeys, parse_eval_field
from popscore.stream.replication import ReplicaAcks
from popscore.stream.sequence_store import SequenceUpdate, SnapshotSequenceStore
from popscore.stream.served_models import ServedModels
from popscore.stream.stages.decode import Decode
from popscore.stream.stages.features import Features, ScoringJob
from popscore.stream.stages.infer import Infer
from popscore.stream.stages.merge import MERGE_OUTCOMES, Merge
from popscore.stream.stages.publish import Publish
from popscore.stream.topics import PartitionCountMismatch, check_partition_counts

log = logging.getLogger(__name__)

STOPPED_MISCONFIGURED = 2  # the exit code of a worker that refuses to start (an outage's stop is 3)


class StreamWorker:
    """The worker's state; what needs a connection is created inside the running event loop (asyncio clients are
    loop-bound), by ``ensure_started``."""

    def __init__(self, settings: Settings, send, send_many, partitioner=None) -> None:
        self.settings = settings
        self.send_many = send_many  # async (topic, [(key, value), ...]) -> delivery futures
        self.health = Health(("started", "redis", "broker", f"agent:{settings.kafka.topics.posts}",
                              f"agent:{settings.kafka.topics.snapshots}"))
        self.failpoints = Failpoints(settings.worker.failpoints)
        self.metrics = WorkerMetrics()
        self.metrics.initialise_series(settings.kafka.topics, MERGE_OUTCOMES.values(), MEDIA_RETRY_OUTCOMES)
        self.models = ServedModels(settings, self.metrics)
        self.decode = Decode(settings, self.metrics, send, partitioner)
        self.online = OnlineAccuracy(settings.worker.online_window)
        self._evaluated_exported: dict[AccuracyKey, int] = {}
        self.redis: AsyncClient | None = None
        self.store: SnapshotSequenceStore | None = None
        self.boards: Leaderboards | None = None
        self.media_retries: MediaRetries | None = None
        self.replica_acks: ReplicaAcks | None = None
        self.ready = False
        self.assigned = False
        self._start_lock = asyncio.Lock()

    async def start_when_possible(self) -> None:
        """Start (topics checked, Redis, models), retrying while a service is not there yet; a topic with another
        partition count than the settings' stops the process instead (no retry fixes it)."""
        delay = 0.1
        while True:
            try:
                async with self._start_lock:
                    if not self.ready:  # set last: a start that failed half-way is retried from the beginning
                        await self._start()
                return
            except PartitionCountMismatch as exc:
                self.health.set("started", False, f"refusing to start: {exc}")
                stop_worker(f"refusing to start: {exc}", code=STOPPED_MISCONFIGURED)
            except Exception as exc:
                self.health.set("started", False, f"cannot start: {exc!r}")
                log.warning("worker cannot start yet (%r); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.worker.retry_max_backoff_s)

    async def _start(self) -> None:
        settings, worker = self.settings, self.settings.worker
        await self._check_topics()
        self.redis = connect(settings.redis)
        await self.redis.ping()
        keys = self.keys = RedisKeys.of(settings)
        self.replica_acks = ReplicaAcks(self.redis, keys, settings.redis, self.health, self.metrics)
        self.store = SnapshotSequenceStore(self.redis, keys, settings.score.horizon_s, worker.cached_posts,
                                           worker.post_ttl_refresh_s)
        self.boards = Leaderboards(self.redis, keys, worker.leaderboard_size,
                                   settings.score.horizon_s,
                                   BoardLimits(worker.leaderboard_ttl_s, worker.max_category_boards,
                                               worker.max_platform_boards, frozenset(worker.leaderboard_categories)))
        self.media_retries = MediaRetries(self.redis, keys, RetryPolicy.of(settings.media))
        await self.models.start()
        self.merge = Merge(self.store, self.metrics, self.failpoints, worker.post_grace_s, self.models.lookback_s)
        self.infer = Infer(self.models)
        self.features = Features(settings, self.models, self.infer, self.store, self.metrics)
        self.publish = Publish(settings, self.metrics, self.send_many, self.boards, self.failpoints)
        self.pipeline = SnapshotPipeline(
            StepStages(self.merge.step, self._temporal_jobs, self._infer_confirmed, self.publish.jobs),
            lanes=worker.lanes, window_snapshots=worker.window_snapshots,
            lane_min_snapshots=worker.lane_min_snapshots, step_snapshots=worker.max_batch_snapshots,
            folded=self.metrics.snapshots_folded.inc)
        self.metrics.serve(worker.bind_host, worker.metrics_port)
        # Every envelope allocates thousands of short-lived objects: with the default thresholds the collector
        # keeps walking Faust's long-lived heap, which the freeze takes out of its generations.
        gc.collect()
        gc.freeze()
        gc.set_threshold(worker.gc_threshold, 50, 1000)
        self.ready = True
        self.health.set("started", True, "topics checked, models loaded, Redis connected")

    async def _check_topics(self) -> None:
        """The input topics have ``kafka.topics.partitions`` partitions (stream/topics.py says why it matters)."""
        topics, timeout = self.settings.kafka.topics, self.settings.worker.probe_timeout_s
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka.bootstrap_servers,
                                    request_timeout_ms=int(timeout * 1000))
        try:
            await asyncio.wait_for(admin.start(), timeout)
            missing = await check_partition_counts(admin, [topics.posts, topics.snapshots], topics.partitions)
        finally:
            await admin.close()
        if missing:  # whoever creates the topics may still be at it: retried
            raise RuntimeError(f"topic(s) {', '.join(missing)} do not exist yet")

    def on_partitions_changed(self) -> None:
        """Posts of partitions now elsewhere may be written by another worker: their cached metadata goes."""
        if self.store is not None:
            self.store.meta_cache.clear()

    async def stop(self) -> None:
        self.ready = False
        await self.models.close()
        if self.replica_acks is not None:
            await self.replica_acks.close()
        if self.redis is not None:
            await self.redis.aclose()

    # --- the two paths --------------------------------------------------------------------------------

    async def handle_snapshots(self, messages: list) -> None:
        deliveries = []
        written = set()  # the shards of the batch's posts, whose primaries confirm its writes (replica_acks)
        with self.metrics.in_flight.track_inprogress():
            windows = self.pipeline.batch()
            for message in messages:
                snapshots = await self.decode.snapshots(message, deliveries)
                if snapshots and self.replica_acks.replicas:
                    written.update(map(self.keys.shard, {s.post_id for s in snapshots}))
                if snapshots and windows.add(message.partition or 0, snapshots):
                    await windows.score()
            await windows.score(last=True)
            await asyncio.gather(*deliveries)
            # What the steps wrote after publishing (boards, marks) and the posts registered as waiting.
            await self.replica_acks.confirm(written)
        self.metrics.batch_size.labels("snapshots").observe(len(messages))
        self._observe_end_to_end("temporal", messages)

    async def _temporal_jobs(self, updates: list[SequenceUpdate]) -> list[ScoringJob]:
        return await self.features.temporal_jobs(await self.merge.with_post(updates))

    async def handle_posts(self, messages: list) -> None:
        deliveries = []
        waiting = []
        posts = await self.decode.posts(messages, deliveries)
        if posts:
            jobs, static_features, content, problems = await self.features.static_jobs(posts)
            await self.store.put_posts(posts, static_features, content, embedded_titles=self.infer.embeds_titles)
            # A picture the store failed to give is read again later (in Redis before the batch is acknowledged).
            unavailable = [post for post, problem in zip(posts, problems) if problem == UNAVAILABLE]
            if unavailable:
                self.metrics.media_retries_scheduled.inc(await self.media_retries.schedule(unavailable, time.time()))
            deliveries += await self._score(jobs)
            self.metrics.posts_in.inc(len(posts))
            # Snapshots that came before their post were stored and wait for it, or were scored without it after
            # the grace period: score them now, with the post.
            waiting = await self.store.current(list(dict.fromkeys(p.post_id for p in posts)))
            if waiting:
                deliveries += await self._score(await self.features.temporal_jobs(waiting))
        await asyncio.gather(*deliveries)
        await self.store.done_waiting([update.post_id for update in waiting])
        await self.replica_acks.confirm({self.keys.shard(post.post_id) for post in posts})
        self._observe_end_to_end("static", messages)

    async def _score(self, jobs: list[ScoringJob]) -> list:
        """Infer and publish jobs outside the pipeline; the futures of their outputs still being delivered."""
        return await self.publish.jobs(jobs, await self._infer_confirmed(jobs)) if jobs else []

    async def _infer_confirmed(self, jobs: list[ScoringJob]) -> list:
        """The jobs' inference, while the primaries of their posts' shards get their writes so far confirmed by
        replicas (``replica_acks``): nothing is published before both, and the wait overlaps the inference."""
        if not self.replica_acks.replicas:
            return await self.infer.jobs(jobs)
        confirming = asyncio.ensure_future(self.replica_acks.confirm(
            {self.keys.shard(post_id) for job in jobs for post_id in job.post_ids}))
        try:
            inferred = await self.infer.jobs(jobs)
        except BaseException:
            confirming.cancel()
            raise
        await confirming
        return inferred

    def _observe_end_to_end(self, model: str, messages: list) -> None:
        now = time.time()
        histogram = self.metrics.end_to_end_seconds.labels(model)
        for message in messages:
            if message.timestamp:
                histogram.observe(max(0.0, now - message.timestamp))

    # --- timers ---------------------------------------------------------------------------------------

    async def score_overdue(self, limit: int = 1_000) -> int:
        """Score the posts whose snapshots waited longer than the grace period for a post that never came (taken
        with a lease: a worker that dies before it is done leaves them to be taken again)."""
        now = time.time()
        lease_until = now + self.settings.worker.awaiting_lease_s
        overdue = await self.store.claim_overdue(now, lease_until, limit)
        if overdue:
            updates = await self.store.current(overdue)
            self.metrics.predictions_without_post.inc(sum(u.post.created_at is None for u in updates))
            await asyncio.gather(*await self._score(await self.features.temporal_jobs(updates)))
            await self.store.release_overdue(overdue, lease_until)
        return len(overdue)

    def held_shards(self, consumer) -> list[int]:
        """The shards of the posts partitions this worker holds now (a shard is a partition: ``redis_schema``)."""
        posts = self.settings.kafka.topics.posts
        return sorted({tp.partition for tp in consumer.assignment() if tp.topic == posts})

    async def retry_media(self, shards: Iterable[int], limit: int = 100) -> int:
        """Read again the pictures due for a retry in ``shards`` (``stream/media_retry.py``), taken with a lease.
        A post whose picture is read now is scored again with it: its static prediction, content vector and the
        temporal prediction of its stored sequence, published marked ``explanation.media_retry``; the others
        are scheduled again or dropped. The number of posts taken."""
        media = self.settings.media
        due = await self.media_retries.claim(shards, time.time(), media.retry_lease_s, limit)
        if not due:
            return 0
        self.failpoints.hit("media_retry.after_claim")
        posts = [item.post for item in due]
        read, problems, pictures = await self.features.retry_pictures(posts)
        policy = self.media_retries.policy
        outcomes = [policy.outcome(problem, item.retries + 1) for item, problem in zip(due, problems)]
        if read:
            recovered = [posts[row] for row in read]
            mark = {due[row].post_id: due[row].retries + 1 for row in read}  # the retry that read the picture
            pictures[1]["media_retry"] = [mark[post.post_id] for post in recovered]
            jobs, static_features, content, _ = await self.features.static_jobs(recovered, pictures, "media_retry")
            await self.store.put_posts(recovered, static_features, content, embedded_titles=self.infer.embeds_titles)
            deliveries = await self._score(jobs)
            # The content vector feeds the temporal head: the stored sequence is scored again with the new one.
            updates = await self.store.current(list(mark))
            temporal = [job for job in await self.features.temporal_jobs(updates) if job.model_set is not None]
            for job in temporal:
                job.explanations = {**(job.explanations or {}), "media_retry": [mark[p] for p in job.post_ids]}
            deliveries += await self._score(temporal)
            await asyncio.gather(*deliveries)
        now = time.time()
        await self.media_retries.reschedule([(item, policy.next_due(item.retries + 1, now))
                                             for item, outcome in zip(due, outcomes) if outcome == UNAVAILABLE_AGAIN])
        await self.media_retries.done([item.post_id for item, outcome in zip(due, outcomes)
                                       if outcome != UNAVAILABLE_AGAIN])
        for outcome, n in Counter(outcomes).items():
            self.metrics.media_retries.labels(outcome).inc(n)
        for item, outcome in zip(due, outcomes):
            if outcome != UNAVAILABLE_AGAIN:
                log.info("media retry %d of post %s: %s", item.retries + 1, item.post_id, outcome)
        return len(due)

    async def evaluate_matured(self, limit: int = 2_000) -> int:
        """Compare the kept predictions of posts past their horizon with what they really reached, per model
        (whose name says its platform) or the fallback. Matured by the stream's clock (the latest observation
        scored), so replays mature posts too."""
        matured = await self.store.matured(self.features.stream_clock, limit)
        if not matured:
            return 0
        for post_id, sequence, meta, kept in matured:
            if len(sequence) == 0 or not kept:
                continue
            route = self.models.router.route(meta.platform)
            spec = self.models.temporal_spec(route)
            created = meta.created_at if meta.created_at is not None else sequence[0, 0]
            weights = F.weight_matrix([route.platform], self.settings.score.weights_for, spec.counters)
            realised = float(F.target_log_score(spec, [sequence], np.array([created]), weights)[0])
            if realised != realised:  # no observation before the horizon
                continue
            for name, predicted in kept.items():
                key = AccuracyKey(*parse_eval_field(name))
                if model_labels(key.model) is not None:  # not a field kept before model sets were per platform
                    self.online.add(key, predicted, realised)
        for key, summary in self.online.summary().items():
            labels = (*model_labels(key.model), key.version, key.age_h)
            self.metrics.online_mae.labels(*labels).set(summary["mae"])
            self.metrics.online_srcc.labels(*labels).set(summary["srcc"])
        for key, n in self.online.evaluated.items():
            counter = self.metrics.online_evaluated.labels(*model_labels(key.model), key.version, key.age_h)
            counter.inc(n - self._evaluated_exported.get(key, 0))
            self._evaluated_exported[key] = n
        return len(matured)

    async def update_gauges(self, consumer) -> None:
        """Gauges read from the outside world: models served, Triton circuits, lag, tracked posts."""
        self.models.export_gauges()
        for tp in consumer.assignment():
            position = await consumer.position(tp)
            if position is not None:
                lag = max(0, consumer.highwater(tp) - position)
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
        self.metrics.tracked_posts.set(await self.store.estimate_tracked_posts())
        self.metrics.media_retries_pending.set(await self.media_retries.pending())
        used, limit = await used_memory(self.redis)
        self.metrics.redis_used_memory.set(used)
        self.metrics.redis_maxmemory.set(limit)
