"""What the worker does with a micro-batch, apart from Faust: validate, store, predict, publish.

Every post is routed by its platform to the model set trained for it (``serving/routing.py``; one set per
platform, ``serving/model_sets.py``), or to the fallback (``fallback.py``), never to another platform's set.
Posts: validate -> title token states (served text encoder) and static features -> static prediction (with
its word attention over the title), and the post's content vector (the per-post half of MTAF-temporal),
stored with the post; one inference per model set in the batch.
Snapshots: validate -> merge into the Redis sequences (which returns each post's content vector) -> one
temporal-head inference per model set and step, one row per changed post (several snapshots of a post in one
batch give one prediction) -> predictions topic + leaderboards. A content vector of another content model or
version, or of a post that never came, is recomputed from the stored inputs and written back.
Every model output is clamped into the range its training data supports and flagged where it needed that or
its inputs lie outside that range (``serving/output_bounds.py``); a non-finite output is replaced by the
fallback.
Every rejected record goes to the dead-letter topic (a snapshot of an envelope on its own, with its index).
The batch's outputs are awaited before the batch returns, so Faust commits its offsets only after the outputs
are produced (at-least-once). A prediction's leaderboard entry and its ``predicted_to`` mark are written only
once it is in Kafka; a redelivered snapshot that changes nothing is scored again only if the mark says the
post's latest observation has no prediction (one lost in a crash). Snapshots waiting for their post are
registered in Redis (``ps:awaiting``) before they are acknowledged, so a restart does not forget them.
What happens when a batch fails is ``batch_runner.py``'s.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import redis.asyncio as redis

from popscore import features as F
from popscore.contract import DeadLetter, Post, PredictionFlag, RejectedRecord, RejectReason, decode_record, \
    decode_snapshots, encode_record
from popscore.serving.model_repository import list_models
from popscore.serving.model_sets import ModelSet, discover, repository_problem
from popscore.serving.output_bounds import bound_outputs
from popscore.serving.predictor import ModelPredictor
from popscore.serving.routing import PlatformRouter, Route
from popscore.settings import Settings
from popscore.stream.failpoints import Failpoints
from popscore.stream.fallback import FALLBACK_PLATFORM_LABEL, LOG1P_AGE_H, PERSISTENCE_MODEL, PERSISTENCE_VERSION, \
    SCORE_NOW, persistence_log_score
from popscore.stream.health import Health
from popscore.stream.leaderboard import Leaderboards
from popscore.stream.metrics import WorkerMetrics
from popscore.stream.online_accuracy import AccuracyKey, OnlineAccuracy, eval_ages_reached, model_labels
from popscore.stream.predictions import NO_FLAGS, encode, latest_view, prediction_records
from popscore.stream.redis_schema import APPENDED, CORRECTED, DUPLICATE, OUT_OF_ORDER, RecordedPrediction, \
    content_tag, decode_content, encode_content, eval_field, parse_eval_field
from popscore.stream.sequence_store import SequenceUpdate, SnapshotSequenceStore, count_decreases, group_by_post, \
    steps_by_post

log = logging.getLogger(__name__)

MERGE_OUTCOMES = {APPENDED: "appended", DUPLICATE: "duplicate", CORRECTED: "corrected", OUT_OF_ORDER: "out_of_order"}
RISING_INDEX = F.DYNAMIC_FEATURE_NAMES.index("dlog_score_last_h")
TEXT_ENCODER = "popscore_text_encoder"
NON_FINITE = "non_finite"  # fallback reason: the model set's output was NaN or infinite
FALLBACK, OUT_OF_RANGE, WITHOUT_POST = (PredictionFlag.FALLBACK.value, PredictionFlag.OUT_OF_RANGE.value,
                                        PredictionFlag.WITHOUT_POST.value)


def check_key(key: bytes | None, post_id: str) -> None:
    """A post and its snapshots are keyed by post_id: that keeps them in one partition, in order, on one worker."""
    if key is None:
        raise RejectedRecord(RejectReason.KEY_MISMATCH, f"record has no key; it must be keyed by post_id {post_id!r}")
    if key != post_id.encode():
        raise RejectedRecord(RejectReason.KEY_MISMATCH, f"record key {key[:200]!r} differs from post_id {post_id!r}")


@dataclass
class ScoringJob:
    """One model's inputs for a batch of posts of one model set (or of the fallback, which runs no model), and
    what naming and recording its predictions needs."""

    kind: str  # "static" or "temporal" (popscore.features.MODEL_KINDS)
    model_set: ModelSet | None  # None: the persistence fallback (temporal only)
    post_ids: list[str]
    as_of: np.ndarray
    inputs: dict[str, np.ndarray]
    spec: F.FeatureSpec
    created: np.ndarray
    routes: list[Route]  # per row: the post's platform after aliasing, and for the fallback why
    categories: list[str | None] | None = None
    explanations: dict | None = None  # per row: outputs computed earlier, or what names an output
    without_post: np.ndarray | None = None  # per row: scored without the post event (None: none was)


def group_rows(routes: list[Route]) -> list[tuple[ModelSet | None, list[int] | None]]:
    """(model set or None for the fallback, rows routed to it; None: every row) in first-seen order. Traffic of
    one platform is one group and is not copied."""
    first = routes[0].model_set
    if all(route.model_set is first for route in routes):
        return [(first, None)]
    groups: dict[int, tuple[ModelSet | None, list[int]]] = {}
    for row, route in enumerate(routes):
        groups.setdefault(id(route.model_set), (route.model_set, []))[1].append(row)
    return list(groups.values())


def take(items, rows: list[int] | None):
    """``items`` (a list or an array) at ``rows``; all of them for None."""
    if rows is None:
        return items
    if isinstance(items, np.ndarray):
        return items[rows]
    return [items[row] for row in rows]


class StreamWorker:
    """The worker's state, created inside the running event loop (asyncio clients are loop-bound)."""

    def __init__(self, settings: Settings, send, send_many, partitioner=None) -> None:
        self.settings = settings
        self.send = send  # async (topic, key, value) -> delivery future
        self.send_many = send_many  # async (topic, [(key, value), ...]) -> delivery futures
        # async (topic) -> (key -> the partition a keyed send puts it in): checks envelopes' snapshots
        self.partitioner = partitioner
        self.health = Health(("started", "redis", "broker", f"agent:{settings.kafka.topics.posts}",
                              f"agent:{settings.kafka.topics.snapshots}"))
        self.failpoints = Failpoints(settings.worker.failpoints)
        self.metrics = WorkerMetrics()
        self.redis: redis.Redis | None = None
        self.store: SnapshotSequenceStore | None = None
        self.boards: Leaderboards | None = None
        self.model_sets: dict[str, ModelSet] = {}  # platform -> the servable set trained for it
        self.unservable: dict[str, str] = {}  # platform -> why its set in the repository cannot be served
        self._unservable_versions: dict[str, tuple] = {}  # the repository versions that problem was found in
        self.router: PlatformRouter[ModelSet] = self._router()
        # The fallback's horizon is the one the sequences are kept for.
        self.fallback_spec = F.FeatureSpec(horizon_s=float(settings.score.horizon_s))
        self.text_encoder: ModelPredictor | None = None
        self._tokenizer = None  # (encoder version, TitleTokenizer) of the served text encoder
        self.online = OnlineAccuracy(settings.worker.online_window)
        self._evaluated_exported: dict[AccuracyKey, int] = {}
        self.stream_clock = 0.0  # the latest observed_at seen: event time, so replays mature posts too
        self.ready = False
        self.assigned = False
        self._start_lock = asyncio.Lock()

    async def ensure_started(self) -> None:
        async with self._start_lock:
            if not self.ready:  # set last: a start that failed half-way is retried from the beginning
                await self._start()

    async def _start(self) -> None:
        settings = self.settings
        self.redis = redis.Redis.from_url(settings.redis.url, socket_timeout=settings.redis.socket_timeout_s,
                                          socket_connect_timeout=settings.redis.socket_timeout_s)
        await self.redis.ping()
        self.store = SnapshotSequenceStore(self.redis, settings.redis.key_prefix, settings.score.horizon_s,
                                           settings.worker.cached_posts, settings.worker.post_ttl_refresh_s)
        self.boards = Leaderboards(self.redis, settings.redis.key_prefix, settings.worker.leaderboard_size,
                                   settings.score.horizon_s)
        await self.sync_model_sets(load_in_triton=False)  # Triton loads the repository's models at its start
        served = any(m.name == TEXT_ENCODER and m.versions for m in list_models(settings.stack.model_repo))
        if served and settings.serving.text_encoder:
            self.text_encoder = ModelPredictor(TEXT_ENCODER, settings.serving, settings.triton.grpc_url,
                                               settings.stack.model_repo, settings.serving.python_backend_mirror,
                                               timeout_s=settings.serving.text_timeout_s)
            await self.text_encoder.start()
        else:
            log.warning("text encoder off or not in %s: titles are not embedded, the text modality is masked",
                        settings.stack.model_repo)
        self.metrics.serve(settings.worker.bind_host, settings.worker.metrics_port)
        # Every envelope allocates thousands of short-lived objects; with the default thresholds the
        # collector kept walking Faust's long-lived heap (decode measured 11 us/snapshot, 3 us after this).
        gc.collect()
        gc.freeze()
        gc.set_threshold(settings.worker.gc_threshold, 50, 1000)
        self.ready = True
        self.health.set("started", True, "models loaded, Redis connected")

    def on_partitions_changed(self) -> None:
        """Posts of partitions now elsewhere may be written by another worker: their cached metadata goes."""
        if self.store is not None:
            self.store.meta_cache.clear()

    async def stop(self) -> None:
        self.ready = False
        for model_set in self.model_sets.values():
            await model_set.close()
        if self.text_encoder is not None:
            await self.text_encoder.close()
        if self.redis is not None:
            await self.redis.aclose()

    # --- model sets -----------------------------------------------------------------------------------

    def _router(self) -> PlatformRouter[ModelSet]:
        serving = self.settings.serving
        return PlatformRouter(self.model_sets, self.unservable, serving.platform_aliases, serving.unknown_platform,
                              known=self.settings.score.platform_weights)

    def _predictor(self, name: str, check_version) -> ModelPredictor:
        settings = self.settings
        return ModelPredictor(name, settings.serving, settings.triton.grpc_url, settings.stack.model_repo,
                              settings.serving.python_backend_mirror, check_version=check_version)

    async def sync_model_sets(self, load_in_triton: bool = True) -> None:
        """Serve every servable model set of the repository not served yet: at start, and at every refresh, so
        a platform's first set (or a fixed version of a set that was not servable) is picked up without a
        restart. A set that cannot be served is logged (once per repository state) with the reason and its
        platform gets the fallback; ``/readyz`` and ``popscore_model_set_servable`` show it."""
        found = discover(self.settings.stack.model_repo)
        changed = False
        for platform, models in found.items():
            if platform in self.model_sets:
                continue
            versions = tuple(sorted((kind, model.versions[-1]) for kind, model in models.items()))
            if self._unservable_versions.get(platform) == versions:
                continue  # nothing new since it was found not servable
            problem, lasting = repository_problem(platform, models), True
            model_set = None
            if problem is None:
                model_set = ModelSet.create(platform, self._predictor)
                try:
                    await model_set.start()
                    problem = model_set.problem()
                    if problem is None and load_in_triton:
                        await model_set.load_in_triton()
                except Exception as exc:  # Triton away, say: tried again at the next refresh
                    problem, lasting = f"could not start it: {exc!r}", False
            if problem is not None:
                if model_set is not None:
                    await model_set.close()
                if self.unservable.get(platform) != problem:
                    log.error("model set %r is not servable, its posts get the fallback: %s", platform, problem)
                self.unservable[platform] = problem
                if lasting:  # a problem of the files themselves: looked at again once they change
                    self._unservable_versions[platform] = versions
            else:
                log.info("serving model set %r: %s", platform,
                         ", ".join(f"{p.name} v{p.version}" for p in model_set.predictors.values()))
                self.model_sets[platform] = model_set
                self.unservable.pop(platform, None)
                self._unservable_versions.pop(platform, None)
            changed = True
        for platform in [p for p in self.unservable if p not in found]:  # removed from the repository
            del self.unservable[platform]
            self._unservable_versions.pop(platform, None)
            self.metrics.model_set_servable.remove(platform)
            changed = True
        if changed:
            self.router = self._router()
        for platform in self.model_sets:
            self.metrics.model_set_servable.labels(platform).set(1)
        for platform in self.unservable:
            self.metrics.model_set_servable.labels(platform).set(0)

    def models_report(self) -> dict:
        """What ``/readyz`` shows of the models: every served model, and every model set with whether it is
        served and, if not, why."""
        models = {}
        for platform, model_set in self.model_sets.items():
            for kind, p in model_set.predictors.items():
                models[p.name] = {"kind": kind, "platform": platform, "version": p.version,
                                  "breaker": p.breaker.state.value, **p.stats}
        sets = {platform: {"servable": True, "problem": None} for platform in self.model_sets}
        sets.update({platform: {"servable": False, "problem": problem} for platform, problem in self.unservable.items()})
        serving = self.settings.serving
        return {"models": models, "model_sets": sets,
                "routing": {"platform_aliases": serving.platform_aliases,
                            "unknown_platform": serving.unknown_platform}}

    # --- input boundary -------------------------------------------------------------------------------

    def decode_post(self, message) -> Post:
        self.metrics.records_in.labels(message.topic).inc()
        post = decode_record(message.value or b"", accept=("post.v1",), max_bytes=self.settings.limits.max_record_bytes,
                             max_future_skew=timedelta(seconds=self.settings.limits.max_future_skew_s))
        check_key(message.key, post.post_id)
        return post

    async def decode_snapshots(self, message) -> tuple[list, list]:
        """(valid snapshots, [(index, element bytes, RejectedRecord)]) of a snapshot record or envelope. A single
        snapshot must be keyed by its post_id; an envelope's snapshots must belong to the envelope's partition (the
        one a keyed send of their post_id picks), or their post's snapshots would be split between workers."""
        self.metrics.records_in.labels(message.topic).inc()
        decoded = decode_snapshots(message.value or b"", max_bytes=self.settings.limits.max_record_bytes,
                                   max_future_skew=timedelta(seconds=self.settings.limits.max_future_skew_s))
        snapshots, rejected = decoded.snapshots, [(r.index, r.value, r.error) for r in decoded.rejected]
        if not decoded.envelope:
            check_key(message.key, snapshots[0].post_id)
        elif self.partitioner is not None:
            partition_of, kept = await self.partitioner(message.topic), []
            for index, snapshot in zip(decoded.indices, snapshots):
                partition = partition_of(snapshot.post_id.encode())
                if partition == message.partition:
                    kept.append(snapshot)
                else:
                    rejected.append((index, encode_record(snapshot), RejectedRecord(
                        RejectReason.KEY_MISMATCH, f"post_id {snapshot.post_id!r} belongs to partition {partition}, "
                        f"the envelope is in partition {message.partition}")))
            snapshots = kept
        return snapshots, rejected

    async def dead_letter(self, message, error: RejectedRecord, index: int | None = None, value: bytes | None = None):
        """The delivery future of a dead letter for ``message`` (or, with ``index``, one snapshot of it)."""
        letter = DeadLetter.of(topic=message.topic, partition=message.partition, offset=message.offset,
                               key=message.key, value=(message.value or b"") if value is None else value, error=error,
                               index=index, max_original_bytes=self.settings.limits.deadletter_original_bytes)
        self.metrics.dead_letters.labels(message.topic, error.reason.value).inc()
        self.metrics.records_out.labels(self.settings.kafka.topics.deadletter).inc()
        return await self.send(self.settings.kafka.topics.deadletter, message.key, encode_record(letter))

    async def dead_letter_failure(self, message, exc: BaseException) -> None:
        """A record that fails processing on its own (batch_runner.py), with the exception."""
        error = RejectedRecord(RejectReason.PROCESSING_FAILED, f"{type(exc).__name__}: {exc}")
        await asyncio.gather(await self.dead_letter(message, error))

    # --- posts ----------------------------------------------------------------------------------------

    async def handle_posts(self, messages: list) -> None:
        posts: list[Post] = []
        deliveries = []
        waiting = []
        for message in messages:
            try:
                posts.append(self.decode_post(message))
            except RejectedRecord as error:
                deliveries.append(await self.dead_letter(message, error))
        if posts:
            routes = [self.router.route(p.platform) for p in posts]
            created = np.array([p.created_at.timestamp() for p in posts])
            scored = [row for row, route in enumerate(routes) if route.model_set is not None]
            titles = await self.embed_titles([posts[row].text.title for row in scored]) if scored else None
            title_row = {row: i for i, row in enumerate(scored)}  # a scored post's row in ``titles``
            static_features: list[np.ndarray | None] = [None] * len(posts)
            content: list[bytes | None] = [None] * len(posts)
            jobs = []
            for model_set, rows in group_rows(routes):
                members = range(len(posts)) if rows is None else rows
                group_routes, group_posts, group_created = take(routes, rows), take(posts, rows), take(created, rows)
                platforms = [r.platform for r in group_routes]
                if model_set is None:
                    self._count_fallback("static", group_routes)
                    # Kept with the post, so a model set of its platform that comes later can compute its vector.
                    fallback = F.build_static_features(self.fallback_spec, group_created, platforms, group_posts)
                    for row, features in zip(members, fallback):
                        static_features[row] = features
                    continue
                in_titles = [title_row[row] for row in members]
                text = {} if titles is None else {k: v[in_titles] for k, v in titles[0].items()}
                words = None if titles is None else [titles[1][i] for i in in_titles]
                spec, content_spec = model_set.spec("static"), model_set.spec("content")
                inputs = F.build_static_inputs(spec, group_created, platforms, group_posts, **text)
                content_inputs = inputs if content_spec == spec else \
                    F.build_static_inputs(content_spec, group_created, platforms, group_posts, **text)
                encoded = encode_content(self._content_tag(model_set),
                                         *await self.content_vectors(model_set, content_inputs))
                for i, row in enumerate(members):
                    static_features[row], content[row] = content_inputs["static_features"][i], encoded[i]
                jobs.append(ScoringJob("static", model_set, [p.post_id for p in group_posts], group_created, inputs,
                                       spec, group_created, group_routes,
                                       explanations={"words": words} if words else None))
            self.metrics.content_vectors.labels("post").inc(len(scored))
            await self.store.put_posts(posts, static_features, content, embedded_titles=self.text_encoder is not None)
            deliveries += await self._predict_all(jobs)
            self.metrics.posts_in.inc(len(posts))
            # Snapshots that came before their post were stored and wait for it, or were scored without it after
            # the grace period: score them now, with the post.
            waiting = await self.store.current(list(dict.fromkeys(p.post_id for p in posts)))
            if waiting:
                deliveries += await self._predict_all(await self._temporal_jobs(waiting))
        await asyncio.gather(*deliveries)
        await self.store.done_waiting([update.post_id for update in waiting])
        self._observe_end_to_end("static", messages)

    def _count_fallback(self, kind: str, routes: list[Route], reason: str | None = None) -> None:
        """Predictions no model set made, by the post's platform (its metric label) and why."""
        for (label, why), n in Counter((r.label, reason or r.fallback_reason) for r in routes).items():
            self.metrics.fallback_predictions.labels(kind, label, why).inc(n)

    @staticmethod
    def _content_tag(model_set: ModelSet) -> bytes:
        content = model_set.predictors["content"]
        return content_tag(content.name, content.version)

    async def content_vectors(self, model_set: ModelSet, inputs: dict[str, np.ndarray]
                              ) -> tuple[np.ndarray, np.ndarray]:
        """The per-post half of the set's MTAF-temporal: (content vectors, modality weights)."""
        predictor = model_set.predictors["content"]
        results = await predictor.infer({t.name: inputs[t.name] for t in predictor.model.config.input})
        return (np.concatenate([r.outputs["content_vector"] for r in results]),
                np.concatenate([r.outputs["modality_weights"] for r in results]))

    async def embed_titles(self, titles: list[str]) -> tuple[dict[str, np.ndarray], list[list[str]]] | None:
        """The titles' token states and mask from the served text encoder (the ONNX file the trainer encodes
        with), and their wordpieces, which name the word-attention weights. None if the encoder is off."""
        if self.text_encoder is None:
            return None
        from popscore.text_encoding import TOKEN_STATES_NAME, TitleTokenizer

        version = self.text_encoder.version
        if self._tokenizer is None or self._tokenizer[0] != version:
            meta = self.text_encoder.metadata
            path = self.text_encoder.model.path / str(version) / "tokenizer.json"
            self._tokenizer = (version, TitleTokenizer.from_file(path, max_length=meta["max_length"]))
        tokenizer = self._tokenizer[1]
        tokens = tokenizer.encode(titles)
        results = await self.text_encoder.infer(tokens)
        states = np.concatenate([r.outputs[TOKEN_STATES_NAME] for r in results])
        mask = tokens["attention_mask"] > 0
        return {"text_tokens": states, "text_token_mask": mask.astype(np.float32)}, tokenizer.wordpieces(tokens)

    # --- snapshots ------------------------------------------------------------------------------------

    async def handle_snapshots(self, messages: list) -> None:
        """A micro-batch of snapshot records, in windows: the snapshots of a window are grouped by post, so that
        several snapshots of one post give one merge and one prediction (after a lag, catching up costs per post,
        not per snapshot). A window is bounded in snapshots, which bounds what a batch of envelopes holds.
        Records are split into ``lanes`` by partition and the lanes' windows are scored concurrently: a post's
        snapshots are always in one partition, so each post stays in one lane, in order, while one lane waits on
        Redis or Triton and another works."""
        deliveries = []
        lanes = self.settings.worker.lanes
        windows: list[dict[str, list[bytes]]] = [{} for _ in range(lanes)]
        in_window = [0] * lanes
        with self.metrics.in_flight.track_inprogress():
            for message in messages:
                try:
                    snapshots, rejected = await self.decode_snapshots(message)
                except RejectedRecord as error:
                    deliveries.append(await self.dead_letter(message, error))
                    continue
                for index, value, error in rejected:
                    deliveries.append(await self.dead_letter(message, error, index, value))
                if not snapshots:
                    continue
                lane = (message.partition or 0) % lanes
                group_by_post(snapshots, into=windows[lane])
                in_window[lane] += len(snapshots)
                if sum(in_window) >= self.settings.worker.window_snapshots:
                    await self._score_windows(windows, in_window)
                    windows, in_window = [{} for _ in range(lanes)], [0] * lanes
            if sum(in_window) < self.settings.worker.lane_min_snapshots:  # lanes hold disjoint posts
                windows, in_window = [{post: s for window in windows for post, s in window.items()}], [sum(in_window)]
            await self._score_windows(windows, in_window)
            await asyncio.gather(*deliveries)
        self.metrics.batch_size.labels("snapshots").observe(len(messages))
        self._observe_end_to_end("temporal", messages)

    async def _score_windows(self, windows: list[dict[str, list[bytes]]], sizes: list[int]) -> None:
        async with asyncio.TaskGroup() as lanes:  # a lane that fails cancels the others
            for window, size in zip(windows, sizes):
                if window:
                    lanes.create_task(self._score_window(window, size))

    async def _score_window(self, window: dict[str, list[bytes]], snapshots: int) -> None:
        """Merge, score and publish a window in steps of about ``max_batch_snapshots``, pipelined so that Redis,
        Triton and this process work at once: step k+1 is merged in Redis while this process builds step k's
        features and publishes step k-1, and Triton scores step k meanwhile. A post's snapshots are all in one
        step, so steps touch disjoint posts and their writes may overlap; the window's outputs are all delivered
        before it returns, so a later window's prediction of a post is written after this one's."""
        self.metrics.snapshots_folded.inc(snapshots - len(window))
        steps = steps_by_post(window, self.settings.worker.max_batch_snapshots)
        outputs = []
        merging = asyncio.ensure_future(self._merge(steps[0])) if steps else None
        # The step Triton is scoring: its jobs (one per model set in it) and their inferences, run concurrently.
        scoring: tuple[list[ScoringJob], asyncio.Future] | None = None
        current = None
        try:
            for k in range(len(steps)):
                changed = await merging
                self.failpoints.hit("after_merge")
                merging = asyncio.ensure_future(self._merge(steps[k + 1])) if k + 1 < len(steps) else None
                jobs = await self._temporal_jobs(await self._with_post(changed))
                current = (jobs, asyncio.ensure_future(self._infer_all(jobs))) if jobs else None
                if scoring is not None:
                    outputs += await self._publish_all(scoring[0], await scoring[1])
                scoring = current
            if scoring is not None:
                outputs += await self._publish_all(scoring[0], await scoring[1])
                scoring = None
            await asyncio.gather(*outputs)
        finally:  # if a step failed, nothing is left running behind it (a no-op on finished ones)
            for pending in (merging, scoring and scoring[1], current and current[1]):
                if pending is not None:
                    pending.cancel()

    async def _merge(self, by_post: dict[str, list[bytes]]) -> list[SequenceUpdate]:
        """Merge a step's snapshots into the sequences; the updates of the posts to score: whose sequence changed,
        or whose latest observation has no prediction (redelivered after a crash)."""
        started = time.perf_counter()
        updates = await self.store.merge_records(by_post)
        self.metrics.redis_seconds.labels("merge").observe(time.perf_counter() - started)
        self.metrics.snapshots_in.inc(sum(len(u.statuses) for u in updates))
        for status, n in Counter(status for update in updates for status in update.statuses).items():
            self.metrics.sequence_merges.labels(MERGE_OUTCOMES[status]).inc(n)  # a labelled inc was ~1.5 us
        from_cache = sum(u.post_from_cache for u in updates)
        self.metrics.post_metadata.labels("cache").inc(from_cache)
        self.metrics.post_metadata.labels("redis").inc(len(updates) - from_cache)
        changed = [u for u in updates if u.changed]
        if changed:
            self.metrics.counter_decreases.inc(count_decreases([u.sequence for u in changed],
                                                               [u.merged_at for u in changed]))
        to_score = [u for u in updates if u.needs_prediction]  # the changed ones and the redelivered unpredicted
        if len(to_score) > len(changed):
            self.metrics.rescored.inc(len(to_score) - len(changed))
        return to_score

    async def _with_post(self, updates: list[SequenceUpdate]) -> list[SequenceUpdate]:
        """The posts and snapshots topics are consumed independently, so a snapshot can overtake its post.
        Scoring it without the post (no age, platform or content) gives nonsense, so such a post waits, in
        Redis (before its snapshots are acknowledged), for its post event (``handle_posts`` scores it) or, after
        ``post_grace_s``, is scored without it (``score_overdue``)."""
        waiting = [update.post_id for update in updates if update.post.created_at is None]
        if not waiting:
            return updates
        await self.store.await_posts(waiting, time.time() + self.settings.worker.post_grace_s)
        self.metrics.awaiting_post.inc(len(waiting))
        self.failpoints.hit("awaiting_post")
        return [u for u in updates if u.post.created_at is not None]

    async def score_overdue(self, limit: int = 1_000) -> int:
        """Score the posts whose snapshots waited longer than the grace period for a post that never came (taken
        with a lease: a worker that dies before it is done leaves them to be taken again)."""
        overdue = await self.store.claim_overdue(time.time(), self.settings.worker.awaiting_lease_s, limit)
        if overdue:
            updates = await self.store.current(overdue)
            self.metrics.predictions_without_post.inc(sum(u.post.created_at is None for u in updates))
            await asyncio.gather(*await self._predict_all(await self._temporal_jobs(updates)))
            await self.store.done_waiting(overdue)
        return len(overdue)

    def _observe_end_to_end(self, model: str, messages: list) -> None:
        now = time.time()
        histogram = self.metrics.end_to_end_seconds.labels(model)
        for message in messages:
            if message.timestamp:
                histogram.observe(max(0.0, now - message.timestamp))

    async def _temporal_jobs(self, updates: list[SequenceUpdate]) -> list[ScoringJob]:
        """The temporal jobs of these updates: one per model set their posts route to, and one for the fallback."""
        if not updates:
            return []
        routes = [self.router.route(u.post.platform) for u in updates]
        jobs = []
        for model_set, rows in group_rows(routes):
            group = take(updates, rows)
            job = self._fallback_job(group, take(routes, rows)) if model_set is None else \
                await self._temporal_job(model_set, group, take(routes, rows))
            self.stream_clock = max(self.stream_clock, float(job.as_of.max()))
            jobs.append(job)
        return jobs

    def _sequences(self, updates: list[SequenceUpdate]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray,
                                                                   np.ndarray | None]:
        """(sequences, created, as_of, without_post or None) of the updates' posts. A snapshot may come before its
        post: then the first observation stands in for the upload time."""
        seqs = [u.sequence for u in updates]
        created = np.array([u.post.created_at if u.post.created_at is not None else u.sequence[0, 0]
                            for u in updates])
        as_of = np.array([u.sequence[-1, 0] for u in updates])
        without_post = np.array([u.post.created_at is None for u in updates])
        return seqs, created, as_of, without_post if without_post.any() else None

    async def _temporal_job(self, model_set: ModelSet, updates: list[SequenceUpdate], routes: list[Route]
                            ) -> ScoringJob:
        spec = model_set.spec("temporal")
        seqs, created, as_of, without_post = self._sequences(updates)
        platforms = [route.platform for route in routes]
        vectors, weights = await self._cached_content(model_set, updates, created, platforms)
        inputs = F.build_temporal_inputs(spec, seqs, created, platforms, self.settings.score.weights_for, as_of,
                                         vectors)
        return ScoringJob("temporal", model_set, [u.post_id for u in updates], as_of, inputs, spec, created, routes,
                          [u.post.category for u in updates], {"modality_weights": weights}, without_post)

    def _fallback_job(self, updates: list[SequenceUpdate], routes: list[Route]) -> ScoringJob:
        """Posts no model set scores: their dynamic features (the persistence baseline's input and the rising
        board's growth), under their platform's score weights."""
        spec = self.fallback_spec
        seqs, created, as_of, without_post = self._sequences(updates)
        weights = F.weight_matrix([route.platform for route in routes], self.settings.score.weights_for,
                                  spec.counters)
        dynamic = F.build_sequence(spec, seqs, created, as_of, weights)["dynamic_features"]
        return ScoringJob("temporal", None, [u.post_id for u in updates], as_of, {"dynamic_features": dynamic}, spec,
                          created, routes, [u.post.category for u in updates], None, without_post)

    async def _cached_content(self, model_set: ModelSet, updates: list[SequenceUpdate], created: np.ndarray,
                              platforms: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The content vectors the merge returned; stale or missing ones (of another content model or version,
        or none) are recomputed and stored."""
        content = model_set.predictors["content"]
        spec = model_set.spec("content")
        dim = next(o.dims[0] for o in content.model.config.output if o.name == "content_vector")
        tag = self._content_tag(model_set)
        vectors, weights, ok = decode_content([u.post.content for u in updates], tag, dim, len(F.MODALITIES))
        stale = np.flatnonzero(~ok)
        if len(stale):
            self.metrics.content_vectors.labels("recomputed").inc(len(stale))
            post_ids = [updates[i].post_id for i in stale]
            stored = await self.store.content_inputs(post_ids)
            titled = [row for row, (_, title) in enumerate(stored) if title is not None]
            text = {}
            embedded = await self.embed_titles([stored[row][1] for row in titled]) if titled else None
            if embedded is not None:  # rows without a stored title keep an all-zero mask, i.e. text masked
                tokens, mask = embedded[0]["text_tokens"], embedded[0]["text_token_mask"]
                text = {"text_tokens": np.zeros((len(stale), *tokens.shape[1:]), np.float32),
                        "text_token_mask": np.zeros((len(stale), mask.shape[1]), np.float32)}
                text["text_tokens"][titled], text["text_token_mask"][titled] = tokens, mask
            # A post that never came has no stored features: its first observation stands in for the upload.
            inputs = F.build_static_inputs(spec, created[stale], [platforms[i] for i in stale], **text)
            for row, (static, _) in enumerate(stored):
                if static is not None and len(static) == 4 * spec.static_dim:
                    inputs["static_features"][row] = np.frombuffer(static, dtype=np.float32)
            vectors[stale], weights[stale] = await self.content_vectors(model_set, inputs)
            await self.store.put_content(post_ids, encode_content(tag, vectors[stale], weights[stale]))
        return vectors, weights

    async def _predict_all(self, jobs: list[ScoringJob]) -> list:
        """Score jobs (their inferences concurrently) and publish their predictions; the delivery futures."""
        return await self._publish_all(jobs, await self._infer_all(jobs)) if jobs else []

    async def _infer_all(self, jobs: list[ScoringJob]) -> list[tuple[list, float]]:
        if len(jobs) == 1:
            return [await self._infer(jobs[0])]
        return list(await asyncio.gather(*(self._infer(job) for job in jobs)))

    async def _infer(self, job: ScoringJob) -> tuple[list, float]:
        """(inference results, seconds); nothing for the fallback, which runs no model."""
        if job.model_set is None:
            return [], 0.0
        predictor = job.model_set.predictors[job.kind]
        started = time.perf_counter()
        results = await predictor.infer({t.name: job.inputs[t.name] for t in predictor.model.config.input})
        return results, time.perf_counter() - started

    async def _publish_all(self, jobs: list[ScoringJob], inferred: list[tuple[list, float]]) -> list:
        deliveries = []
        for job, (results, elapsed) in zip(jobs, inferred):
            deliveries += await self._publish(job, results, elapsed)
        return deliveries

    def _model_records(self, job: ScoringJob, results: list, elapsed: float, now: float
                       ) -> tuple[list[dict], list[int], list[int]]:
        """(records, the job row of each, rows whose output was not finite) of a model set's inference: every
        output bounded by the range its version declares, flagged where it needed that."""
        kind, model_set, spec = job.kind, job.model_set, job.spec
        dynamic = job.inputs.get("dynamic_features") if kind == "temporal" else None
        name, trained_for, label = model_set.name(kind), model_set.platform, model_set.platform
        records, rows, non_finite, offset = [], [], [], 0
        for result in results:
            n = len(result.outputs["log_score"])
            part = slice(offset, offset + n)
            bounded = bound_outputs(result.outputs["log_score"], result.outputs.get("log_interval"),
                                    model_set.bounds(kind, result.model_version),
                                    None if dynamic is None else dynamic[part, LOG1P_AGE_H],
                                    None if dynamic is None else dynamic[part, SCORE_NOW])
            outputs = {**result.outputs, "log_score": bounded.log_score, "log_interval": bounded.interval,
                       **{k: v[part] for k, v in (job.explanations or {}).items()}}
            kept: slice | np.ndarray = part  # the rows published from this result
            out_of_range = bounded.out_of_range
            if bounded.non_finite.any():
                good = ~bounded.non_finite
                non_finite += (np.flatnonzero(bounded.non_finite) + offset).tolist()
                kept, out_of_range = np.flatnonzero(good) + offset, out_of_range[good]
                outputs = {k: (v[good] if isinstance(v, np.ndarray) else [x for x, g in zip(v, good) if g])
                           for k, v in outputs.items() if v is not None}
            row_ids = range(len(job.post_ids))[kept] if isinstance(kept, slice) else kept.tolist()
            post_ids = job.post_ids[kept] if isinstance(kept, slice) else [job.post_ids[row] for row in row_ids]
            records += prediction_records(post_ids, kind, result.model_version, job.as_of[kept], int(spec.horizon_s),
                                          outputs, now, model_name=name,
                                          platforms=[job.routes[row].platform for row in row_ids],
                                          trained_for=trained_for, flags=self._flags(job, kept, out_of_range))
            rows += row_ids
            self.metrics.predictions.labels(kind, label, result.model_version, result.served_by).inc(len(row_ids))
            self.metrics.inference_seconds.labels(kind, label, result.model_version, result.served_by).observe(elapsed)
            self.metrics.inference_batch.labels(kind).observe(n)
            observe = self.metrics.predicted_log_score.labels(kind, label).observe
            for value in outputs["log_score"].tolist():
                observe(value)
            offset += n
        return records, rows, non_finite

    def _flags(self, job: ScoringJob, rows: slice | np.ndarray, out_of_range: np.ndarray | None,
               fallback: bool = False) -> list[tuple[str, ...]]:
        """Per row of ``rows`` (of the job): the flags of its prediction, counted per kind, model set (or
        'fallback') and flag. ``out_of_range``: per row of ``rows``, from the bounds."""
        n = len(range(len(job.post_ids))[rows]) if isinstance(rows, slice) else len(rows)
        without_post = np.zeros(n, bool) if job.without_post is None else job.without_post[rows]
        out_of_range = np.zeros(n, bool) if out_of_range is None else out_of_range
        first = (FALLBACK,) if fallback else NO_FLAGS
        label = FALLBACK_PLATFORM_LABEL if fallback else job.model_set.platform
        combos = {(False, False): first, (True, False): (*first, OUT_OF_RANGE), (False, True): (*first, WITHOUT_POST),
                  (True, True): (*first, OUT_OF_RANGE, WITHOUT_POST)}
        for flag, count in ((FALLBACK, n if fallback else 0), (OUT_OF_RANGE, int(out_of_range.sum())),
                            (WITHOUT_POST, int(without_post.sum()))):
            if count:
                self.metrics.flagged_predictions.labels(job.kind, label, flag).inc(count)
        return [combos[pair] for pair in zip(out_of_range.tolist(), without_post.tolist())]

    def _fallback_records(self, job: ScoringJob, rows: list[int], reasons: list[str] | None, now: float
                          ) -> list[dict]:
        """Persistence predictions for ``rows`` of a temporal job (``fallback.py``). ``reasons``: why a model set
        did not score them (None: each row's route says)."""
        kept = np.asarray(rows, dtype=np.int64)
        routes = [job.routes[row] for row in rows]
        if reasons is None:
            self._count_fallback("temporal", routes)
        else:  # a model set's outputs replaced: counted under that set
            self._count_fallback("temporal", [Route(r.platform, None, why, job.model_set.platform)
                                              for r, why in zip(routes, reasons)])
        outputs = {"log_score": persistence_log_score(job.inputs["dynamic_features"][kept]), "log_interval": None}
        self.metrics.predictions.labels("temporal", FALLBACK_PLATFORM_LABEL, PERSISTENCE_VERSION,
                                        "baseline").inc(len(rows))
        return prediction_records(take(job.post_ids, rows), "temporal", PERSISTENCE_VERSION, job.as_of[kept],
                                  int(job.spec.horizon_s), outputs, now, model_name=PERSISTENCE_MODEL,
                                  platforms=[r.platform for r in routes], trained_for=None,
                                  flags=self._flags(job, kept, None, fallback=True))

    async def _publish(self, job: ScoringJob, results: list, elapsed: float) -> list:
        """Predictions to the leaderboards and the predictions topic; the futures of both writes."""
        kind, spec, now = job.kind, job.spec, time.time()
        if job.model_set is None:
            rows = list(range(len(job.post_ids)))
            records = self._fallback_records(job, rows, None, now)
        else:
            records, rows, non_finite = self._model_records(job, results, elapsed, now)
            if non_finite and kind == "temporal":
                records += self._fallback_records(job, non_finite, [NON_FINITE] * len(non_finite), now)
                rows += non_finite
            elif non_finite:  # no static fallback: nothing to go on at upload
                self._count_fallback(kind, [Route(r.platform, None, NON_FINITE, job.model_set.platform)
                                            for r in take(job.routes, non_finite)])
        as_of, created, categories = job.as_of, job.created, job.categories
        rising = job.inputs["dynamic_features"][:, RISING_INDEX] if kind == "temporal" else None
        # A prediction stands for evaluation age t if made within one sequence bin after t (YouTube's are 6 h).
        tolerance = self.settings.worker.online_age_tolerance_h or spec.bin_s / 3600.0
        ages, tolerance = ((0.0,), 1.0) if kind == "static" else (spec.eval_ages_h, tolerance)
        recorded = []
        for r, i in zip(records, rows):
            age_h = (as_of[i] - created[i]) / 3600.0 if kind == "temporal" else 0.0
            kept = tuple((eval_field(r["model_name"], r["model_version"], age), r["log_score"])
                         for age in eval_ages_reached(age_h, ages, tolerance))
            recorded.append(RecordedPrediction(
                r["post_id"], r["score"], 0.0 if rising is None else float(rising[i]), job.routes[i].platform,
                categories[i] if categories else None, encode(latest_view(r)).decode(),
                float(created[i]) + spec.horizon_s, kept, int(as_of[i])))
        topic = self.settings.kafka.topics.predictions
        self.metrics.records_out.labels(topic).inc(len(records))
        self.failpoints.hit("before_publish")
        deliveries = await self.send_many(topic, [(r["post_id"].encode(), encode(r)) for r in records])
        return [asyncio.ensure_future(self._record_delivered(kind, recorded, deliveries))]  # overlaps the next step

    async def _record_delivered(self, kind: str, recorded: list[RecordedPrediction], deliveries: list) -> None:
        """Leaderboards and ``predicted_to`` marks, once the predictions are in Kafka: a mark never claims a
        prediction that a crash lost."""
        await asyncio.gather(*deliveries)
        self.failpoints.hit("after_delivery")
        await self.boards.record(kind, recorded)

    async def evaluate_matured(self, limit: int = 2_000) -> int:
        """Compare the kept predictions of posts past their horizon with what they really reached, per model
        (whose name says its platform) or the fallback."""
        matured = await self.store.matured(self.stream_clock, limit)
        if not matured:
            return 0
        for post_id, sequence, meta, kept in matured:
            if len(sequence) == 0 or not kept:
                continue
            route = self.router.route(meta.platform)
            spec = route.model_set.spec("temporal") if route.model_set is not None else self.fallback_spec
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

    async def refresh_models(self) -> None:
        """Newer versions of the served sets (each set's temporal halves switch together), then sets not served
        yet."""
        if self.text_encoder is not None:
            await self.text_encoder.refresh()
        for platform, model_set in list(self.model_sets.items()):
            before = {kind: (p.version, p.stats["reload_failures"]) for kind, p in model_set.predictors.items()}
            switched = await model_set.refresh()
            for kind, predictor in model_set.predictors.items():
                old_version, old_failures = before[kind]
                if switched[kind]:
                    self.metrics.model_info.remove(kind, platform, str(old_version))
                    self.metrics.model_reloads.labels(kind, platform, "loaded").inc()
                elif predictor.stats["reload_failures"] > old_failures:
                    self.metrics.model_reloads.labels(kind, platform, "failed").inc()
        await self.sync_model_sets()

    async def update_gauges(self, consumer) -> None:
        """Gauges read from the outside world: models served, Triton circuit, lag, tracked posts."""
        for platform, model_set in self.model_sets.items():
            for kind, predictor in model_set.predictors.items():
                self.metrics.model_info.labels(kind, platform, str(predictor.version)).set(1)
                self.metrics.triton_up.labels(kind, platform).set(predictor.breaker.state.value == "closed")
                for row in predictor.metadata.get("metrics", []) if kind != "content" else []:
                    # The trainer's validation MAE per age: what the online MAE is compared with.
                    self.metrics.offline_mae.labels(kind, platform, str(predictor.version),
                                                    f"{row['age_h']:g}").set(row["mae"])
        for tp in consumer.assignment():
            position = await consumer.position(tp)
            if position is not None:
                lag = max(0, consumer.highwater(tp) - position)
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
        self.metrics.tracked_posts.set(await self.store.estimate_tracked_posts())
