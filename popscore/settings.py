"""The one typed settings object of popscore.

Every tunable lives here and is read from the environment (prefix ``POPSCORE_``, nested fields joined
with ``__``, e.g. ``POPSCORE_KAFKA__BOOTSTRAP_SERVERS``) or set by the CLI; nothing else reads env vars.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

COUNTER_NAMES: tuple[str, ...] = ("views", "likes", "comments", "shares", "favorites")
"""The counters kept in a post's sequence, in storage order. Other counters are validated, not stored."""
PLATFORM_NAME = re.compile(r"[a-z][a-z0-9]{0,31}")
"""The platform of a model set (``popscore_<platform>_<kind>``): lower-case letters and digits."""


class TopicSettings(BaseModel):
    posts: str = "posts"
    snapshots: str = "snapshots"
    predictions: str = "predictions"
    deadletter: str = "deadletter"
    partitions: int = Field(4, ge=1, le=1024)


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    topics: TopicSettings = TopicSettings()


class RedisSettings(BaseModel):
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "ps:"
    socket_timeout_s: float = Field(5.0, gt=0, description="a Redis reply slower than this fails the batch (which "
                                    "is retried): a paused or partitioned Redis must not hang the worker")


class TritonSettings(BaseModel):
    http_url: str = "127.0.0.1:8000"
    grpc_url: str = "127.0.0.1:8001"


class ServingSettings(BaseModel):
    """How the worker calls Triton, and when it gives up and runs the same ONNX file itself."""

    # Not shorter: the static model's full chunk carries 1024 titles' token states (32 x 384 floats each,
    # ~50 MB), and the chunks of a batch queue behind each other at a Triton with one CPU instance, so a
    # healthy embedded Triton can take over a second to answer the last of them. A missed deadline opens
    # the circuit at once, so a frozen Triton costs one deadline per breaker_reset_s, not per batch.
    timeout_s: float = Field(2.0, gt=0, description="deadline of one Triton request; missing it opens the "
                             "circuit at once (no retry)")
    text_encoder: bool = Field(True, description="embed titles with model_repo's popscore_text_encoder when present")
    text_timeout_s: float = Field(60.0, gt=0, description="deadline of one text-encoder request (a transformer "
                                  "on the CPU: about 60 titles/s on 2 cores)")
    retries: int = Field(1, ge=0, description="retries of a Triton request after a quick error (UNAVAILABLE, "
                         "connection refused); a missed deadline is not retried")
    backoff_s: float = Field(0.05, ge=0, description="first retry delay; doubles per retry")
    breaker_failures: int = Field(3, ge=1, description="failed requests in a row (after their retries) that "
                                  "open the circuit; one missed deadline opens it at once")
    breaker_reset_s: float = Field(5.0, gt=0, description="how long the circuit stays open before a trial call")
    local_fallback: bool = Field(True, description="run ONNX Runtime locally when Triton cannot answer")
    load_timeout_s: float = Field(60.0, gt=0, description="time allowed for Triton to load a new version")
    refresh_interval_s: float = Field(10.0, gt=0, description="how often the model repository is checked")
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
    app_id: str = "popscore"
    bind_host: str = Field("127.0.0.1", description="address of the web views and /metrics (0.0.0.0 in a container)")
    web_port: int = 6066
    metrics_port: int = 9464
    batch_size: int = Field(1000, ge=1, le=100_000)
    gc_threshold: int = Field(100_000, ge=700, description="allocations between young-generation garbage "
                              "collections; Python's 700 made decoding a batch 3x slower in the worker")
    batch_within_s: float = Field(0.004, gt=0, le=10, description="how long a micro-batch waits to fill after "
                                  "its first record; under load batches fill first, while the previous one is "
                                  "handled. Paced single records arrive in fetches ~20 ms apart, so waiting longer "
                                  "mostly delays them: p50 44/41 ms with 0.004 against 54/49 ms with 0.01")
    fetch_max_wait_ms: int = Field(20, ge=1, le=10_000, description="consumer fetch wait; Tansu holds every "
                                   "fetch this long (Faust's own value is 1500)")
    producer_batch_bytes: int = Field(512 * 1024, ge=1024, le=1_000_000, description="largest record batch "
                                      "the worker produces (under Kafka's 1 MB message.max.bytes). Faust's 16 KB "
                                      "put ~35 predictions in a batch, and Tansu pays per stored batch: broker CPU "
                                      "per snapshot at 20,000/s fell from 21 to 7 us")
    leaderboard_size: int = Field(100, ge=1, le=10_000)
    max_batch_snapshots: int = Field(4096, ge=1, description="snapshots merged and scored per step "
                                     "(a window is split into steps of about this size, a post's snapshots "
                                     "in one step)")
    window_snapshots: int = Field(500_000, ge=1, description="snapshots of a micro-batch grouped by post before "
                                  "they are merged: a post's snapshots in one window give one merge and one "
                                  "prediction. Bounds what a batch of envelopes holds (~120 B a snapshot)")
    lanes: int = Field(2, ge=1, le=64, description="windows of one micro-batch scored concurrently, split by "
                       "partition (a post stays in one lane, in order)")
    lane_min_snapshots: int = Field(512, ge=0, description="a micro-batch with fewer snapshots is scored in "
                                    "one lane: lanes overlap the round trips of big batches and only add round "
                                    "trips to small ones (paced single records: worker CPU -8 %, p50 -4 to -9 ms)")
    stream_buffer_records: int = Field(4096, ge=1, description="records buffered per partition before "
                                       "consumption pauses (backpressure)")
    cached_posts: int = Field(200_000, ge=0, description="posts whose metadata (upload time, platform, category, "
                              "content vector; ~0.5 KB each) the worker keeps so merges need not read it back "
                              "from Redis (0: none)")
    post_ttl_refresh_s: int = Field(3600, ge=0, description="a cached post's hash gets its TTL refreshed by a merge "
                                    "at most this often (not at every merge), so it lives up to this much longer "
                                    "than its sequence")
    online_window: int = Field(5_000, ge=10, description="predictions per (model, version, age) in the "
                               "online-accuracy window")
    online_age_tolerance_h: float | None = Field(None, gt=0, description="a prediction made at age a counts for "
                                                 "evaluation age t when t <= a < t + this; default: one sequence "
                                                 "bin of the model's feature spec")
    post_grace_s: float = Field(10.0, ge=0, description="how long snapshots of a post not seen yet wait for "
                                "it before they are scored without it (kept in Redis, ps:awaiting)")
    gauge_interval_s: float = Field(5.0, gt=0, description="refresh interval of lag and tracked-post gauges")
    awaiting_scan_s: float = Field(1.0, gt=0, description="how often posts whose snapshots waited past "
                                   "post_grace_s are taken (leased) and scored without their post")
    awaiting_lease_s: float = Field(60.0, gt=0, description="how long a worker holds a waiting post it took; a "
                                    "worker that dies meanwhile leaves it to be taken again after this")
    probe_interval_s: float = Field(1.0, gt=0, description="how often readiness probes Redis and the broker")
    probe_timeout_s: float = Field(2.0, gt=0, description="a probe slower than this counts as unreachable")
    batch_attempts: int = Field(2, ge=1, description="tries of a batch failing with a non-transient error before "
                                "it is split to find the records that fail alone (dead-lettered)")
    outage_budget_s: float = Field(120.0, gt=0, description="how long a batch is retried while Redis, the broker "
                                   "or Triton is unreachable; after that the worker exits (code 3) without "
                                   "committing it")
    retry_max_backoff_s: float = Field(5.0, gt=0, description="longest wait between retries of a failed batch")
    failpoints: str = Field("", description="fault tests only: kill the worker at named points "
                            "(stream/failpoints.py), e.g. after_merge=3")
    # Tansu holds a group join for half the rebalance timeout; short timeouts make (re)joins quick.
    rebalance_timeout_s: float = Field(6.0, gt=0)
    session_timeout_s: float = Field(10.0, gt=0)
    heartbeat_interval_s: float = Field(1.0, gt=0)


class LimitSettings(BaseModel):
    """Operational caps at the input boundary. Field-level caps (id, text and list lengths) are part of
    the public contract and live in ``popscore.contract`` so the JSON Schemas publish them."""

    max_record_bytes: int = Field(1_048_576, ge=1_024)
    max_future_skew_s: int = Field(24 * 3600, ge=0)
    deadletter_original_bytes: int = Field(262_144, ge=0, le=327_680, description="bytes of a rejected "
                                           "record's value (and of its key) kept in its dead letter; longer "
                                           "ones are cut and flagged. Base64 makes them a third larger: the cap "
                                           "keeps a dead letter under the producer's 1 MB request size")


class ScoreSettings(BaseModel):
    """Popularity score = weighted sum of counters; the MTAF paper's weights are the default."""

    default_weights: dict[str, float] = {"favorites": 0.2, "comments": 0.3, "shares": 0.5}
    platform_weights: dict[str, dict[str, float]] = {
        "hackernews": {"likes": 1.0},
        "reddit": {"likes": 1.0},
        "youtube": {"views": 1.0},
    }
    horizon_s: int = 7 * 24 * 3600

    def weights_for(self, platform: str) -> dict[str, float]:
        return self.platform_weights.get(platform, self.default_weights)


class StackSettings(BaseModel):
    """The embedded stack started by ``popscore up``."""

    run_dir: Path = Path(".popscore/run")
    model_repo: Path = Path("model_repo")
    host: str = "127.0.0.1"
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 20.0
    workers: int = Field(1, ge=1, le=16, description="worker processes in one consumer group: the partitions "
                         "are shared out between them. One worker is one Python thread, busy the whole time at "
                         "~18,000-19,500 envelope snapshots/s here; two reached 19,500-20,000/s (the first "
                         "serves the stack's web and metrics ports, the others free ones)")


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
