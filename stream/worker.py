"""What the worker does with a micro-batch, apart from Faust: validate, store, predict, publish.

Posts: validate -> title token states (served text encoder) and static features -> static prediction (with
its word attention over the title), and the post's content vector (the per-post half of MTAF-temporal),
stored with the post.
Snapshots: validate -> merge into the Redis sequences (which returns each post's content vector) -> one
temporal-head inference per changed post (several snapshots of a post in one batch give one prediction)
-> predictions topic + leaderboards. A content vector of another model version, or of a post that never
came, is recomputed from the stored inputs and written back.
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
from popscore.contract import DeadLetter, Post, RejectedRecord, RejectReason, decode_record, decode_snapshots, \
    encode_record
from popscore.serving.model_repository import list_models
from popscore.serving.predictor import ModelPredictor
from popscore.settings import Settings
from popscore.stream.failpoints import Failpoints
from popscore.stream.health import Health
from popscore.stream.leaderboard import Leaderboards, RecordedPrediction
from popscore.stream.metrics import WorkerMetrics
from popscore.stream.online_accuracy import AccuracyKey, OnlineAccuracy, eval_ages_reached, eval_field, \
    parse_eval_field
from popscore.stream.predictions import encode, latest_view, prediction_records
from popscore.stream.sequence_store import APPENDED, CORRECTED, DUPLICATE, OUT_OF_ORDER, SequenceUpdate, \
    SnapshotSequenceStore, count_decreases, decode_content, encode_content, group_by_post, steps_by_post

log = logging.getLogger(__name__)

MERGE_OUTCOMES = {APPENDED: "appended", DUPLICATE: "duplicate", CORRECTED: "corrected", OUT_OF_ORDER: "out_of_order"}
RISING_INDEX = F.DYNAMIC_FEATURE_NAMES.index("dlog_score_last_h")
TEXT_ENCODER = "popscore_text_encoder"


def check_key(key: bytes | None, post_id: str) -> None:
    """A post and its snapshots are keyed by post_id: that keeps them in one partition, in order, on one worker."""
    if key is None:
        raise RejectedRecord(RejectReason.KEY_MISMATCH, f"record has no key; it must be keyed by post_id {post_id!r}")
    if key != post_id.encode():
        raise RejectedRecord(RejectReason.KEY_MISMATCH, f"record key {key[:200]!r} differs from post_id {post_id!r}")


@dataclass
class ScoringJob:
    """One model's inputs for a batch of posts, and what naming and recording its predictions needs."""

    kind: str  # key of popscore.features.MODEL_NAMES
    post_ids: list[str]
    as_of: np.ndarray
    inputs: dict[str, np.ndarray]
    spec: F.FeatureSpec
    created: np.ndarray
    platforms: list[str] | None = None
    categories: list[str | None] | None = None
    explanations: dict | None = None  # per row: outputs computed earlier, or what names an output


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
        self.predictors: dict[str, ModelPredictor] = {}
        self.text_encoder: ModelPredictor | None = None
        self._tokenizer = None  # (encoder version, TitleTokenizer) of the served text encoder
        self._reload_failures: dict[str, int] = {}
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
        for kind, name in F.MODEL_NAMES.items():
            predictor = ModelPredictor(name, settings.serving, settings.triton.grpc_url, settings.stack.model_repo,
                                       settings.serving.python_backend_mirror)
            await predictor.start()
            self.predictors[kind] = predictor
        paired = self.predictors["temporal"].metadata.get("content_model")
        if paired is None or paired["version"] != self.predictors["content"].version:
            raise RuntimeError(f"{F.MODEL_NAMES['temporal']} version {self.predictors['temporal'].version} names "
                               f"content model {paired}, but {F.MODEL_NAMES['content']} serves version "
                               f"{self.predictors['content'].version}: re-export them together")
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
        for predictor in [*self.predictors.values(), *([self.text_encoder] if self.text_encoder else [])]:
            await predictor.close()
        if self.redis is not None:
            await self.redis.aclose()

    def feature_spec(self, kind: str) -> F.FeatureSpec:
        """The spec stored with the served version, so serving computes what that model was trained on."""
        meta = self.predictors[kind].metadata
        return F.FeatureSpec.from_dict(meta["feature_spec"]) if "feature_spec" in meta else F.DEFAULT_SPEC

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
            spec = self.feature_spec("static")
            created = np.array([p.created_at.timestamp() for p in posts])
            platforms = [p.platform for p in posts]
            titles = await self.embed_titles([p.text.title for p in posts])
            text, words = titles if titles is not None else ({}, None)
            inputs = F.build_static_inputs(spec, created, platforms, posts, **text)
            content = encode_content(self.predictors["content"].version, *await self.content_vectors(inputs))
            self.metrics.content_vectors.labels("post").inc(len(posts))
            await self.store.put_posts(posts, inputs["static_features"], content, embedded_titles=titles is not None)
            deliveries += await self._predict(ScoringJob("static", [p.post_id for p in posts], created, inputs, spec,
                                                         created, explanations={"words": words} if words else None))
            self.metrics.posts_in.inc(len(posts))
            # Snapshots that came before their post were stored and wait for it, or were scored without it after
            # the grace period: score them now, with the post.
            waiting = await self.store.current(list(dict.fromkeys(p.post_id for p in posts)))
            if waiting:
                deliveries += await self._predict(await self._temporal_job(waiting))
        await asyncio.gather(*deliveries)
        await self.store.done_waiting([update.post_id for update in waiting])
        self._observe_end_to_end("static", messages)

    async def content_vectors(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The per-post half of MTAF-temporal: (content vectors, modality weights)."""
        predictor = self.predictors["content"]
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
        scoring: tuple[ScoringJob, asyncio.Future] | None = None  # the step Triton is scoring
        current = None
        try:
            for k in range(len(steps)):
                changed = await merging
                self.failpoints.hit("after_merge")
                merging = asyncio.ensure_future(self._merge(steps[k + 1])) if k + 1 < len(steps) else None
                job = await self._temporal_job(await self._with_post(changed))
                current = (job, asyncio.ensure_future(self._infer(job))) if job is not None else None
                if scoring is not None:
                    outputs += await self._publish(scoring[0], *await scoring[1])
                scoring = current
            if scoring is not None:
                outputs += await self._publish(scoring[0], *await scoring[1])
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
            await asyncio.gather(*await self._predict(await self._temporal_job(updates)))
            await self.store.done_waiting(overdue)
        return len(overdue)

    def _observe_end_to_end(self, model: str, messages: list) -> None:
        now = time.time()
        histogram = self.metrics.end_to_end_seconds.labels(model)
        for message in messages:
            if message.timestamp:
                histogram.observe(max(0.0, now - message.timestamp))

    async def _temporal_job(self, updates: list[SequenceUpdate]) -> ScoringJob | None:
        if not updates:
            return None
        spec = self.feature_spec("temporal")
        seqs = [u.sequence for u in updates]
        # A snapshot may come before its post: then the first observation stands in for the upload time.
        created = np.array([u.post.created_at if u.post.created_at is not None else u.sequence[0, 0]
                            for u in updates])
        platforms = [u.post.platform or "unknown" for u in updates]
        as_of = np.array([u.sequence[-1, 0] for u in updates])
        vectors, weights = await self._cached_content(updates, spec, created, platforms)
        inputs = F.build_temporal_inputs(spec, seqs, created, platforms, self.settings.score.weights_for, as_of,
                                         vectors)
        self.stream_clock = max(self.stream_clock, float(as_of.max()))
        return ScoringJob("temporal", [u.post_id for u in updates], as_of, inputs, spec, created, platforms,
                          [u.post.category for u in updates], {"modality_weights": weights})

    async def _cached_content(self, updates: list[SequenceUpdate], spec: F.FeatureSpec, created: np.ndarray,
                              platforms: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The content vectors the merge returned; stale or missing ones are recomputed and stored."""
        content = self.predictors["content"]
        dim = next(o.dims[0] for o in content.model.config.output if o.name == "content_vector")
        vectors, weights, ok = decode_content([u.post.content for u in updates], content.version, dim,
                                              len(F.MODALITIES))
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
            vectors[stale], weights[stale] = await self.content_vectors(inputs)
            await self.store.put_content(post_ids, encode_content(content.version, vectors[stale], weights[stale]))
        return vectors, weights

    async def _predict(self, job: ScoringJob | None) -> list:
        """Score a job and publish its predictions; the delivery futures."""
        return [] if job is None else await self._publish(job, *await self._infer(job))

    async def _infer(self, job: ScoringJob):
        predictor = self.predictors[job.kind]
        started = time.perf_counter()
        results = await predictor.infer({t.name: job.inputs[t.name] for t in predictor.model.config.input})
        return results, time.perf_counter() - started

    async def _publish(self, job: ScoringJob, results: list, elapsed: float) -> list:
        """Predictions to the leaderboards and the predictions topic; the futures of both writes."""
        kind, post_ids, as_of, spec, created = job.kind, job.post_ids, job.as_of, job.spec, job.created
        platforms, categories, inputs = job.platforms, job.categories, job.inputs
        records, offset = [], 0
        now = time.time()
        for result in results:
            n = len(result.outputs["log_score"])
            outputs = {**result.outputs, **{k: v[offset:offset + n] for k, v in (job.explanations or {}).items()}}
            records += prediction_records(post_ids[offset:offset + n], kind, result.model_version,
                                          as_of[offset:offset + n], int(spec.horizon_s), outputs, now)
            self.metrics.predictions.labels(kind, result.model_version, result.served_by).inc(n)
            self.metrics.inference_seconds.labels(kind, result.model_version, result.served_by).observe(elapsed)
            self.metrics.inference_batch.labels(kind).observe(n)
            observe = self.metrics.predicted_log_score.labels(kind).observe
            for value in result.outputs["log_score"].reshape(-1).tolist():
                observe(value)
            offset += n
        rising = inputs["dynamic_features"][:, RISING_INDEX] if kind == "temporal" else np.zeros(len(records))
        ages, tolerance = ((0.0,), 1.0) if kind == "static" else (spec.eval_ages_h,
                                                                   self.settings.worker.online_age_tolerance_h)
        recorded = []
        for i, r in enumerate(records):
            age_h = (as_of[i] - created[i]) / 3600.0 if kind == "temporal" else 0.0
            kept = tuple((eval_field(kind, r["model_version"], age), r["log_score"])
                         for age in eval_ages_reached(age_h, ages, tolerance))
            recorded.append(RecordedPrediction(
                r["post_id"], r["score"], float(rising[i]), platforms[i] if platforms else "",
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
        """Compare the kept predictions of posts past their horizon with what they really reached."""
        matured = await self.store.matured(self.stream_clock, limit)
        if not matured:
            return 0
        spec = self.feature_spec("temporal")
        for post_id, sequence, meta, kept in matured:
            if len(sequence) == 0 or not kept:
                continue
            created = meta.created_at if meta.created_at is not None else sequence[0, 0]
            weights = F.weight_matrix([meta.platform or "unknown"], self.settings.score.weights_for, spec.counters)
            realised = float(F.target_log_score(spec, [sequence], np.array([created]), weights)[0])
            if realised != realised:  # no observation before the horizon
                continue
            for name, predicted in kept.items():
                self.online.add(AccuracyKey(*parse_eval_field(name)), predicted, realised)
        for key, summary in self.online.summary().items():
            labels = (key.model, key.version, key.age_h)
            self.metrics.online_mae.labels(*labels).set(summary["mae"])
            self.metrics.online_srcc.labels(*labels).set(summary["srcc"])
        for key, n in self.online.evaluated.items():
            counter = self.metrics.online_evaluated.labels(key.model, key.version, key.age_h)
            counter.inc(n - self._evaluated_exported.get(key, 0))
            self._evaluated_exported[key] = n
        return len(matured)

    async def refresh_models(self) -> None:
        if self.text_encoder is not None:
            await self.text_encoder.refresh()
        for kind, predictor in self.predictors.items():  # the content model before the temporal head
            old = predictor.version
            # The head only ever switches to the version of the content vectors the content model now makes.
            target = self.predictors["content"].version if kind == "temporal" else None
            switched = await predictor.refresh(target)
            if switched:
                self.metrics.model_info.remove(kind, str(old))
                self.metrics.model_reloads.labels(kind, "loaded").inc()
            elif predictor.stats["reload_failures"] > self._reload_failures.get(kind, 0):
                self.metrics.model_reloads.labels(kind, "failed").inc()
            self._reload_failures[kind] = predictor.stats["reload_failures"]

    async def update_gauges(self, consumer) -> None:
        """Gauges read from the outside world: models served, Triton circuit, lag, tracked posts."""
        for kind, predictor in self.predictors.items():
            self.metrics.model_info.labels(kind, str(predictor.version)).set(1)
            self.metrics.triton_up.labels(kind).set(predictor.breaker.state.value == "closed")
            for row in predictor.metadata.get("metrics", []) if kind != "content" else []:
                # The trainer's validation MAE per age: what the online MAE is compared with.
                self.metrics.offline_mae.labels(kind, str(predictor.version), f"{row['age_h']:g}").set(row["mae"])
        for tp in consumer.assignment():
            position = await consumer.position(tp)
            if position is not None:
                lag = max(0, consumer.highwater(tp) - position)
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
        self.metrics.tracked_posts.set(await self.store.estimate_tracked_posts())
