"""The worker's Prometheus metrics, on a registry of its own (no module-level global state).

The ``model`` label is the model kind (``static`` or ``temporal``; ``content`` for the per-post half) on
every metric, so panels and alerts can join them; the ``platform`` label beside it is the model set that made a
prediction (the platform it was trained for) or ``fallback``. The fallback and flag counters name the kind
``kind``, and their ``platform`` is the post's platform where the deployment knows it (a model set, an alias
target, a platform with score weights), else ``other``: input cannot grow the number of series.

Names follow Prometheus conventions: ``popscore_`` prefix, base units (seconds, bytes), ``_total`` for
counters (added by the client library). The Grafana dashboard and the alert rules under ``deploy/``
query exactly these names; a test checks that.
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from popscore.contract import RejectReason
from popscore.settings import TopicSettings

LATENCY_BUCKETS = (0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03,
                   0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
"""Seconds. No bound more than 1.5 times the one before it between 0.5 ms and 1 s: histogram_quantile
interpolates inside one bucket, so a quantile is off by at most that ratio - with 2.5x steps, a stream of
single records that all take 6 ms showed a p50 anywhere in 5-10 ms. 0.25 s (the end-to-end objective the
alert rules test) is a bound, so the alert compares against an exact bucket edge."""
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
LOG_SCORE_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20)


class WorkerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.records_in = Counter("popscore_records_consumed", "Kafka records consumed, by topic",
                                  ["topic"], registry=r)
        self.records_out = Counter("popscore_records_produced", "Kafka records produced, by topic",
                                   ["topic"], registry=r)
        self.snapshots_in = Counter("popscore_snapshots_accepted", "Valid snapshots accepted (single or batched)",
                                    registry=r)
        self.posts_in = Counter("popscore_posts_accepted", "Valid posts accepted", registry=r)
        self.dead_letters = Counter("popscore_dead_letters", "Records sent to the dead-letter topic, by reason",
                                    ["topic", "reason"], registry=r)
        self.awaiting_post = Counter("popscore_snapshots_awaiting_post",
                                     "Sequence updates not scored yet because their post had not arrived",
                                     registry=r)
        self.rescored = Counter("popscore_posts_rescored", "Posts scored again because a redelivered snapshot's "
                                "observation had no prediction (one lost when a worker died)", registry=r)
        self.sequences_reread = Counter("popscore_sequences_reread", "Sequences read again whole because the tail "
                                        "their merge returned did not reach back as far as their model reads (one "
                                        "reading further back was promoted in between)", registry=r)
        self.predictions_not_latest = Counter("popscore_predictions_not_latest", "Temporal predictions published "
                                              "but not recorded as their post's latest (boards, /posts): a "
                                              "prediction of a later observation was recorded first (a re-score "
                                              "such as a media retry raced a newer snapshot)", registry=r)
        self.predictions_without_post = Counter("popscore_predictions_without_post", "Temporal predictions made "
                                                "without the post event (it had not come after post_grace_s); the "
                                                "post, when it comes, has its sequence scored again", registry=r)
        self.batch_failures = Counter("popscore_batch_failures", "Failed attempts at a micro-batch, by agent and "
                                      "kind (transient: retried; error: retried, then split and dead-lettered)",
                                      ["agent", "kind"], registry=r)
        self.agent_crashes = Counter("popscore_agent_crashes", "Agents that left their loop on an exception "
                                     "(Faust restarts them; the batch they held is not acknowledged)", ["agent"],
                                     registry=r)
        self.background_errors = Counter("popscore_background_errors", "Failed runs of a timer (model refresh, "
                                         "gauges, online accuracy, waiting posts, probes)", ["task"], registry=r)
        self.ready = Gauge("popscore_worker_ready", "1 while every readiness check passes", registry=r)
        self.snapshots_folded = Counter("popscore_snapshots_folded",
                                        "Snapshots merged together with a later snapshot of the same post in one "
                                        "window: one merge and one prediction for them all", registry=r)
        self.sequence_merges = Counter("popscore_sequence_merges", "Snapshot merges into Redis sequences, by outcome",
                                       ["outcome"], registry=r)
        self.post_metadata = Counter("popscore_post_metadata", "Where a merge took each post's metadata from: "
                                     "the worker's cache or Redis", ["source"], registry=r)
        self.counter_decreases = Counter("popscore_engagement_decreases",
                                         "Counter decreases seen in merged sequences (kept, not hidden)", registry=r)
        self.batch_size = Histogram("popscore_micro_batch_records", "Records per micro-batch", ["topic"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.redis_seconds = Histogram("popscore_redis_seconds", "Time of one pipelined Redis round trip",
                                       ["operation"], buckets=LATENCY_BUCKETS, registry=r)
        self.replica_wait_seconds = Histogram(
            "popscore_redis_replica_wait_seconds", "Time of one confirmation of writes by the written primaries' "
            "replicas (redis.replica_acks: a marker write and WAIT on each primary, concurrently)",
            buckets=LATENCY_BUCKETS, registry=r)
        self.replica_wait_failures = Counter(
            "popscore_redis_replica_wait_failures", "Confirmations in which a primary had fewer replicas than "
            "redis.replica_acks confirm within replica_ack_timeout_ms (the batch fails, transient)", registry=r)
        self.inference_seconds = Histogram("popscore_inference_seconds", "Time of one batched model inference",
                                           ["model", "platform", "model_version", "served_by"],
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.inference_batch = Histogram("popscore_inference_batch_rows", "Rows per inference call", ["model"],
                                         buckets=BATCH_BUCKETS, registry=r)
        self.end_to_end_seconds = Histogram("popscore_end_to_end_seconds",
                                            "From the input record's Kafka timestamp to its prediction being produced",
                                            ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.predictions = Counter("popscore_predictions", "Predictions produced, by model, model set (platform, "
                                   "or 'fallback'), version and server ('baseline' for the fallback)",
                                   ["model", "platform", "model_version", "served_by"], registry=r)
        self.flagged_predictions = Counter("popscore_flagged_predictions", "Published predictions carrying a flag "
                                           "(fallback, out_of_range, without_post), by kind, model set (or "
                                           "'fallback') and flag", ["kind", "platform", "flag"], registry=r)
        self.fallback_predictions = Counter("popscore_fallback_predictions", "Predictions a model set did not "
                                            "make, by kind, platform and reason (no_model, not_servable, "
                                            "non_finite): temporal ones were published as the persistence "
                                            "baseline, static ones not at all", ["kind", "platform", "reason"],
                                            registry=r)
        self.model_set_servable = Gauge("popscore_model_set_servable", "1 while the platform's model set in the "
                                        "repository is served, 0 while it is not servable (the worker log and "
                                        "/readyz say why) and its platform gets the fallback", ["platform"],
                                        registry=r)
        self.media_posts = Counter("popscore_media_posts", "Posts scored with the visual modality, by what they "
                                   "carried ('image' or 'video' frames)", ["kind"], registry=r)
        self.media_rejected = Counter("popscore_media_rejected", "Posts whose picture or frames could not be used "
                                      "(scored without the visual modality, flag media_rejected), by reason "
                                      "(popscore.media.REASONS)", ["reason"], registry=r)
        self.media_retries_scheduled = Counter("popscore_media_retries_scheduled", "Posts whose picture was "
                                               "unavailable (the object store failed) at upload, scheduled to have "
                                               "it read again (media.retry_after_s)", registry=r)
        self.media_retries = Counter("popscore_media_retries", "Retries of a post's unavailable picture, by outcome: "
                                     "recovered (read: the post's predictions recomputed and published again), "
                                     "unavailable (again: another retry scheduled), given_up (unavailable at the "
                                     "last of media.retry_attempts: the post stays without), rejected (a permanent "
                                     "problem now: no more retries)", ["outcome"], registry=r)
        self.media_retries_pending = Gauge("popscore_media_retries_pending", "Posts scheduled for another read of "
                                           "their picture, in every shard", registry=r)
        self.content_vectors = Counter("popscore_content_vectors",
                                       "Content vectors computed: at upload ('post'), for a post whose cached "
                                       "vector was missing or of another model version ('recomputed'), or when a "
                                       "post's unavailable picture was read at a retry ('media_retry')",
                                       ["source"], registry=r)
        self.predicted_log_score = Histogram("popscore_predicted_log_score",
                                             "Distribution of predicted log1p(score at horizon)",
                                             ["model", "platform"], buckets=LOG_SCORE_BUCKETS, registry=r)
        self.model_info = Gauge("popscore_model_info", "The model version being served (value 1)",
                                ["model", "platform", "model_version"], registry=r)
        self.triton_up = Gauge("popscore_triton_up", "1 while Triton has this model's served version loaded (checked at "
                               "every refresh) and the worker's circuit to it is closed; 0 while its calls go to the "
                               "local ONNX Runtime. Every model the worker uses, the text encoder too "
                               "(platform=\"all\")",
                               ["model", "platform"], registry=r)
        self.model_reloads = Counter("popscore_model_reloads", "Model version loads, by outcome",
                                     ["model", "platform", "outcome"], registry=r)
        self.consumer_lag = Gauge("popscore_consumer_lag_records", "High watermark minus position, by partition",
                                  ["topic", "partition"], registry=r)
        self.tracked_posts = Gauge("popscore_tracked_posts", "Posts with a live sequence in Redis", registry=r)
        self.redis_used_memory = Gauge("popscore_redis_used_memory_bytes", "Redis INFO memory used_memory (a "
                                       "cluster's: its fullest primary's)",
                                       registry=r)
        self.redis_maxmemory = Gauge("popscore_redis_maxmemory_bytes", "Redis INFO memory maxmemory (0: unbounded); "
                                     "past it every write fails (noeviction)", registry=r)
        self.in_flight = Gauge("popscore_in_flight_batches", "Snapshot micro-batches being processed", registry=r)
        self.online_mae = Gauge("popscore_online_mae", "Live MAE of log1p predictions whose horizon has passed",
                                ["model", "platform", "model_version", "age_h"], registry=r)
        self.online_srcc = Gauge("popscore_online_srcc", "Live Spearman correlation of predictions whose horizon "
                                 "has passed", ["model", "platform", "model_version", "age_h"], registry=r)
        self.online_evaluated = Counter("popscore_online_evaluated_predictions",
                                        "Predictions compared with the realised score at the horizon",
                                        ["model", "platform", "model_version", "age_h"], registry=r)
        self.offline_mae = Gauge("popscore_offline_mae", "The trainer's validation MAE for this version and age",
                                 ["model", "platform", "model_version", "age_h"], registry=r)

    def initialise_series(self, topics: TopicSettings, merge_outcomes: Iterable[str],
                          media_retry_outcomes: Iterable[str] = ()) -> None:
        """Create the labelled counters at zero for every label value known at start. A series that first
        appears at its first increment has no earlier sample, so rate() and increase() miss that increment
        and an alert on it (dead letters, failed batches) cannot fire for the first occurrence."""
        inputs, outputs = (topics.posts, topics.snapshots), (topics.predictions, topics.deadletter)
        for topic in inputs:
            self.records_in.labels(topic)
            self.agent_crashes.labels(topic)
            for reason in RejectReason:
                self.dead_letters.labels(topic, reason.value)
            for kind in ("transient", "error"):
                self.batch_failures.labels(topic, kind)
        for topic in outputs:
            self.records_out.labels(topic)
        for outcome in merge_outcomes:
            self.sequence_merges.labels(outcome)
        for source in ("cache", "redis"):
            self.post_metadata.labels(source)
        for source in ("post", "recomputed", "media_retry"):
            self.content_vectors.labels(source)
        for outcome in media_retry_outcomes:
            self.media_retries.labels(outcome)

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
