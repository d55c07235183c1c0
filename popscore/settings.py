"""The one typed settings object of popscore.

Every tunable lives here and is read from the environment (prefix ``POPSCORE_``, nested fields joined
with ``__``, e.g. ``POPSCORE_KAFKA__BOOTSTRAP_SERVERS``) or set by the CLI; nothing else reads env vars.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

COUNTER_NAMES: tuple[str, ...] = ("views", "likes", "comments", "shares", "favorites")
"""The counters kept in a post's sequence, in storage order. Other counters are validated, not stored."""
RECORD_BYTES = 4 + 8 * len(COUNTER_NAMES)
"""A stored observation: observed_at (uint32), one float64 per counter (stream/redis_schema.py's RECORD)."""
SEQUENCE_KEY_BYTES = 352
"""Redis's own cost of one sequence key beyond its value (docs/benchmarks.md's bytes per post, less the value)."""
PLATFORM_NAME = re.compile(r"[a-z][a-z0-9]{0,31}")
"""The platform of a model set (``popscore_<platform>_<kind>``): lower-case letters and digits."""
S3_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
"""A bucket of ``media.s3_buckets``: S3's naming rules, widened to GCS's (underscores, up to 222 characters)."""


class TopicSettings(BaseModel):
    posts: str = Field("posts", description="input topic of post.v1 records")
    snapshots: str = Field("snapshots", description="input topic of snapshot.v1 records and snapshot-batch.v1 "
                           "envelopes")
    predictions: str = Field("predictions", description="output topic: one prediction.v1 record per prediction")
    deadletter: str = Field("deadletter", description="output topic: one deadletter.v1 record per rejected input "
                            "(original bytes and reason)")
    partitions: int = Field(4, ge=1, le=1024, description="partitions of the topics the embedded stack (and "
                            "docker-compose's kafka-init) creates, 1-1024: the most worker replicas that get work, "
                            "and the Redis shards; a worker refuses to start on input topics with another count")


class KafkaSettings(BaseModel):
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers (host:port, "
                                   "comma-separated)")
    producer_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "zstd", description="codec of the record batches the worker produces (predictions, dead letters); "
        "consumers decompress without being told. zstd: prediction records are repetitive JSON, so the broker "
        "carries a fraction of their bytes for a few microseconds of the worker's CPU per record "
        "(docs/benchmarks.md, 'Producer compression')")
    topics: TopicSettings = TopicSettings()


class RedisSettings(BaseModel):
    url: str = Field("redis://127.0.0.1:6379/0", description="Redis holding the sequences, post metadata and "
                     "leaderboards (redis:// URL)")
    mode: Literal["single", "cluster"] = Field(
        "single", description="`single`: one Redis (or a primary with replicas behind one address); `cluster`: a "
        "Redis Cluster, `url` naming any of its nodes (the client discovers the others and follows MOVED/ASK). "
        "The key layout is the same in both (stream/redis_schema.py: a hash tag per shard)")
    key_prefix: str = Field("ps:", pattern=r"^[^{}]*$", description="prefix of every Redis key popscore writes "
                            "(no braces: the hash tag after it is the shard's)")
    socket_timeout_s: float = Field(5.0, gt=0, description="seconds; a Redis reply slower than this fails the batch "
                                    "(which is retried), so a paused or partitioned Redis cannot hang the worker")
    replica_acks: int = Field(0, ge=0, description="replicas of each primary a batch wrote to that must confirm "
                              "its writes (WAIT) before its outputs are published and its offsets acknowledged; "
                              "fewer within replica_ack_timeout_ms fail the batch as a transient failure (retried "
                              "whole). 0: off (a Redis without replicas). The embedded stack sets 1 for a cluster "
                              "with replicas unless this is given (docs/deployment.md, 'Redis replicas')")
    replica_ack_timeout_ms: int = Field(1_000, ge=1, description="milliseconds a primary waits for replica_acks "
                                        "confirmations (WAIT's timeout); less than socket_timeout_s, whose read "
                                        "would otherwise fail first")
    capacity_posts: int = Field(100_000, ge=1, description="live posts (sequence not yet expired) Redis's memory "
                                "budget is sized for: maxmemory = capacity_posts x bytes per post x "
                                "memory_headroom + memory_base_bytes (docs/deployment.md, 'Redis memory')")
    observations_per_post: int = Field(336, ge=1, description="observations a post's sequence reaches within "
                                       "score.horizon_s, for the budget (336: one every 30 min for 7 days)")
    post_extra_bytes: int = Field(2_560, ge=0, description="bytes per post besides its sequence, for the budget: "
                                  "the post hash (metadata, content vector, latest predictions, kept evaluation "
                                  "fields) and its entry in the maturity set")
    append_room: float = Field(0.95, ge=0, description="room Redis keeps in a sequence grown by APPEND, as a share "
                               "of its bytes, for the budget: Redis doubles an outgrown string's allocation "
                               "(docs/deployment.md, 'Redis memory', says how 0.95 was measured)")
    memory_headroom: float = Field(1.25, ge=1, description="factor over the estimated data for allocator "
                                   "fragmentation and the append-only file's rewrite buffer")
    memory_base_bytes: int = Field(64 * 1024 ** 2, ge=0, description="bytes Redis needs with no post: its own "
                                   "use, the leaderboards, client buffers")
    maxmemory_bytes: int | None = Field(None, ge=1024 ** 2, description="Redis's maxmemory, overriding the budget "
                                        "derived from capacity_posts (the embedded stack sets it; compose's redis "
                                        "command line must match it)")

    @model_validator(mode="after")
    def _wait_ends_before_the_socket_timeout(self) -> "RedisSettings":
        if self.replica_ack_timeout_ms >= self.socket_timeout_s * 1000:
            raise ValueError(f"replica_ack_timeout_ms ({self.replica_ack_timeout_ms}) must be less than "
                             f"socket_timeout_s ({self.socket_timeout_s:g} s): the client would give up on WAIT first")
        return self

    def sequence_bytes(self) -> int:
        """A full sequence key: the per-key cost (key name, TTL entry, allocation) measured with 24 observations
        (docs/benchmarks.md: 1,409 B = 352 B + 1 + 24 x 44 B), then 44 B a record."""
        return SEQUENCE_KEY_BYTES + 1 + RECORD_BYTES * self.observations_per_post

    def memory_budget_bytes(self) -> int:
        """The ``maxmemory`` Redis runs with: what ``capacity_posts`` live posts need, unless set outright."""
        if self.maxmemory_bytes is not None:
            return self.maxmemory_bytes
        per_post = self.sequence_bytes() + self.append_room_bytes() + self.post_extra_bytes
        return int(self.capacity_posts * per_post * self.memory_headroom) + self.memory_base_bytes

    def append_room_bytes(self) -> int:
        return round(self.sequence_bytes() * self.append_room)


class TritonSettings(BaseModel):
    http_url: str = Field("127.0.0.1:8000", description="Triton's HTTP endpoint (host:port): health checks and "
                          "tools; the worker talks gRPC")
    grpc_url: str = Field("127.0.0.1:8001", description="Triton's gRPC endpoint (host:port): the worker's inference "
                          "and model-control calls")


class ServingSettings(BaseModel):
    """How the worker calls Triton, and when it gives up and runs the same ONNX file itself."""

    # Not shorter: the chunks of a batch of titles (their token states are large) queue behind each other at a
    # Triton with one CPU instance, so a healthy embedded Triton can take over a second to answer the last one.
    # A missed deadline opens the circuit at once, so a frozen Triton costs one deadline per breaker_reset_s.
    timeout_s: float = Field(2.0, gt=0, description="seconds; deadline of one Triton request. Missing it opens the "
                             "circuit at once (no retry)")
    text_encoder: bool = Field(True, description="embed titles with model_repo's popscore_text_encoder when present")
    text_timeout_s: float = Field(60.0, gt=0, description="seconds; deadline of one text-encoder request (a "
                                  "transformer, far slower than the other models on a CPU)")
    retries: int = Field(1, ge=0, description="retries of a Triton request after a transient error (UNAVAILABLE: "
                         "unreachable, connection refused; RESOURCE_EXHAUSTED: its queue full); a bad request "
                         "(INVALID_ARGUMENT, NOT_FOUND, ...) and a missed deadline are not retried")
    backoff_s: float = Field(0.05, ge=0, description="seconds; the wait before retry n (from 1) is random "
                             "between 0 and backoff_s * 2**(n-1) (full jitter), at most max_backoff_s")
    max_backoff_s: float = Field(1.0, ge=0, description="seconds; longest wait before a retry of a Triton request")
    breaker_failures: int = Field(3, ge=1, description="failed requests in a row (after their retries) that "
                                  "open the circuit; one missed deadline opens it at once")
    breaker_reset_s: float = Field(5.0, gt=0, description="seconds the circuit stays open before a trial call")
    local_fallback: bool = Field(True, description="run the same ONNX file in ONNX Runtime inside the worker while "
                                 "Triton cannot answer")
    load_timeout_s: float = Field(60.0, gt=0, description="seconds Triton may take to load a new model version")
    refresh_interval_s: float = Field(10.0, gt=0, description="seconds between checks of the model repository for "
                                      "a promoted version or a new model set")
    python_backend_mirror: Path | None = Field(
        None, description="embedded stack only: the Python-backend mirror to refresh before a model load")
    platform_aliases: dict[str, str] = Field(
        {"hn": "hackernews", "hacker-news": "hackernews", "hacker_news": "hackernews", "ycombinator": "hackernews",
         "yt": "youtube"},
        description="other names of a platform that has a model set (JSON object: name -> the set's platform). "
                    "Names compare case-insensitively after stripping; a post's platform must still pass the "
                    "contract (lower-case letters, digits, '_' and '-')")
    unknown_platform: str = Field(
        "fallback", description="what scores posts of a platform without a model set of its own: 'fallback' "
                                "(no static prediction; temporal: persistence, flagged), or the platform of a "
                                "model set to use for them. A platform whose own set is not servable always "
                                "gets the fallback")

    @field_validator("platform_aliases")
    @classmethod
    def _aliases_name_model_sets(cls, aliases: dict[str, str]) -> dict[str, str]:
        normalised = {}
        for name, target in aliases.items():
            key, value = name.strip().lower(), target.strip().lower()
            if not key or not PLATFORM_NAME.fullmatch(value):
                raise ValueError(f"alias {name!r} -> {target!r}: the target must be a model set's platform "
                                 f"({PLATFORM_NAME.pattern})")
            normalised[key] = value
        return normalised

    @field_validator("unknown_platform")
    @classmethod
    def _unknown_platform_names_a_set(cls, value: str) -> str:
        value = value.strip().lower()
        if value != "fallback" and not PLATFORM_NAME.fullmatch(value):
            raise ValueError(f"unknown_platform must be 'fallback' or a model set's platform ({PLATFORM_NAME.pattern})")
        return value


class WorkerSettings(BaseModel):
    app_id: str = Field("popscore", description="Faust app id: the Kafka consumer group every worker replica joins")
    bind_host: str = Field("127.0.0.1", description="address of the web views and /metrics (0.0.0.0 in a container)")
    web_port: int = Field(6066, description="port of the web views (/healthz, /readyz, /leaderboard, /posts/{id})")
    metrics_port: int = Field(9464, description="port of the Prometheus /metrics endpoint")
    batch_size: int = Field(1000, ge=1, le=100_000, description="records in a micro-batch at most (1-100,000); a "
                            "batch goes to the agent when it is full or batch_within_s after its first record")
    gc_threshold: int = Field(100_000, ge=700, description="allocations between young-generation garbage "
                              "collections in the worker (Python's default: 700); a high value keeps the collector "
                              "from walking Faust's long-lived objects at every batch")
    batch_within_s: float = Field(0.004, gt=0, le=10, description="seconds a micro-batch waits to fill after its "
                                  "first record (at most 10). Under load batches fill while the previous one is "
                                  "handled, so a longer wait mostly delays paced single records")
    fetch_max_wait_ms: int = Field(20, ge=1, le=10_000, description="milliseconds (1-10,000) the broker may hold "
                                   "a consumer fetch that finds no data; Tansu holds every fetch this long, so it "
                                   "adds to latency at low rates (Faust's own value is 1500)")
    producer_batch_bytes: int = Field(512 * 1024, ge=1024, le=1_000_000, description="bytes; largest record batch "
                                      "the worker produces (1,024-1,000,000, under Kafka's 1 MB "
                                      "message.max.bytes). Fewer, larger batches cost the broker less, which "
                                      "pays per stored batch (Faust's own value is 16 KB)")
    leaderboard_size: int = Field(100, ge=1, le=10_000, description="entries kept per leaderboard (1-10,000)")
    board_poll_interval_s: float = Field(0.25, gt=0, le=5, description="seconds between a push feed's reads of "
                                         "its board or posts in Redis (at most 5): a change reaches a feed's "
                                         "subscribers within about this, from whichever worker they are connected to")
    board_max_posts: int = Field(500, ge=1, le=10_000, description="post ids one batch lookup (POST /predictions) "
                                 "or one prediction feed may name (1-10,000)")
    leaderboard_ttl_s: int = Field(7 * 24 * 3600, ge=60, description="seconds a leaderboard lives after its last "
                                   "write (refreshed by every write): a board of a platform or category that "
                                   "stopped posting goes")
    leaderboard_categories: list[str] = Field([], description="categories with a leaderboard of their own (JSON "
                                              "list); empty: the first max_category_boards categories seen, each "
                                              "until its board expires")
    max_category_boards: int = Field(100, ge=0, le=10_000, description="category leaderboards at most (0-10,000); "
                                     "a prediction of a category beyond them enters only the overall and platform "
                                     "boards")
    max_platform_boards: int = Field(100, ge=0, le=10_000, description="leaderboards of platforms the deployment "
                                     "does not know (no model set, alias or score weights) at most (0-10,000); "
                                     "predictions of further ones enter the board of platform 'other'")
    max_batch_snapshots: int = Field(4096, ge=1, description="snapshots merged and scored per step "
                                     "(a window is split into steps of about this size, a post's snapshots "
                                     "in one step)")
    window_snapshots: int = Field(500_000, ge=1, description="snapshots of a micro-batch grouped by post before "
                                  "they are merged: a post's snapshots in one window give one merge and one "
                                  "prediction. Bounds what a batch of envelopes holds (~120 B a snapshot)")
    lanes: int = Field(2, ge=1, le=64, description="windows of one micro-batch scored concurrently (1-64), split "
                       "by partition (a post stays in one lane, in order)")
    lane_min_snapshots: int = Field(512, ge=0, description="a micro-batch with fewer snapshots is scored in "
                                    "one lane: lanes overlap the round trips of big batches but only add round "
                                    "trips to small ones")
    stream_buffer_records: int = Field(4096, ge=1, description="records buffered per partition before "
                                       "consumption pauses (backpressure)")
    cached_posts: int = Field(200_000, ge=0, description="posts whose metadata (upload time, platform, category, "
                              "content vector; ~0.5 KB each) the worker keeps so merges need not read it back "
                              "from Redis (0: none)")
    post_ttl_refresh_s: int = Field(3600, ge=0, description="seconds; a cached post's hash gets its TTL refreshed "
                                    "by a merge "
                                    "at most this often (not at every merge), so it lives up to this much longer "
                                    "than its sequence")
    online_window: int = Field(5_000, ge=10, description="predictions per (model, version, age) in the "
                               "online-accuracy window")
    online_age_tolerance_h: float | None = Field(None, gt=0, description="a prediction made at age a counts for "
                                                 "evaluation age t when t <= a < t + this; default: one sequence "
                                                 "bin of the model's feature spec")
    post_grace_s: float = Field(10.0, ge=0, description="seconds snapshots of a post not seen yet wait for "
                                "it before they are scored without it (kept in Redis, ps:awaiting)")
    gauge_interval_s: float = Field(5.0, gt=0, description="seconds between refreshes of the lag and tracked-post "
                                    "gauges")
    awaiting_scan_s: float = Field(1.0, gt=0, description="seconds between scans for posts whose snapshots "
                                   "waited past post_grace_s; those are taken (leased) and scored without their post")
    awaiting_lease_s: float = Field(60.0, gt=0, description="seconds a worker holds a waiting post it took; a "
                                    "worker that dies meanwhile leaves it to be taken again after this")
    probe_interval_s: float = Field(1.0, gt=0, description="seconds between readiness probes of Redis and the broker")
    probe_timeout_s: float = Field(2.0, gt=0, description="seconds; a probe slower than this counts as unreachable")
    batch_attempts: int = Field(2, ge=1, description="tries of a batch failing with a non-transient error before "
                                "it is split to find the records that fail alone (dead-lettered)")
    outage_budget_s: float = Field(120.0, gt=0, description="seconds a batch is retried while Redis, the broker "
                                   "or Triton is unreachable; after that the worker exits (code 3) without "
                                   "committing it")
    retry_max_backoff_s: float = Field(5.0, gt=0, description="seconds; longest wait between retries of a failed "
                                       "batch")
    failpoints: str = Field("", description="fault tests only: kill the worker at named points "
                            "(stream/failpoints.py), e.g. after_merge=3")
    # Short defaults for the embedded broker: Tansu holds a group join for half the rebalance timeout, so short
    # timeouts make (re)joins quick. docker-compose.yml raises them for Apache Kafka (docs/deployment.md).
    rebalance_timeout_s: float = Field(6.0, gt=0, description="seconds; consumer-group rebalance timeout (Tansu holds "
                                       "a join for half of it)")
    session_timeout_s: float = Field(10.0, gt=0, description="seconds; a worker silent this long is dropped from "
                                     "the consumer group")
    heartbeat_interval_s: float = Field(1.0, gt=0, description="seconds between consumer-group heartbeats")

    @model_validator(mode="after")
    def _allow_list_within_the_bound(self) -> "WorkerSettings":
        if len(self.leaderboard_categories) > self.max_category_boards:
            raise ValueError(f"leaderboard_categories names {len(self.leaderboard_categories)} categories, more "
                             f"than max_category_boards ({self.max_category_boards})")
        return self


class LimitSettings(BaseModel):
    """Operational caps at the input boundary. Field-level caps (id, text and list lengths) are part of
    the public contract and live in ``popscore.contract`` so the JSON Schemas publish them."""

    max_record_bytes: int = Field(1_048_576, ge=1_024, description="bytes; a larger input record is rejected "
                                  "(dead letter, reason too_large)")
    max_future_skew_s: int = Field(24 * 3600, ge=0, description="seconds; a timestamp further ahead of now is "
                                   "rejected (dead letter, reason invalid)")
    deadletter_original_bytes: int = Field(262_144, ge=0, le=327_680, description="bytes (at most "
                                           "327,680) of a rejected record's value (and of its key) kept in its "
                                           "dead letter; longer ones are cut and flagged. Base64 makes them a "
                                           "third larger: the cap keeps a dead letter under the producer's 1 MB "
                                           "request size")


class MediaSettings(BaseModel):
    """Where the worker may read pictures from, and how much of one it decodes (``popscore/media.py``). A
    picture outside these bounds costs its post the visual modality (flag ``media_rejected``), never the post."""

    roots: list[str] = Field([], description="allow-listed local directories (JSON list of paths): a file:// "
                             "reference (image_uris, frames) is read only if it resolves, symlinks followed, under "
                             "one of them; other references are rejected as disallowed")
    s3_buckets: list[str] = Field([], description="allow-listed object-store buckets (JSON list of `bucket` or "
                                  "`bucket/key-prefix`; end a prefix with / to confine reads to a folder): an "
                                  "s3://bucket/key reference is read from the S3-compatible store only if its bucket "
                                  "is listed and its key starts with the listed prefix; empty: s3:// references are "
                                  "rejected as disallowed. Credentials come from the standard AWS chain "
                                  "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance role). Needs "
                                  "the s3 extra (boto3)")
    s3_endpoint_url: str | None = Field(None, description="the S3-compatible endpoint (MinIO, Ceph RGW, SeaweedFS, "
                                        "https://storage.googleapis.com for GCS's interoperability API, ...); "
                                        "unset: AWS S3 (the region's endpoint)")
    s3_region: str | None = Field(None, description="the store's region (signing); unset: the AWS chain's "
                                  "(AWS_REGION, the profile's)")
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="how a bucket is addressed: `path` (endpoint/bucket/key; what MinIO, Ceph RGW and "
        "SeaweedFS behind a plain host name need), `virtual` (bucket.endpoint/key) or `auto` (botocore's choice)")
    s3_connect_timeout_s: float = Field(1.0, gt=0, le=30, description="seconds to connect to the object store")
    s3_read_timeout_s: float = Field(2.0, gt=0, le=60, description="seconds a read from the object store may take: "
                                     "botocore's socket read timeout, and the most the picture's download may take")
    s3_attempts: int = Field(2, ge=1, le=5, description="tries of one read (botocore's standard retry mode: "
                             "connection errors, timeouts, throttling and 5xx are retried with jittered backoff); "
                             "a read that still fails costs the post its picture (reason unavailable)")
    s3_outage_cooldown_s: float = Field(30.0, ge=0, description="seconds after a read failed for the store's sake "
                                        "(unreachable, timed out, 5xx) during which s3:// references are rejected "
                                        "as unavailable without a request, so an outage costs the worker one "
                                        "bounded wait per cool-down, not one per post; 0: every reference tries")
    retry_attempts: int = Field(5, ge=0, le=20, description="times (0-20) a post whose picture was unavailable "
                                "(the store failed, not the picture) has it read again, after its first scoring "
                                "without it; when a read succeeds its static prediction, content vector and "
                                "temporal prediction are recomputed and published again (explanation.media_retry); "
                                "after the last one it stays without (popscore_media_retries_total"
                                "{outcome=\"given_up\"}). 0: never read again")
    retry_after_s: float = Field(60.0, gt=0, description="seconds from the failed read to the first retry; each "
                                 "later one waits retry_backoff times longer. Best above s3_outage_cooldown_s: a "
                                 "retry during the cool-down fails at once (and counts)")
    retry_backoff: float = Field(2.0, ge=1, le=10, description="factor (1-10) between the waits before "
                                 "successive retries of a post's picture")
    retry_scan_s: float = Field(1.0, gt=0, description="seconds between a worker's scans for posts due for a "
                                "picture retry (of the partitions it holds; kept in Redis, ps:{<shard>}:media_retry)")
    retry_lease_s: float = Field(120.0, gt=0, description="seconds a worker holds the posts of a retry it took; "
                                 "one that dies meanwhile leaves them to be taken again after this")
    max_image_bytes: int = Field(524_288, ge=1_024, description="bytes; a larger picture (inline after base64 "
                                 "decoding, or a referenced file) is rejected as oversized without being decoded")
    max_image_pixels: int = Field(16_000_000, ge=1, description="pixels (width x height, read from the header "
                                  "before decoding); a larger picture is rejected as oversized")
    thumbnail_px: int = Field(224, ge=32, le=1024, description="pixels; longest side of the thumbnail kept in Redis "
                              "for the heat map of an image post")
    thumbnail_ttl_s: int = Field(7 * 24 * 3600, ge=60, description="seconds the heat map's thumbnail of a post is "
                                 "kept in Redis")
    heatmap_grid: int = Field(6, ge=2, le=16, description="occlusion cells per side of the heat map: grid^2 + 1 "
                              "pictures are encoded and scored per heat map")

    @field_validator("s3_buckets")
    @classmethod
    def _bucket_entries(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            if not S3_BUCKET_NAME.fullmatch(entry.partition("/")[0]):
                raise ValueError(f"{entry!r} is not `bucket` or `bucket/key-prefix` (bucket: 3-222 characters "
                                 f"of lower-case letters, digits, '.', '-', '_')")
        return entries

    def s3_allow_list(self) -> list[tuple[str, str]]:
        """(bucket, key prefix; '' for the whole bucket) of every ``s3_buckets`` entry."""
        return [(bucket, prefix) for bucket, _, prefix in (entry.partition("/") for entry in self.s3_buckets)]


class ScoreSettings(BaseModel):
    """Popularity score = weighted sum of counters; the MTAF paper's weights are the default."""

    default_weights: dict[str, float] = Field(
        {"favorites": 0.2, "comments": 0.3, "shares": 0.5},
        description="counter weights of the popularity score of a platform without its own (JSON object: counter "
                    "-> weight)")
    platform_weights: dict[str, dict[str, float]] = Field(
        {
            "hackernews": {"likes": 1.0},
            "reddit": {"likes": 1.0},
            "youtube": {"views": 1.0},
        },
        description="counter weights of the popularity score per platform (JSON object: platform -> {counter: "
                    "weight})")
    horizon_s: int = Field(7 * 24 * 3600, description="seconds; the fallback's prediction horizon, and how long a "
                           "post's sequence lives in Redis after its last update")

    def weights_for(self, platform: str) -> dict[str, float]:
        return self.platform_weights.get(platform, self.default_weights)


class StackSettings(BaseModel):
    """The embedded stack started by ``popscore up``."""

    run_dir: Path = Field(Path(".popscore/run"), description="directory of the embedded stack's logs, state "
                          "(stack.json), generated Triton repository and Redis data")
    model_repo: Path = Field(Path("model_repo"), description="the Triton model repository: what the embedded "
                             "stack serves, and where the worker looks for model sets and new versions")
    host: str = Field("127.0.0.1", description="address the embedded stack's components listen on (the "
                      "embedded stack only; a worker listens on POPSCORE_WORKER__BIND_HOST)")
    backend: Literal["embedded", "containers", "auto"] = Field(
        "auto", description="the stack the test fixtures start: `embedded` (local processes: Tansu, redis-server, "
        "the bundled tritonserver), `containers` (the images docker-compose.yml runs, through testcontainers; "
        "needs a Docker engine), `auto` (containers where a Docker engine answers, embedded otherwise). "
        "`popscore up` always starts the embedded stack")
    redis_cluster_masters: int = Field(3, ge=3, le=16, description="with redis.mode `cluster`: the embedded "
                                       "stack's Redis Cluster masters (redis-server processes on loopback joined by "
                                       "`redis-cli --cluster create`; Redis Cluster needs at least 3)")
    redis_cluster_replicas: int = Field(0, ge=0, le=2, description="with redis.mode `cluster`: replicas per master "
                                        "in the embedded stack's Redis Cluster (1 or more to try a failover)")
    start_timeout_s: float = Field(120.0, description="seconds a component of the embedded stack may take to "
                                   "become healthy")
    stop_timeout_s: float = Field(20.0, description="seconds a component gets to stop before it is killed")
    workers: int = Field(1, ge=1, le=16, description="worker processes in one consumer group (1-16): the "
                         "partitions are shared out between them; the first serves the stack's web and metrics "
                         "ports, the others free ones. One worker is one Python thread, so a sustained load may "
                         "need two on a small machine (docs/benchmarks.md)")


class Settings(BaseSettings):
    # An empty variable is an unset one: settings_reference lists unset optional settings with an empty value,
    # and the embedded stack hands that list to its workers as their environment.
    model_config = SettingsConfigDict(env_prefix="POPSCORE_", env_nested_delimiter="__", extra="forbid",
                                      env_ignore_empty=True)

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    triton: TritonSettings = TritonSettings()
    serving: ServingSettings = ServingSettings()
    worker: WorkerSettings = WorkerSettings()
    limits: LimitSettings = LimitSettings()
    media: MediaSettings = MediaSettings()
    score: ScoreSettings = ScoreSettings()
    stack: StackSettings = StackSettings()


def settings_reference(model: BaseModel, prefix: str = "POPSCORE_") -> list[tuple[str, str, str]]:
    """(environment variable, current value, description) for every setting, nested ones flattened."""
    rows = []
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        env = f"{prefix}{name.upper()}"
        if isinstance(value, BaseModel):
            rows += settings_reference(value, f"{env}__")
        else:  # an unset optional setting is listed with an empty value: its default is described
            shown = "" if value is None else value if isinstance(value, (str, int, float, Path)) else json.dumps(value)
            rows.append((env, str(shown), info.description or ""))
    return rows
