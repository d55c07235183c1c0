"""``popscore bench``: throughput, latency and memory of the real pipeline on the embedded stack.

Everything runs on this machine at once (broker, Redis, Triton, worker and the load generator), so
absolute numbers are modest and noisy; each figure is printed beside the baseline measured in the same
run (the naive per-record pipeline, the naive Redis encoding), and ratios are what to compare.

Phases: warm-up (``live_posts`` posts, one snapshot each) -> snapshot-batch envelopes at full speed ->
one snapshot per record at full speed -> latency at half the record rate -> the naive pipeline ->
Redis bytes per post for ``memory_posts`` posts with ``memory_obs`` observations each -> image posts
(``image_posts`` posts with an inline picture: throughput and post -> static prediction latency through the served
image encoder and static model, against the naive one-request-per-picture baseline; ``popscore bench --images``
runs this phase alone). Before the stack starts and after it stops, the calibration workload (tools/calibration.py)
is timed, so CPU per snapshot is also reported in calibration rounds, which compare across machines.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import redis

from popscore.contract import Post
from popscore.settings import COUNTER_NAMES, Settings
from popscore.stream.redis_schema import CONTENT, RECORD, STATIC, RedisKeys, encode_post, encode_sequence
from popscore.tools.calibration import CALIBRATION_VERSION, calibrated, machine_info, time_calibration
from popscore.tools.record_codecs import LOADED_BATCH_RECORDS, codec_rows, measure_codecs
from popscore.tools.replay import batch_envelope, partition_for
from popscore.tools.stack.stack import EmbeddedStack

NAIVE_IN, NAIVE_OUT = "bench-naive-snapshots", "bench-naive-predictions"
NAIVE_IMAGES_IN, NAIVE_IMAGES_OUT = "bench-naive-image-posts", "bench-naive-image-predictions"
PACING_TICK_S = 0.001


@dataclass
class BenchConfig:
    live_posts: int = 100_000
    batch_seconds: float = 60.0
    batch_target_per_s: float = 20_000
    record_seconds: float = 30.0
    record_target_per_s: float = 5_000
    latency_seconds: float = 20.0
    naive_snapshots: int = 2_000
    memory_posts: int = 1_000_000
    memory_obs: int = 24
    envelope_snapshots: int = 1_000
    scale_out_workers: int = 2  # the sustained phase again with this many workers (1: not run)
    image_posts: int = 2_000  # posts with an inline picture in the image phase, and as many for its baseline


def iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).isoformat().replace("+00:00", "Z")


BENCH_PLATFORM = "hackernews"
"""The platform of the synthetic posts: the model set the repository ships, so every phase measures the
model path (a platform without a set would measure the fallback, which runs no model)."""


class Workload:
    """Synthetic live posts; round ``k`` gives every post its ``k``-th snapshot, one minute apart."""

    def __init__(self, n_posts: int) -> None:
        self.n_posts = n_posts
        self.t0 = int(time.time()) - 6 * 3600  # whole seconds: sequences store observed_at in seconds
        self.ids = [f"bench-{i:07d}" for i in range(n_posts)]

    def post(self, i: int) -> bytes:
        return json.dumps({"schema": "post.v1", "post_id": self.ids[i], "platform": BENCH_PLATFORM,
                           "created_at": iso(self.t0), "author": {"id": f"author{i % 977}"},
                           "text": {"title": f"bench post {i}"}}).encode()

    def round_time(self, k: int) -> str:
        return iso(self.t0 + 60 * (k + 1))

    def snapshot(self, i: int, k: int) -> bytes:
        likes = (k + 1) * (1 + i % 50)
        return (f'{{"schema":"snapshot.v1","post_id":"{self.ids[i]}","observed_at":"{self.round_time(k)}",'
                f'"counts":{{"likes":{likes},"comments":{likes // 4}}}}}').encode()


async def _producer(bootstrap: str):
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=512 * 1024,
                                max_request_size=2 * 1024 * 1024)
    await producer.start()
    return producer


async def _produce_all(bootstrap: str, topic: str, records: list[tuple[bytes, bytes, int | None]],
                       rate: float | None = None, sent_at: dict | None = None) -> None:
    producer = await _producer(bootstrap)
    try:
        started = time.monotonic()
        futures = []
        for n, (key, value, partition) in enumerate(records):
            if rate:
                wait = n / rate - (time.monotonic() - started)
                if wait > PACING_TICK_S:  # records due within a tick go together: a sleep each cost CPU
                    await asyncio.sleep(wait)
            if sent_at is not None:
                sent_at[key] = time.monotonic()
            futures.append(await producer.send(topic, key=key, value=value, partition=partition))
            if len(futures) >= 10_000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _count_until(bootstrap: str, topic: str, marker: bytes, expected: int, timeout_s: float,
                       on_message: Callable | None = None, fetch_max_wait_ms: int = 20) -> tuple[int, float, int]:
    """Consume ``topic`` from its end until records containing ``marker`` arrived under ``expected`` distinct keys
    (a batch retried after a transient failure publishes some predictions twice: at-least-once); returns (keys
    with the marker, monotonic time of the first record of the last of them, records seen)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="latest", group_id=None,
                                fetch_max_bytes=16 * 1024 * 1024, max_partition_fetch_bytes=8 * 1024 * 1024,
                                fetch_max_wait_ms=fetch_max_wait_ms)  # Tansu holds a fetch for the whole wait
    await consumer.start()
    await consumer.seek_to_end()
    seen, last = 0, time.monotonic()
    marked: set[bytes | None] = set()
    deadline = time.monotonic() + timeout_s
    ready = asyncio.get_running_loop().create_future()
    ready.set_result(None)
    try:
        while len(marked) < expected and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=200, max_records=20_000)).values():
                now = time.monotonic()
                for message in messages:
                    seen += 1
                    if on_message is not None:
                        on_message(message, now)
                    if marker in message.value and message.key not in marked:
                        marked.add(message.key)
                        last = now
    finally:
        await consumer.stop()
    return len(marked), last, seen


async def _through(bootstrap: str, settings: Settings, records, marker: bytes, expected: int, timeout_s: float,
                   topic: str | None = None, rate: float | None = None, on_message=None, sent_at=None):
    # The measuring consumer waits on a fetch as long as the worker does (a latency-minded reader's setting).
    counter = asyncio.create_task(_count_until(bootstrap, settings.kafka.topics.predictions, marker, expected,
                                               timeout_s, on_message, settings.worker.fetch_max_wait_ms))
    await asyncio.sleep(1.0)  # the counting consumer is at the end of the topic before anything is sent
    started = time.monotonic()
    await _produce_all(bootstrap, topic or settings.kafka.topics.snapshots, records, rate, sent_at)
    hits, last, seen = await counter
    return hits, last - started, seen


async def _sample_predictions(bootstrap: str, settings: Settings, replay_s: float = 5.0,
                              timeout_s: float = 120.0) -> list[tuple[bytes, bytes]]:
    """The predictions of the packaged sample (``popscore demo``'s simulated posts of every platform) replayed in
    ``replay_s``: records whose scores, intervals and attention vary as real ones do, unlike the bench's
    synthetic posts (50 distinct histories: their records repeat, and compress far better than real ones).
    Collected until every post has a temporal prediction as of its latest snapshot."""
    from aiokafka import AIOKafkaConsumer

    from popscore.contract import Snapshot
    from popscore.tools.demo import read_events, sample_path
    from popscore.tools.replay import ReplayOptions, replay

    events = read_events(sample_path())
    latest: dict[str, datetime] = {}
    for _, event in events:
        if isinstance(event, Snapshot):
            seen_at = event.observed_at.replace(microsecond=0)  # sequences keep whole seconds
            latest[event.post_id] = max(latest.get(event.post_id, seen_at), seen_at)
    span = (max(latest.values()) - min(latest.values())).total_seconds()
    consumer = AIOKafkaConsumer(settings.kafka.topics.predictions, bootstrap_servers=bootstrap,
                                auto_offset_reset="latest", group_id=None)
    await consumer.start()
    records: list[tuple[bytes, bytes]] = []
    waiting = set(latest)
    try:
        await consumer.seek_to_end()
        await replay(events, bootstrap, settings.kafka.topics,
                     ReplayOptions(speed=max(1.0, span / replay_s), create_topics=False, progress=False))
        deadline = time.monotonic() + timeout_s
        while waiting and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                for message in messages:
                    record = json.loads(message.value)
                    if record["post_id"] not in latest:
                        continue
                    records.append((message.key, message.value))
                    as_of = datetime.fromisoformat(record["as_of"].replace("Z", "+00:00"))
                    if record["model"] == "temporal" and as_of >= latest[record["post_id"]]:
                        waiting.discard(record["post_id"])
    finally:
        await consumer.stop()
    if waiting:
        raise RuntimeError(f"{len(waiting)} sample posts got no prediction as of their latest snapshot")
    return records


def _envelopes(workload: Workload, rounds: range, partitions: list[int], size: int,
               envelope_of: dict[int, np.ndarray] | None = None):
    """Snapshot-batch records (key ``batch-<n>``, envelope, partition) of ``rounds``; ``envelope_of[k][i]``
    is filled with the number of the envelope that carries post ``i``'s snapshot of round ``k``."""
    by_partition = {p: [] for p in partitions}
    posts_in = {p: [] for p in partitions}
    part_of = [partition_for(post_id, partitions) for post_id in workload.ids]
    records = []

    def close(p: int, where: np.ndarray) -> None:
        where[posts_in[p]] = len(records)
        records.append((f"batch-{len(records)}".encode(), batch_envelope(by_partition[p]), p))
        by_partition[p], posts_in[p] = [], []

    for k in rounds:
        where = np.empty(workload.n_posts, np.int64)
        for i in range(workload.n_posts):
            p = part_of[i]
            by_partition[p].append(workload.snapshot(i, k))
            posts_in[p].append(i)
            if len(by_partition[p]) >= size:
                close(p, where)
        for p in partitions:
            if by_partition[p]:
                close(p, where)
        if envelope_of is not None:
            envelope_of[k] = where
    return records


def image_post(post_id: str, created: float, picture: bytes) -> bytes:
    import base64

    return json.dumps({"schema": "post.v1", "post_id": post_id, "platform": BENCH_PLATFORM, "created_at": iso(created),
                       "text": {"title": f"picture post {post_id}"},
                       "media": {"image": base64.b64encode(picture).decode()}}).encode()


def bench_pictures(n: int = 16) -> list[bytes]:
    """Distinct JPEGs of 320 x 240 (a few KB to tens of KB): what a post's thumbnail might weigh."""
    import io

    from PIL import Image

    rng = np.random.default_rng(20)
    out = []
    for _ in range(n):
        blocks = rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)
        image = Image.fromarray(blocks).resize((320, 240), Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


def image_phase(settings: Settings, endpoints, n: int, log: Callable[[str], None]) -> dict:
    """Posts with an inline picture at full speed through the worker (throughput; latency from a post's send to its
    static prediction), then as many through the naive baseline (one Triton request per picture, one per post)."""
    from popscore.tools.naive_pipeline import run_naive_images

    bootstrap, topics = endpoints.broker_bootstrap, settings.kafka.topics
    pictures = bench_pictures()
    created = time.time() - 3600
    records = [(f"benchimg-{i:06d}".encode(), image_post(f"benchimg-{i:06d}", created, pictures[i % len(pictures)]),
                None) for i in range(n)]
    log(f"image posts: {n:,} posts with an inline picture ({np.mean([len(p) for p in pictures]) / 1024:.0f} KB "
        f"each on average)")
    sent_at: dict = {}
    latencies: list[float] = []
    visual_on = [0]

    def on_message(message, now: float) -> None:
        if message.key in sent_at:
            latencies.append(now - sent_at[message.key])
            visual_on[0] += json.loads(message.value)["explanation"]["modality_weights"]["visual"] > 0

    hits, seconds, _ = asyncio.run(_through(bootstrap, settings, records, b'"post_id":"benchimg-', n,
                                            timeout_s=max(600.0, n / 5), topic=topics.posts, on_message=on_message,
                                            sent_at=sent_at))
    results = {"image_posts": n, "image_posts_per_s": round(n / seconds, 1) if hits == n else 0,
               "image_seconds": round(seconds, 1), "image_visual_on": visual_on[0],
               "image_latency_p50_ms": round(1000 * _percentile(latencies, 50)) if latencies else None,
               "image_latency_p95_ms": round(1000 * _percentile(latencies, 95)) if latencies else None}
    log(f"  {results['image_posts_per_s']:,} image posts/s ({seconds:.1f} s), visual modality on in "
        f"{visual_on[0]:,}, post -> static prediction p50 {results['image_latency_p50_ms']} ms, "
        f"p95 {results['image_latency_p95_ms']} ms")
    naive = [(f"naiveimg-{i:06d}".encode(), image_post(f"naiveimg-{i:06d}", created, pictures[i % len(pictures)]),
              None) for i in range(n)]
    asyncio.run(_produce_all(bootstrap, NAIVE_IMAGES_IN, naive))
    processed, naive_seconds = asyncio.run(run_naive_images(settings, bootstrap,
                                                            f"{endpoints.host}:{endpoints.triton_grpc_port}",
                                                            NAIVE_IMAGES_IN, NAIVE_IMAGES_OUT, n,
                                                            timeout_s=max(600.0, n / 2)))
    results["naive_image_posts_per_s"] = round(processed / naive_seconds, 1) if processed == n else 0
    log(f"  naive, one request per picture: {results['naive_image_posts_per_s']:,} image posts/s "
        f"({naive_seconds:.1f} s)")
    return results


def run_image_bench(settings: Settings, cfg: BenchConfig, log: Callable[[str], None] = print) -> dict:
    """The image phase alone, on a stack of its own."""
    from popscore.tools.stack.components import create_topics

    settings.serving.text_encoder = False  # as in the other phases: the phase measures the pictures
    stack = EmbeddedStack(settings, log=log)
    state = stack.start(with_worker=True)
    try:
        endpoints = state.endpoints_obj()
        create_topics(endpoints, [NAIVE_IMAGES_IN, NAIVE_IMAGES_OUT], 1)
        return {"config": asdict(cfg), "text_encoder": False, **image_phase(settings, endpoints, cfg.image_posts, log)}
    finally:
        stack.stop()


def measure_redis_memory(redis_url: str, key_prefix: str, posts: int, obs: int, log: Callable[[str], None]) -> dict:
    """Bytes per post of the worker's encoding vs a list of JSON strings, on a scratch database."""
    client = redis.Redis.from_url(redis_url, db=15)
    client.flushdb()
    base = client.info("memory")["used_memory"]
    rng = np.random.default_rng(0)
    t0 = int(time.time()) - 86_400
    counts = np.cumsum(rng.integers(0, 50, size=(obs, 5)), axis=0).astype(float)
    counts[:, [0, 3, 4]] = np.nan  # a platform with likes and comments only
    keys = RedisKeys(key_prefix, 1)  # the worker's key names (a shard's tag, as with up to 10 partitions): their
    # length is part of the memory measured
    blob = encode_sequence(RECORD.pack(t0 + 1800 * j, *counts[j]) for j in range(obs))
    naive_items = [json.dumps({"post_id": "x" * 14, "observed_at": iso(t0 + 1800 * j),
                               "counts": {"likes": int(counts[j, 1]), "comments": int(counts[j, 2])}})
                   for j in range(obs)]
    step = 10_000
    for start in range(0, posts, step):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(posts, start + step)):
            pipe.set(keys.sequence(f"bench-{i:07d}"), blob, ex=86_400)  # what the merge script stores
        pipe.execute()
    ours = client.info("memory")["used_memory"] - base
    sample_ours = np.mean([client.memory_usage(keys.sequence(f"bench-{i:07d}"))
                           for i in range(0, posts, max(1, posts // 500))])
    client.flushdb()
    base = client.info("memory")["used_memory"]
    for start in range(0, posts, step):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(posts, start + step)):
            key = f"naive:bench-{i:07d}"
            pipe.rpush(key, *naive_items)
            pipe.expire(key, 86_400)
        pipe.execute()
    naive = client.info("memory")["used_memory"] - base
    sample_naive = np.mean([client.memory_usage(f"naive:bench-{i:07d}") for i in range(0, posts,
                                                                                       max(1, posts // 500))])
    client.flushdb()
    log(f"redis: {posts:,} posts x {obs} observations: ours {ours / posts:,.0f} B/post, "
        f"naive JSON list {naive / posts:,.0f} B/post")
    return {"redis_bytes_per_post": round(ours / posts, 1), "naive_redis_bytes_per_post": round(naive / posts, 1),
            "redis_memory_usage_sample": round(float(sample_ours), 1),
            "naive_memory_usage_sample": round(float(sample_naive), 1)}


@dataclass
class FlatConfig:
    """``popscore bench --flat``: CPU per snapshot against the observations stored per post and the live posts.
    Each case preloads ``live`` posts (their sequences of ``observations`` records ``cadence_s`` apart, and their
    post hashes) straight into Redis, then streams ``rounds`` snapshots of each of ``streamed_posts`` of them
    through the worker, a round at a time, after one unmeasured round."""

    live_posts: tuple[int, ...] = (100_000, 1_000_000)
    observations: tuple[int, ...] = (25, 300)
    streamed_posts: int = 20_000
    rounds: int = 5
    cadence_s: int = 1800
    repeats: int = 2  # the cases again, in reverse order, so that a drift of the shared machine shows
    envelope_snapshots: int = 1_000


def flat_cases(cfg: FlatConfig) -> list[tuple[int, int]]:
    """(live posts, observations per post) measured: every observation count at the fewest live posts, then every
    other live count at the fewest observations; then, per repeat, the same in reverse order."""
    live, obs = min(cfg.live_posts), min(cfg.observations)
    cases = [(live, n) for n in sorted(cfg.observations)] + [(n, obs) for n in sorted(cfg.live_posts) if n != live]
    return [case for r in range(cfg.repeats) for case in (cases if r % 2 == 0 else cases[::-1])]


class PreloadedWorkload(Workload):
    """Snapshots that continue sequences ``preload_posts`` stored: round ``k`` a minute after the latest stored
    observation (``last_t``) and the one before it, counts growing from those stored."""

    def __init__(self, ids: list[str], last_t: int, stored_likes: int) -> None:
        self.n_posts, self.ids, self.t0, self.stored_likes = len(ids), ids, last_t, stored_likes

    def snapshot(self, i: int, k: int) -> bytes:
        likes = self.stored_likes + (k + 1) * (1 + i % 50)
        return (f'{{"schema":"snapshot.v1","post_id":"{self.ids[i]}","observed_at":"{self.round_time(k)}",'
                f'"counts":{{"likes":{likes},"comments":{likes // 4}}}}}').encode()


def stored_history(observations: int, last_t: int, cadence_s: int) -> tuple[bytes, int]:
    """(a sequence of ``observations`` records ``cadence_s`` apart ending at ``last_t``, encoded as the merge script
    stores it; its latest likes). Likes and comments, as the workload's platform counts."""
    records = []
    for j in range(observations):
        counts = {"likes": 3 * j, "comments": 3 * j // 4}
        records.append(RECORD.pack(last_t - cadence_s * (observations - 1 - j),
                                   *[float(counts.get(name, "nan")) for name in COUNTER_NAMES]))
    return encode_sequence(records), 3 * (observations - 1)


def preload_posts(client: redis.Redis, keys: RedisKeys, ids: list[str], sequence: bytes, post_fields: dict,
                  sequence_ttl_s: int, post_ttl_s: int, step: int = 5_000) -> None:
    """Store ``ids``' sequences and post hashes as the worker would have, pipelined: far faster than producing
    their posts and snapshots through Kafka."""
    for start in range(0, len(ids), step):
        pipe = client.pipeline(transaction=False)
        for post_id in ids[start:start + step]:
            pipe.set(keys.sequence(post_id), sequence, ex=sequence_ttl_s)
            pipe.hset(keys.post(post_id), mapping=post_fields)
            pipe.expire(keys.post(post_id), post_ttl_s)
        pipe.execute()


def _wait_for_post_hash(client: redis.Redis, key: str, timeout_s: float = 300.0) -> dict[bytes, bytes]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fields = client.hgetall(key)
        if CONTENT.encode() in fields:
            return fields
        time.sleep(0.2)
    raise RuntimeError(f"the worker did not store {key} within {timeout_s:.0f} s")


def _flush(client: redis.Redis, timeout_s: float = 600.0) -> None:
    """Empty the database, freeing in Redis's background thread (millions of keys), and wait until it is done."""
    client.flushdb(asynchronous=True)
    deadline = time.monotonic() + timeout_s
    while client.info("memory").get("lazyfree_pending_objects", 0) and time.monotonic() < deadline:
        time.sleep(0.5)


def _wait_for_aof_rewrite(client: redis.Redis, timeout_s: float = 600.0) -> None:
    """Until Redis has rewritten its append-only file and synced it (a background thread's work, counted as
    Redis's CPU)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = client.info("persistence")
        if not any(info.get(name) for name in ("aof_rewrite_in_progress", "aof_rewrite_scheduled",
                                                "aof_pending_bio_fsync")):
            return
        time.sleep(0.5)
    raise RuntimeError("Redis's append-only file rewrite did not finish")


def flat_phase(settings: Settings, stack: EmbeddedStack, cfg: FlatConfig, log: Callable[[str], None]) -> dict:
    """CPU per snapshot (worker, Redis, broker, Triton) and Redis bytes per post for each of ``flat_cases``, and
    the ratios of the costliest case of each dimension to the cheapest (300 vs 25 observations, 1M vs 100k posts).

    Redis writes no append-only file while a case is preloaded (CONFIG SET appendonly no); it is switched on again
    and rewritten before the measure, and its automatic rewrite is off during it: what is measured is the
    per-snapshot work, AOF writes included, not a rewrite of the whole data set that happens to fall in it."""
    from popscore.tools.stack.components import recreate_topics

    endpoints = stack.state.endpoints_obj()
    bootstrap, topics = endpoints.broker_bootstrap, settings.kafka.topics
    partitions = list(range(topics.partitions))
    client = redis.Redis.from_url(endpoints.redis_url, socket_timeout=120)
    keys = RedisKeys(settings.redis.key_prefix)
    sequence_ttl_s = settings.score.horizon_s
    post_ttl_s = sequence_ttl_s + settings.worker.post_ttl_refresh_s

    # One real post through the worker: its hash holds the served content model's vector, which every preloaded
    # post gets (a vector of another model would be recomputed through Triton at the post's first merge).
    template = Workload(1)
    template.ids = ["flat-template"]
    asyncio.run(_produce_all(bootstrap, topics.posts, [(b"flat-template", template.post(0), None)]))
    stored = _wait_for_post_hash(client, keys.post("flat-template"))
    static, content = stored[STATIC.encode()], stored[CONTENT.encode()]

    cases = []
    for number, (live, observations) in enumerate(flat_cases(cfg)):
        label = f"{live}x{observations}"
        log(f"flat case {number + 1}/{len(flat_cases(cfg))}: {live:,} live posts with {observations} observations "
            f"each; snapshots of {cfg.streamed_posts:,} of them, {cfg.rounds} rounds")
        stack.stop_worker()
        recreate_topics(endpoints, [topics.snapshots, topics.predictions], topics.partitions)
        client.config_set("appendonly", "no")
        _flush(client)
        base = client.info("memory")["used_memory"]
        last_t = int(time.time()) - 3600
        sequence, stored_likes = stored_history(observations, last_t, cfg.cadence_s)
        created = last_t - cfg.cadence_s * observations
        post = Post(post_id="flat", platform=BENCH_PLATFORM, created_at=datetime.fromtimestamp(created, timezone.utc))
        fields = encode_post(post, np.frombuffer(static, np.float32), content, embedded_title=False)
        ids = [f"flat-{label}-{i:07d}" for i in range(live)]
        started = time.monotonic()
        preload_posts(client, keys, ids, sequence, fields, sequence_ttl_s, post_ttl_s)
        bytes_per_post = (client.info("memory")["used_memory"] - base) / live
        log(f"  preloaded in {time.monotonic() - started:.0f} s: {bytes_per_post:,.0f} Redis bytes per post")
        client.config_set("appendonly", "yes")  # rewrites the file from the data set, in a child
        _wait_for_aof_rewrite(client)
        client.config_set("auto-aof-rewrite-percentage", "0")
        try:
            stack.start_worker()
            pids = {name: int(info["pid"]) for name, info in stack.state.processes.items()}
            workload = PreloadedWorkload(ids[:cfg.streamed_posts], last_t, stored_likes)
            n = cfg.rounds * workload.n_posts
            warm = _envelopes(workload, range(0, 1), partitions, cfg.envelope_snapshots)
            hits, _, _ = asyncio.run(_through(bootstrap, settings, warm,
                                              f'"as_of":"{workload.round_time(0)}"'.encode(), workload.n_posts,
                                              timeout_s=600))
            # Round after round, each scored before the next is produced: one merge per snapshot, as at a
            # sustainable rate (at full speed a backlog folds a post's snapshots into one merge).
            rounds = [_envelopes(workload, range(k, k + 1), partitions, cfg.envelope_snapshots)
                      for k in range(1, 1 + cfg.rounds)]
            cpu, redis_cpu = _cpu_seconds(pids), client.info("cpu")
            hits, seconds, seen = workload.n_posts, 0.0, 0
            for k, records in enumerate(rounds, start=1):
                round_hits, round_seconds, round_seen = asyncio.run(_through(
                    bootstrap, settings, records, f'"as_of":"{workload.round_time(k)}"'.encode(), workload.n_posts,
                    timeout_s=600.0))
                hits, seconds, seen = min(hits, round_hits), seconds + round_seconds, seen + round_seen
            cpu_us = _cpu_per_snapshot(cpu, _cpu_seconds(pids), n)
            # Redis's own account: its main thread (commands, scripts) apart from its background threads.
            after = client.info("cpu")
            main_thread_us = 1e6 * sum(after[f"used_cpu_{kind}_main_thread"] - redis_cpu[f"used_cpu_{kind}_main_thread"]
                                       for kind in ("user", "sys")) / n
        finally:
            client.config_set("auto-aof-rewrite-percentage", "100")
        # A sequence grown by APPEND keeps the slack Redis allocated for its growth (up to its size again).
        sample = range(0, cfg.streamed_posts, max(1, cfg.streamed_posts // 200))
        streamed_key_bytes, preloaded_key_bytes = (
            float(np.mean([client.memory_usage(keys.sequence(ids[i + offset])) for i in sample]))
            for offset in (0, cfg.streamed_posts if live >= 2 * cfg.streamed_posts else 0))
        case = {"live_posts": live, "observations": observations, "cpu_us_per_snapshot": cpu_us,
                "redis_main_thread_cpu_us_per_snapshot": round(main_thread_us, 1),
                "snapshots_per_s": round(n / seconds) if hits == workload.n_posts else 0,
                "predictions_per_snapshot": round(seen / n, 3), "redis_bytes_per_post": round(bytes_per_post, 1),
                "sequence_key_bytes_preloaded": round(preloaded_key_bytes), "sequence_key_bytes_streamed":
                round(streamed_key_bytes)}
        cases.append(case)
        log(f"  {case['snapshots_per_s']:,} snapshots/s, {case['predictions_per_snapshot']} predictions per "
            f"snapshot; CPU us per snapshot: {cpu_us} (Redis's main thread "
            f"{case['redis_main_thread_cpu_us_per_snapshot']}); a sequence key's bytes (MEMORY USAGE): "
            f"{case['sequence_key_bytes_preloaded']:,} as preloaded, {case['sequence_key_bytes_streamed']:,} "
            f"after {cfg.rounds + 1} appended")
    stack.stop_worker()
    _flush(client)
    stack.start_worker()
    client.close()
    return {"flat_config": asdict(cfg), "flat_cases": cases, "flat_ratios": flat_ratios(cases)}


FLAT_COMPONENTS = ("worker", "redis")


def flat_cpu(cases: list[dict], live: int, observations: int) -> dict[str, float]:
    """The mean CPU us per snapshot of a case over its repeats, per component and for worker + Redis."""
    runs = [c["cpu_us_per_snapshot"] for c in cases if (c["live_posts"], c["observations"]) == (live, observations)]
    mean = {name: float(np.mean([run.get(name, np.nan) for run in runs])) for name in FLAT_COMPONENTS}
    mean["worker+redis"] = mean["worker"] + mean["redis"]
    return mean


def flat_ratios(cases: list[dict]) -> dict[str, dict[str, float]]:
    """CPU per snapshot of the most observations against the fewest (at the fewest live posts), and of the most
    live posts against the fewest (at the fewest observations), per component; Redis bytes per post likewise."""
    live = sorted({c["live_posts"] for c in cases})
    observations = sorted({c["observations"] for c in cases})
    out = {}
    for name, (a, b) in (("observations", ((live[0], observations[-1]), (live[0], observations[0]))),
                         ("live_posts", ((live[-1], observations[0]), (live[0], observations[0])))):
        if a == b:
            continue
        costly, cheap = flat_cpu(cases, *a), flat_cpu(cases, *b)
        ratio = {k: round(costly[k] / cheap[k], 2) for k in costly}
        memory = [np.mean([c["redis_bytes_per_post"] for c in cases if (c["live_posts"], c["observations"]) == x])
                  for x in (a, b)]
        ratio["redis_bytes_per_post"] = round(float(memory[0] / memory[1]), 2)
        out[f"{a[0]}x{a[1]}_vs_{b[0]}x{b[1]}"] = ratio
    return out


def render_flat_table(results: dict, command: str) -> str:
    lines = [f"`{command}`", "", "| live posts | observations per post | CPU us per snapshot (worker, Redis; broker, "
             "Triton) | snapshots/s | Redis bytes per post | a sequence key's bytes, preloaded -> appended to |",
             "|---|---|---|---|---|---|"]
    for c in results["flat_cases"]:
        cpu = c["cpu_us_per_snapshot"]
        lines.append(f"| {c['live_posts']:,} | {c['observations']} | worker {cpu.get('worker')}, redis "
                     f"{cpu.get('redis')}; broker {cpu.get('broker')}, triton {cpu.get('triton')} | "
                     f"{c['snapshots_per_s']:,} | {c['redis_bytes_per_post']:,} | "
                     f"{c['sequence_key_bytes_preloaded']:,} -> {c['sequence_key_bytes_streamed']:,} |")
    lines += ["", "| ratio (means over repeats) | worker | Redis | worker + Redis | Redis bytes per post |",
              "|---|---|---|---|---|"]
    for name, r in results["flat_ratios"].items():
        lines.append(f"| {name.replace('_vs_', ' vs ')} | {r['worker']} | {r['redis']} | {r['worker+redis']} | "
                     f"{r['redis_bytes_per_post']} |")
    return "\n".join(lines)


def run_flat_bench(settings: Settings, cfg: FlatConfig, log: Callable[[str], None] = print) -> dict:
    """The flat phase alone, on a stack of its own (titles not embedded, as in the other phases)."""
    settings.serving.text_encoder = False
    # Redis's budget is sized for the preloaded posts (the stack's default is for capacity_posts).
    settings.redis.capacity_posts = max(settings.redis.capacity_posts, max(cfg.live_posts))
    settings.redis.observations_per_post = max(cfg.observations)
    stack = EmbeddedStack(settings, log=log)
    stack.start(with_worker=True)
    try:
        return {"text_encoder": False, **flat_phase(settings, stack, cfg, log)}
    finally:
        stack.stop()


def kept_up(all_scored: bool, drain_s: float, p50_age_by_10s: list[float | None], max_age_s: float = 1.0) -> bool:
    """Whether a paced phase kept up: every post scored, the last prediction within ``max_age_s`` of the last
    envelope, and in every 10 s of the run (none may lack predictions) a median age within ``max_age_s``."""
    return bool(all_scored and drain_s <= max_age_s and p50_age_by_10s
                and all(age is not None and age <= max_age_s for age in p50_age_by_10s))


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each named process with its live descendants (Triton's
    Python-backend stubs are its children), from /proc; ``load generator`` is this process. Empty off Linux.
    CPU time, unlike a rate, hardly depends on what else the shared machine is doing."""
    proc = Path("/proc")
    if not proc.is_dir():
        return {}
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    used: dict[int, float] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        used[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks

    def tree(pid: int) -> float:
        return used.get(pid, 0.0) + sum(tree(child) for child in children.get(pid, []))

    return {**{name: tree(pid) for name, pid in pids.items()}, "load generator": used.get(os.getpid(), 0.0)}


def _cpu_per_snapshot(before: dict[str, float], after: dict[str, float], snapshots: int) -> dict[str, float]:
    """Microseconds of CPU per snapshot, per component, between two ``_cpu_seconds`` readings."""
    return {name: round(1e6 * (after[name] - before[name]) / snapshots, 1) for name in before if name in after}


def warm_up(bootstrap: str, settings: Settings, cfg: BenchConfig, workload: Workload,
            log: Callable[[str], None]) -> None:
    """The live posts, and one snapshot each, so that the measured rounds update stored sequences."""
    log(f"warm-up: {cfg.live_posts:,} posts and one snapshot each")
    posts = [(pid.encode(), workload.post(i), None) for i, pid in enumerate(workload.ids)]
    asyncio.run(_produce_all(bootstrap, settings.kafka.topics.posts, posts))
    partitions = list(range(settings.kafka.topics.partitions))
    first = _envelopes(workload, range(0, 1), partitions, cfg.envelope_snapshots)
    hits, _, _ = asyncio.run(_through(bootstrap, settings, first, f'"as_of":"{workload.round_time(0)}"'.encode(),
                                   cfg.live_posts, timeout_s=600))
    log(f"warm-up done: {hits:,} temporal predictions")


def paced_phase(bootstrap: str, settings: Settings, cfg: BenchConfig, workload: Workload, first_round: int,
                rounds: int, pids: dict[str, int], prefix: str, log: Callable[[str], None]) -> dict:
    """Envelopes of ``rounds`` rounds paced at ``batch_target_per_s``. Behind, the worker folds a post's
    snapshots into one prediction; whether it keeps up shows in the age of the snapshot each prediction is as
    of. Figures under ``prefix``; CPU per process (``pids``) and per component (``redis-2``.. into ``redis``)."""
    envelope_of: dict[int, np.ndarray] = {}
    records = _envelopes(workload, range(first_round, first_round + rounds),
                         list(range(settings.kafka.topics.partitions)), cfg.envelope_snapshots, envelope_of)
    round_of = {workload.round_time(k).encode(): k for k in envelope_of}
    sent_at: dict[bytes, float] = {}
    staleness: list[float] = []
    arrived: list[float] = []

    def on_prediction(message, now):
        at = message.value.find(b'"as_of":"') + 9
        k = round_of.get(message.value[at:at + 20])
        if k is not None:
            staleness.append(now - sent_at[f"batch-{envelope_of[k][int(message.key[6:])]}".encode()])
            arrived.append(now)

    n = rounds * cfg.live_posts
    rate = cfg.batch_target_per_s * len(records) / n  # envelopes/s
    log(f"{prefix}: {n:,} snapshots paced at {cfg.batch_target_per_s:,.0f}/s ({rate:.1f} envelopes/s), "
        f"{settings.stack.workers} worker(s)")
    cpu = _cpu_seconds(pids)
    hits, seconds, seen = asyncio.run(_through(
        bootstrap, settings, records, f'"as_of":"{workload.round_time(first_round + rounds - 1)}"'.encode(),
        cfg.live_posts, timeout_s=max(600, 10 * cfg.batch_seconds), rate=rate, on_message=on_prediction,
        sent_at=sent_at))
    per_process = _cpu_per_snapshot(cpu, _cpu_seconds(pids), n)
    per_component: dict[str, float] = {}
    for name, us in per_process.items():
        component = name.split("-")[0] if name.startswith(("redis", "worker")) else name
        per_component[component] = round(per_component.get(component, 0.0) + us, 1)
    produced_s = max(sent_at.values()) - min(sent_at.values())
    out: dict = {f"{prefix}_cpu_us_per_snapshot": per_process, f"{prefix}_cpu_us_per_component": per_component,
                 f"{prefix}_workers": settings.stack.workers, f"{prefix}_target_per_s": cfg.batch_target_per_s,
                 f"{prefix}_snapshots_per_s": round(n / seconds) if hits == cfg.live_posts else 0,
                 f"{prefix}_drain_s": round(seconds - produced_s, 1),  # after the last envelope was produced
                 f"{prefix}_predictions_per_snapshot": round(seen / n, 3)}
    for q in (50, 99, 100):
        out[f"{prefix}_staleness_p{q}_s"] = round(_percentile(staleness, q), 2)
    # Whether the worker keeps up: a steady age is sustainable, an age growing with time is not.
    start = min(sent_at.values())
    tens, ages = np.floor((np.array(arrived) - start) / 10).astype(int), np.array(staleness)
    out[f"{prefix}_staleness_p50_by_10s"] = [
        round(float(np.median(ages[tens == t])), 1) if (tens == t).any() else None
        for t in range(int(tens.max()) + 1)] if arrived else []
    # Paced at the target, snapshots/s can only reach target x T / (T + latency): it says little about
    # keeping up. Kept up: every live post scored, the last prediction within a second of the last
    # envelope, and in every 10 s of the run predictions as of snapshots less than a second old (p50).
    out[f"{prefix}_produced_per_s"] = round(n / produced_s) if produced_s > 0 else 0
    out[f"{prefix}_kept_up"] = kept_up(hits == cfg.live_posts, out[f"{prefix}_drain_s"],
                                       out[f"{prefix}_staleness_p50_by_10s"])
    log(f"  kept up: {'yes' if out[f'{prefix}_kept_up'] else 'NO'} (produced at {out[f'{prefix}_produced_per_s']:,}/s); "
        f"{out[f'{prefix}_snapshots_per_s']:,} snapshots/s over {seconds:.1f} s (the last prediction "
        f"{out[f'{prefix}_drain_s']} s after the last envelope), {seen / n:.3f} predictions per "
        f"snapshot; age of the snapshot a prediction is as of: p50 {out[f'{prefix}_staleness_p50_s']} s, "
        f"p99 {out[f'{prefix}_staleness_p99_s']} s, max {out[f'{prefix}_staleness_p100_s']} s; "
        f"p50 per 10 s of the run: {out[f'{prefix}_staleness_p50_by_10s']} s; CPU us per snapshot: {per_component}")
    return out


def codec_phase(bootstrap: str, settings: Settings, log: Callable[[str], None]) -> dict:
    """Bytes and producer CPU per prediction record by codec, on the sample's predictions (tools/record_codecs.py)."""
    predictions = asyncio.run(_sample_predictions(bootstrap, settings))
    log(f"codecs: {len(predictions):,} prediction records of the packaged sample, built into record batches by "
        f"each codec")
    codecs = measure_codecs(predictions)
    plain = codecs["none"][str(LOADED_BATCH_RECORDS)]["bytes_per_record"]
    wire = codecs[settings.kafka.producer_compression][str(LOADED_BATCH_RECORDS)]["bytes_per_record"]
    log(f"  {LOADED_BATCH_RECORDS} per batch: {plain} B per record uncompressed, {wire} B with "
        f"{settings.kafka.producer_compression}")
    # prediction_wire_bytes: as the configured codec stores a loaded worker's batches (the capacity model's)
    return {"prediction_codecs": codecs, "prediction_codec_records": len(predictions),
            "producer_compression": settings.kafka.producer_compression, "prediction_wire_bytes": wire}


def run_bench(settings: Settings, cfg: BenchConfig, log: Callable[[str], None] = print) -> dict:
    from popscore.serving.model_sets import discover, repository_problem
    from popscore.tools.naive_pipeline import run_naive
    from popscore.tools.stack.components import create_topics, recreate_topics

    # The bench measures the snapshot path. Titles are embedded on the post path only, by a transformer
    # whose time per title would make the warm-up of 100,000 posts, a phase that is not measured, take
    # minutes, so it is off.
    settings.serving.text_encoder = False
    sets = discover(settings.stack.model_repo)
    problem = repository_problem(BENCH_PLATFORM, sets[BENCH_PLATFORM]) if BENCH_PLATFORM in sets else "absent"
    if problem is not None:
        raise RuntimeError(f"the bench measures the {BENCH_PLATFORM} model set, which cannot be served: {problem}")
    # The machine and the calibration workload's time before and after the run: figures compare across machines
    # in calibration rounds (tools/calibration.py), and a drift between the two shows a load that changed.
    machine = machine_info()
    log(f"machine: {machine['cpu_model']}, {machine['usable_cpus']} CPUs, load average {machine['load_average']}")
    calibration_start = time_calibration()
    log(f"calibration v{CALIBRATION_VERSION}: {calibration_start['us_per_round']} us per round")
    stack = EmbeddedStack(settings, log=log)
    state = stack.start(with_worker=True)
    results: dict = {"config": asdict(cfg), "text_encoder": False, "machine": machine,
                     "calibration_start": calibration_start}
    try:
        endpoints = state.endpoints_obj()
        pids = {name: int(info["pid"]) for name, info in state.processes.items()}
        bootstrap = endpoints.broker_bootstrap
        topics = settings.kafka.topics
        create_topics(endpoints, [NAIVE_IN, NAIVE_OUT, NAIVE_IMAGES_IN, NAIVE_IMAGES_OUT], 1)
        workload = Workload(cfg.live_posts)
        partitions = list(range(topics.partitions))

        warm_up(bootstrap, settings, cfg, workload, log)
        next_round = 1

        def fresh_topics() -> None:
            """Empty snapshot and prediction topics for the next phase. Tansu's in-memory engine lists every
            stored batch of a partition on each fetch that returns data (tansu-storage dynostore.rs, ``fetch``),
            so records left by earlier phases would make later ones pay per fetch for them, which a Kafka log
            (an offset index) does not: in the same run the broker's CPU per single record was 183 us after the
            envelope phases against 40 us on small topics. The worker is stopped (it commits), the topics
            are deleted and created again, and a new worker is started; the posts and the Redis state stay."""
            stack.stop_worker()
            recreate_topics(endpoints, [topics.snapshots, topics.predictions], topics.partitions)
            stack.start_worker()
            pids.clear()
            pids.update({name: int(info["pid"]) for name, info in stack.state.processes.items()})

        def full_speed(name: str, records, n: int, last_round: int, seconds_hint: float) -> None:
            """Produce ``records`` (``n`` snapshots) at full speed; done when every live post has a
            prediction as of ``last_round``."""
            cpu = _cpu_seconds(pids)
            hits, seconds, seen = asyncio.run(_through(bootstrap, settings, records,
                                                 f'"as_of":"{workload.round_time(last_round)}"'.encode(),
                                                 cfg.live_posts, timeout_s=max(600, 10 * seconds_hint)))
            results[f"{name}_cpu_us_per_snapshot"] = _cpu_per_snapshot(cpu, _cpu_seconds(pids), n)
            results[f"{name}_snapshots_per_s"] = round(n / seconds) if hits == cfg.live_posts else 0
            results[f"{name}_seconds"] = round(seconds, 1)
            # Snapshots of one post that meet in a worker window give one prediction: under a backlog this
            # falls below 1 (the worker catches up per post); at a sustainable rate it stays near 1.
            results[f"{name}_predictions_per_snapshot"] = round(seen / n, 3)
            log(f"  {results[f'{name}_snapshots_per_s']:,} snapshots/s ({seconds:.1f} s), "
                f"{seen / n:.3f} predictions per snapshot; CPU us per snapshot: {results[f'{name}_cpu_us_per_snapshot']}")

        rounds = max(1, round(cfg.batch_target_per_s * cfg.batch_seconds / cfg.live_posts))
        records = _envelopes(workload, range(next_round, next_round + rounds), partitions, cfg.envelope_snapshots)
        fresh_topics()
        log(f"snapshot batches: {rounds * cfg.live_posts:,} snapshots in {len(records):,} envelopes, "
            f"as fast as possible")
        results["batch_bytes_per_snapshot"] = round(sum(len(k) + len(v) for k, v, _ in records) /
                                                    (rounds * cfg.live_posts), 1)  # key and envelope, on the broker
        full_speed("batch", records, rounds * cfg.live_posts, next_round + rounds - 1, cfg.batch_seconds)
        next_round += rounds

        def sustained(prefix: str, first_round: int) -> None:
            fresh_topics()
            results.update(paced_phase(bootstrap, settings, cfg, workload, first_round, rounds, pids, prefix, log))

        # One worker, then the same load shared by ``scale_out_workers`` workers (one consumer group).
        workers = settings.stack.workers
        sustained("sustained", next_round)
        next_round += rounds
        if cfg.scale_out_workers > 1:
            settings.stack.workers = cfg.scale_out_workers
            sustained("sustained_scaled_out", next_round)
            next_round += rounds
            settings.stack.workers = workers

        rounds = max(1, round(cfg.record_target_per_s * cfg.record_seconds / cfg.live_posts))
        records = [(workload.ids[i].encode(), workload.snapshot(i, k), None)
                   for k in range(next_round, next_round + rounds) for i in range(cfg.live_posts)]
        fresh_topics()
        log(f"single records: {len(records):,} snapshots, one per record, as fast as possible")
        full_speed("record", records, len(records), next_round + rounds - 1, cfg.record_seconds)
        next_round += rounds

        rate = max(1.0, results["record_snapshots_per_s"] / 2)
        n = min(cfg.live_posts, int(rate * cfg.latency_seconds))
        records = [(workload.ids[i].encode(), workload.snapshot(i, next_round), None) for i in range(n)]
        sent_at: dict[bytes, float] = {}
        latencies: list[float] = []
        to_worker: list[float] = []  # produced -> the worker published the prediction (its produced_at)
        prediction_bytes: list[int] = []
        wall_minus_monotonic = time.time() - time.monotonic()

        def on_prediction(message, now):
            if message.key in sent_at and b'"temporal"' in message.value:
                sent = sent_at.pop(message.key)
                latencies.append(now - sent)
                prediction_bytes.append(len(message.key) + len(message.value))
                at = message.value.find(b'"produced_at":"') + 15
                published = datetime.fromisoformat(message.value[at:message.value.index(b'"', at)].decode()
                                                   .replace("Z", "+00:00")).timestamp()
                to_worker.append(published - wall_minus_monotonic - sent)

        fresh_topics()
        log(f"latency: {n:,} single records at {rate:,.0f}/s (half the record rate)")
        asyncio.run(_through(bootstrap, settings, records, f'"as_of":"{workload.round_time(next_round)}"'.encode(),
                             n, timeout_s=120 + cfg.latency_seconds, rate=rate, on_message=on_prediction,
                             sent_at=sent_at))
        next_round += 1
        results["latency_p50_ms"] = round(1000 * _percentile(latencies, 50), 1)
        results["latency_p99_ms"] = round(1000 * _percentile(latencies, 99), 1)
        results["latency_samples"] = len(latencies)
        results["prediction_bytes"] = round(float(np.mean(prediction_bytes)), 1) if prediction_bytes else None
        results.update(codec_phase(bootstrap, settings, log))
        # Where it goes: up to the worker's publish (producer linger, broker, fetch, micro-batch, processing) and
        # after it (producer, broker, the reader's fetch). Same machine, same clock.
        results["latency_to_publish_p50_ms"] = round(1000 * _percentile(to_worker, 50), 1)
        results["latency_to_publish_p99_ms"] = round(1000 * _percentile(to_worker, 99), 1)
        log(f"  p50 {results['latency_p50_ms']} ms, p99 {results['latency_p99_ms']} ms ({len(latencies):,} samples); "
            f"up to the worker's publish: p50 {results['latency_to_publish_p50_ms']} ms, "
            f"p99 {results['latency_to_publish_p99_ms']} ms")

        n = cfg.naive_snapshots
        records = [(workload.ids[i % cfg.live_posts].encode(), workload.snapshot(i % cfg.live_posts, i // cfg.live_posts),
                    None) for i in range(n)]
        log(f"naive pipeline: {n:,} snapshots, one at a time")
        asyncio.run(_produce_all(bootstrap, NAIVE_IN, records))
        processed, seconds = asyncio.run(run_naive(settings, bootstrap, endpoints.redis_url,
                                                   f"{endpoints.host}:{endpoints.triton_grpc_port}", NAIVE_IN,
                                                   NAIVE_OUT, n, timeout_s=600,
                                                   model_platform=BENCH_PLATFORM))
        results["naive_snapshots_per_s"] = round(processed / seconds) if seconds else 0
        log(f"  {results['naive_snapshots_per_s']:,} snapshots/s")
        naive = max(1, results["naive_snapshots_per_s"])
        results["speedup_batch_vs_naive"] = round(results["batch_snapshots_per_s"] / naive, 1)
        results["speedup_record_vs_naive"] = round(results["record_snapshots_per_s"] / naive, 1)

        if cfg.image_posts:
            results.update(image_phase(settings, endpoints, cfg.image_posts, log))
        results.update(measure_redis_memory(endpoints.redis_url, settings.redis.key_prefix, cfg.memory_posts,
                                            cfg.memory_obs, log))
        results["redis_memory_ratio"] = round(results["naive_redis_bytes_per_post"] /
                                              results["redis_bytes_per_post"], 2)
    finally:
        stack.stop()
    results["calibration_end"] = time_calibration()
    results["load_average_end"] = machine_info()["load_average"]
    log(f"calibration v{CALIBRATION_VERSION}: {results['calibration_end']['us_per_round']} us per round at the end; "
        f"load average {results['load_average_end']}")
    return calibrated(results)


def image_rows(results: dict) -> list[tuple[str, str, str]]:
    if "image_posts_per_s" not in results:
        return []
    return [(f"posts with an inline picture ({results['image_posts']:,}), produced -> static prediction published",
             f"{results['image_posts_per_s']:,} posts/s; latency p50 {results['image_latency_p50_ms']} ms, "
             f"p95 {results['image_latency_p95_ms']} ms; visual modality on in {results['image_visual_on']:,}",
             f"naive, one Triton request per picture: {results['naive_image_posts_per_s']:,} posts/s")]


CPU_PHASES = {"batch": "envelopes at full speed", "sustained": "sustained", "sustained_scaled_out": "sustained",
              "record": "single records at full speed"}
"""Labels of the phases whose CPU per snapshot the table shows in calibration rounds (with their workers, when the
results say); others show by their key."""


def calibration_rows(results: dict) -> list[tuple[str, str, str]]:
    """The machine, the calibration round's time, and each phase's CPU per snapshot in rounds beside microseconds."""
    if "calibration_us_per_round" not in results:
        return []
    machine, start, end = results.get("machine", {}), results["calibration_start"], results.get("calibration_end")
    drift = f", drift {100 * results['calibration_drift']:+.0f} %" if "calibration_drift" in results else ""
    rows = [(f"machine; one calibration round (tools/calibration.py, v{start['version']}: the worker's mix, CPU time)",
             f"{machine.get('cpu_model')} ({machine.get('cpu_family_model_stepping')}), {machine.get('usable_cpus')} "
             f"CPUs; load average {machine.get('load_average')} at the start, {results.get('load_average_end')} at "
             f"the end",
             f"{results['calibration_us_per_round']} us per round (start {start['us_per_round']}, end "
             f"{end['us_per_round'] if end else 'n/a'}{drift})")]
    for key, rounds in results.items():
        if not key.endswith("_cpu_rounds_per_snapshot"):
            continue
        phase = key[: -len("_cpu_rounds_per_snapshot")]
        us = results.get(f"{phase}_cpu_us_per_snapshot", {})
        cells = [f"{name} {us.get(name)} ({value})" for name, value in rounds.items() if name != "load generator"]
        label, workers = CPU_PHASES.get(phase, phase), results.get(f"{phase}_workers")
        label += f", {workers} worker{'s' if workers != 1 else ''}" if workers else ""
        rows.append((f"CPU per snapshot, {label}: us (calibration rounds)", ", ".join(cells),
                     f"load generator {us.get('load generator', 'n/a')} ({rounds.get('load generator', 'n/a')})"))
    return rows


def render_table(results: dict, command: str) -> str:
    if "batch_snapshots_per_s" not in results:  # the image phase alone
        lines = [f"`{command}`", "", "| measure | popscore | baseline in the same run |", "|---|---|---|"]
        return "\n".join(lines + [f"| {a} | {b} | {c} |" for a, b, c in image_rows(results)])
    rows = [
        ("snapshot-batch input, produced -> prediction published", f"{results['batch_snapshots_per_s']:,} snapshots/s",
         f"naive {results['naive_snapshots_per_s']:,}/s (x{results['speedup_batch_vs_naive']})"),
        *[(f"sustained: envelopes paced at {results[f'{p}_target_per_s']:,.0f} snapshots/s, "
           f"{results[f'{p}_workers']} worker{'s' if results[f'{p}_workers'] > 1 else ''}",
           f"kept up: {'yes' if results.get(f'{p}_kept_up') else 'no'}; produced at "
           f"{results.get(f'{p}_produced_per_s', 0):,}/s, {results[f'{p}_snapshots_per_s']:,} snapshots/s "
           f"produced -> published, last prediction {results[f'{p}_drain_s']} s after the last envelope",
           f"age of the snapshot a prediction is as of: p50 {results[f'{p}_staleness_p50_s']} s, "
           f"p99 {results[f'{p}_staleness_p99_s']} s, p50 per 10 s {results[f'{p}_staleness_p50_by_10s']}; "
           f"{results[f'{p}_predictions_per_snapshot']} predictions per snapshot")
          for p in ("sustained", "sustained_scaled_out") if f"{p}_snapshots_per_s" in results],
        ("CPU per snapshot, envelopes at full speed (us; CPU time, not rates, so less noisy)",
         ", ".join(f"{k} {v}" for k, v in results.get("batch_cpu_us_per_snapshot", {}).items()
                   if k != "load generator"),
         f"load generator {results.get('batch_cpu_us_per_snapshot', {}).get('load generator', 'n/a')}"),
        ("one snapshot per record", f"{results['record_snapshots_per_s']:,} snapshots/s",
         f"naive x{results['speedup_record_vs_naive']}"),
        ("predictions per snapshot (batch / record phase)",
         f"{results.get('batch_predictions_per_snapshot', 'n/a')} / {results.get('record_predictions_per_snapshot', 'n/a')}",
         "naive 1 (one per snapshot)"),
        ("latency at half the record rate", f"p50 {results['latency_p50_ms']} ms, p99 {results['latency_p99_ms']} ms",
         f"{results['latency_samples']:,} samples; up to the worker's publish p50 "
         f"{results.get('latency_to_publish_p50_ms', 'n/a')} ms, p99 {results.get('latency_to_publish_p99_ms', 'n/a')} ms"),
        ("Redis bytes per post", f"{results['redis_bytes_per_post']:,}",
         f"naive JSON list {results['naive_redis_bytes_per_post']:,} (x{results['redis_memory_ratio']})"),
        *codec_rows(results),
        *image_rows(results),
        *calibration_rows(results),
    ]
    lines = [f"`{command}`", "", "| measure | popscore | baseline in the same run |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


def write_into_readme(readme_path, table: str, machine_note: str) -> None:
    """Replace the README's benchmark section (between the bench markers) with ``table``."""
    path = Path(readme_path)
    text = path.read_text()
    start, end = text.index(README_START), text.index(README_END)
    section = f"{README_START}\n{machine_note}\n\n{table}\n{README_END}"
    path.write_text(text[:start] + section + text[end + len(README_END):])


CLUSTER_PHASES = {
    False: (("single", "one Redis", "single", 0, 0), ("cluster", "Redis Cluster (3 masters)", "cluster", 0, 0)),
    True: (("cluster_acks0", "cluster, 1 replica each, replica_acks 0", "cluster", 1, 0),
           ("cluster_acks1", "cluster, 1 replica each, replica_acks 1", "cluster", 1, 1)),
}
"""--cluster (False) and --cluster --replica-acks (True): (phase, its column, redis.mode, replicas per master,
redis.replica_acks) of each phase."""


def run_cluster_bench(settings: Settings, cfg: BenchConfig, log: Callable[[str], None] = print,
                      replica_acks: bool = False) -> dict:
    """The sustained phase (envelopes of ``live_posts`` posts paced at ``batch_target_per_s``, shared by
    ``scale_out_workers`` workers) on one Redis, then on a three-master Redis Cluster, each on a stack of its own,
    in the same run: whether the cluster keeps up, and what its layout and client cost per snapshot against one
    Redis (CPU per component; a cluster's nodes summed as ``redis``). With ``replica_acks``: on a cluster with a
    replica per master, without and then with replicas confirming each batch's writes (what WAIT costs)."""
    results: dict = {"config": asdict(cfg), "text_encoder": False, "phases": []}
    for phase, title, mode, replicas, acks in CLUSTER_PHASES[replica_acks]:
        run_settings = settings.model_copy(deep=True)
        run_settings.redis.mode = mode
        run_settings.stack.redis_cluster_replicas = replicas
        run_settings.redis.replica_acks = acks
        run_settings.serving.text_encoder = False  # the snapshot path is measured (as run_bench does)
        run_settings.stack.workers = max(1, cfg.scale_out_workers)
        run_settings.stack.run_dir = settings.stack.run_dir / f"bench-redis-{phase}"
        results.update(_sustained_phase(run_settings, cfg, f"{phase}_redis_sustained", log))
        results["phases"].append([f"{phase}_redis_sustained", title])
    return results


def _sustained_phase(settings: Settings, cfg: BenchConfig, prefix: str, log: Callable[[str], None]) -> dict:
    """Warm-up, then the paced rounds on a stack of its own; figures under ``prefix``."""
    stack = EmbeddedStack(settings, log=log)
    state = stack.start(with_worker=True)
    try:
        endpoints = state.endpoints_obj()
        workload = Workload(cfg.live_posts)
        log(f"{prefix}: {endpoints.redis_mode} Redis, {settings.stack.workers} worker(s)")
        warm_up(endpoints.broker_bootstrap, settings, cfg, workload, log)
        rounds = max(1, round(cfg.batch_target_per_s * cfg.batch_seconds / cfg.live_posts))
        pids = {name: int(info["pid"]) for name, info in stack.state.processes.items()}
        out = paced_phase(endpoints.broker_bootstrap, settings, cfg, workload, 1, rounds, pids, prefix, log)
        out[f"{prefix}_redis_mode"] = endpoints.redis_mode
        return out
    finally:
        stack.stop()


def render_cluster_table(results: dict, command: str) -> str:
    phases = results["phases"]
    lines = [f"`{command}`", "", "| sustained phase | " + " | ".join(title for _, title in phases) + " |",
             "|---|" + "---|" * len(phases)]
    rows = [("kept up", "kept_up", lambda v: "yes" if v else "no"),
            ("produced at (snapshots/s)", "produced_per_s", lambda v: f"{v:,}"),
            ("produced -> published (snapshots/s)", "snapshots_per_s", lambda v: f"{v:,}"),
            ("last prediction after the last envelope (s)", "drain_s", str),
            ("age of the snapshot a prediction is as of, p50 / p99 (s)", None, None),
            ("CPU per snapshot (us)", "cpu_us_per_component",
             lambda v: ", ".join(f"{k} {us}" for k, us in v.items()))]
    for label, key, show in rows:
        if key is None:
            cells = [f"{results.get(f'{p}_staleness_p50_s')} / {results.get(f'{p}_staleness_p99_s')}"
                     for p, _ in phases]
        else:
            cells = [show(results[f"{p}_{key}"]) if f"{p}_{key}" in results else "n/a" for p, _ in phases]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    last = phases[-1][0]
    workers = results.get(f"{last}_workers", "?")
    target = results.get(f"{last}_target_per_s", 0)
    lines.insert(2, f"Envelopes paced at {target:,.0f} snapshots/s, {workers} worker(s).\n")
    return "\n".join(lines)