"""Media retries (``stream/media_retry.py``) under the faults their design answers: a worker killed after it took
(leased) a retry, and a worker leaving the consumer group with retries pending in its shards. On a private
embedded stack (real broker, Redis, Triton, workers as processes) with a real S3-compatible store (SeaweedFS,
``tests/integration/s3_server.py``) stopped for the outage and started again on its data.

- Killed mid-retry: the worker dies (SIGKILL at the ``media_retry.after_claim`` failpoint) holding the lease of a
  retry it has not read; the retry stays scheduled, moved to the lease's end; a new worker takes it only once the
  lease is over, and publishes what the first would have (retry 1, the picture read, the same ``as_of``s),
  once: its counters say one recovered and nothing else, and nothing is left scheduled.
- Rebalance: two workers, posts waiting for a retry in every shard, each worker retrying its own; one stops (the
  store still down), the other takes its partitions and, when the store is back, recovers every post, those of
  the stopped worker's shards included, each once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone

import pytest
from redis import Redis

from popscore.stream.redis_schema import RedisKeys
from popscore.tools.stack.process import group_alive, stop_group
from tests.integration import test_media, test_media_s3
from tests.integration.kafka_io import consume_until, produce
from tests.integration.test_media_s3 import BUCKET, PREFIX, poll, s3_server  # noqa: F401 (a fixture)
from tests.integration.test_platform_routing import counts, scrape_url

pytestmark = pytest.mark.integration

LEASE_S = 20.0  # longer than a worker takes to start here, so a retry taken again shows the lease was waited out


@pytest.fixture(scope="module")
def private_stack(s3_server, private_stack):  # noqa: F811
    """The shared private-stack fixture, started once the S3 server is up (its settings name the endpoint)."""
    return private_stack


def configure_private_stack(settings) -> None:
    test_media_s3.configure_private_stack(settings)
    # Retries every 2 s growing by 1.3x, for about four minutes: the posts outlast the workers' restarts and the
    # rebalance with the store down, and are recovered within seconds once it is back.
    media = settings.media
    media.retry_after_s, media.retry_backoff, media.retry_attempts, media.retry_scan_s = 2.0, 1.3, 14, 0.25
    media.retry_lease_s = LEASE_S


def scrape_port(port: int) -> dict[str, list[tuple[dict, float]]]:
    return scrape_url(f"http://127.0.0.1:{port}/metrics")


def metrics_ports(stack) -> dict[str, int]:
    ports = {"worker": stack.state.endpoints_obj().worker_metrics_port}
    ports.update({name: int(info["metrics_port"]) for name, info in stack.state.processes.items()
                  if name.startswith("worker-")})
    return ports


def retry_outcomes(port: int) -> Counter:
    samples = scrape_port(port)
    outcomes = Counter({outcome: n for (outcome,), n in counts(samples["popscore_media_retries_total"],
                                                                "outcome").items()})
    outcomes["scheduled"] = int(sum(v for _, v in samples["popscore_media_retries_scheduled_total"]))
    return +outcomes


def held_partitions(port: int, topic: str) -> set[int]:
    """The partitions of ``topic`` a worker has held (its lag gauge has a series for each it was assigned)."""
    return {int(labels["partition"]) for labels, _ in scrape_port(port)["popscore_consumer_lag_records"]
            if labels["topic"] == topic}


def predictions(endpoints, topic: str, post_ids: set[str], done, timeout_s: float = 120) -> list[dict]:
    """The predictions of ``post_ids`` on the topic once ``done(them)`` holds."""
    def mine(messages) -> list[dict]:
        return [r for r in (json.loads(m.value) for m in messages) if r["post_id"] in post_ids]

    return mine(asyncio.run(consume_until(endpoints.broker_bootstrap, topic, lambda ms: done(mine(ms)), timeout_s)))


def retried(records: list[dict]) -> list[dict]:
    return [r for r in records if "media_retry" in r["explanation"]]


def pending(redis: Redis, keys: RedisKeys) -> int:
    return sum(redis.zcard(keys.media_retry(shard)) for shard in keys.all_shards)


def posts_and_snapshots(post_ids: list[str]) -> tuple[list, list, dict[str, str]]:
    """(post records, snapshot records, post_id -> the as_of of its latest snapshot): two snapshots each."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    s3 = f"s3://{BUCKET}/{PREFIX}"
    posts = [test_media_s3.post(p, {"image_uris": [f"{s3}{p}.jpg"]}) for p in post_ids]
    snapshots = [test_media_s3.snapshot(p, now - timedelta(minutes=m), likes) for p in post_ids
                 for m, likes in ((50, 40), (20, 90))]
    latest = {p: (now - timedelta(minutes=20)).isoformat().replace("+00:00", "Z") for p in post_ids}
    return posts, snapshots, latest


def put_pictures(s3_server, post_ids: list[str]) -> None:  # noqa: F811
    if s3_server.process is None or s3_server.process.poll() is not None:
        s3_server.start()
    client = s3_server.client()
    for n, p in enumerate(post_ids):
        client.put_object(Bucket=BUCKET, Key=f"{PREFIX}{p}.jpg", Body=test_media.picture(500 + n, fmt="JPEG"))


def check_recovered_once(records: list[dict], post_ids: set[str], latest: dict[str, str]) -> None:
    """Each post scored without its picture, then re-scored once with it, at retry 1 or later, static and
    temporal, as of the same observations."""
    for p in post_ids:
        mine = [r for r in records if r["post_id"] == p]
        again = retried(mine)
        assert Counter(r["model"] for r in again) == Counter({"static": 1, "temporal": 1}), (p, again)
        first_static = next(r for r in mine if r["model"] == "static")
        assert first_static["explanation"]["media_problem"] == "unavailable", first_static
        for r in again:
            assert r["explanation"]["modality_weights"]["visual"] > 0, r
            assert r["as_of"] == (first_static["as_of"] if r["model"] == "static" else latest[p]), r


def test_a_worker_killed_holding_a_retry_leaves_it_to_the_next_after_the_lease(private_stack, s3_server):  # noqa
    settings, endpoints = private_stack.settings, private_stack.state.endpoints_obj()
    topics, keys = settings.kafka.topics, RedisKeys.of(settings)
    redis = Redis.from_url(endpoints.redis_url)
    post_id = "killed-retry"
    shard = keys.shard(post_id)
    put_pictures(s3_server, [post_id])
    assert pending(redis, keys) == 0, "nothing scheduled before: the armed worker dies on this test's retry"
    posts, snapshots, latest = posts_and_snapshots([post_id])

    s3_server.stop()
    settings.worker.failpoints = "media_retry.after_claim=1"
    try:
        private_stack.restart_worker()
        pid = int(private_stack.state.processes["worker"]["pid"])
        asyncio.run(produce(endpoints.broker_bootstrap, topics.snapshots, snapshots))  # they wait for the post
        sent_at = time.time()
        asyncio.run(produce(endpoints.broker_bootstrap, topics.posts, posts))
        poll(lambda: not group_alive(pid), 60, "the worker to die holding the retry")
    finally:
        settings.worker.failpoints = ""
        if group_alive(int(private_stack.state.processes["worker"]["pid"])):
            private_stack.stop_worker()
    # It died holding the lease: the retry is still scheduled, at the lease's end, its retries unchanged.
    lease_end = redis.zscore(keys.media_retry(shard), post_id)
    assert lease_end is not None and lease_end >= sent_at + LEASE_S, (lease_end, sent_at)
    assert json.loads(redis.hget(keys.media_retry_posts(shard), post_id))["retries"] == 0

    s3_server.start()  # the store is back before anyone takes the retry again
    private_stack.start_worker()
    records = predictions(endpoints, topics.predictions, {post_id},
                          lambda rs: {r["model"] for r in retried(rs)} == {"static", "temporal"})
    # Nothing published by the killed worker's retry, then the new worker's, once, as the first would have.
    check_recovered_once(records, {post_id}, latest)
    again = retried(records)
    assert [r["explanation"]["media_retry"] for r in again] == [1, 1], again
    produced = min(datetime.fromisoformat(r["produced_at"].replace("Z", "+00:00")).timestamp() for r in again)
    assert produced >= lease_end - 1, (produced, lease_end)  # not before the lease ended (1 s: clock rounding)
    poll(lambda: redis.zscore(keys.media_retry(shard), post_id) is None, 30, "the retry done")
    assert redis.hget(keys.media_retry_posts(shard), post_id) is None
    # The new worker's counters: one retry, recovered; nothing scheduled by it (the first worker did).
    assert retry_outcomes(endpoints.worker_metrics_port) == Counter({"recovered": 1})
    redis.close()


def test_a_stopped_workers_pending_retries_are_performed_by_the_worker_taking_its_partitions(
        private_stack, s3_server):  # noqa: F811
    settings, endpoints = private_stack.settings, private_stack.state.endpoints_obj()
    topics, keys = settings.kafka.topics, RedisKeys.of(settings)
    redis = Redis.from_url(endpoints.redis_url)
    by_shard: dict[int, list[str]] = defaultdict(list)
    n = 0
    while min((len(by_shard[s]) for s in keys.all_shards), default=0) < 2:  # two posts in every shard
        p = f"rebalance-{n}"
        if len(by_shard[keys.shard(p)]) < 2:
            by_shard[keys.shard(p)].append(p)
        n += 1
    post_ids = [p for group in by_shard.values() for p in group]
    put_pictures(s3_server, post_ids)
    posts, snapshots, latest = posts_and_snapshots(post_ids)

    settings.stack.workers = 2
    try:
        private_stack.restart_worker()
    finally:
        settings.stack.workers = 1
    ports = metrics_ports(private_stack)
    assert set(ports) == {"worker", "worker-2"}
    held = poll(lambda: (lambda h: h if set().union(*h.values()) == set(keys.all_shards) else None)(
        {name: held_partitions(port, topics.posts) for name, port in ports.items()}), 30,
        "both workers' partitions in their lag gauges")
    assert held["worker"] and held["worker-2"] and not held["worker"] & held["worker-2"], held

    s3_server.stop()
    asyncio.run(produce(endpoints.broker_bootstrap, topics.posts, posts))
    asyncio.run(produce(endpoints.broker_bootstrap, topics.snapshots, snapshots))
    predictions(endpoints, topics.predictions, set(post_ids), lambda rs: Counter(r["model"] for r in rs) == Counter(
        {"static": len(post_ids), "temporal": len(post_ids)}))
    # Each worker retries the posts of its own shards (the store still down: unavailable again).
    poll(lambda: all(retry_outcomes(port)["unavailable"] >= len(held[name]) * 2 for name, port in ports.items()),
             60, "both workers retrying their shards' posts")
    assert {name: retry_outcomes(port)["scheduled"] for name, port in ports.items()} == {
        name: 2 * len(held[name]) for name in ports}, "each scheduled its own partitions' posts"

    # worker-2 leaves the group (SIGTERM) with its shards' retries pending; the other takes its partitions.
    stop_group(int(private_stack.state.processes["worker-2"]["pid"]), settings.stack.stop_timeout_s)
    assert pending(redis, keys) == len(post_ids)
    poll(lambda: held_partitions(ports["worker"], topics.posts) == set(keys.all_shards), 60,
             "the remaining worker holding every partition")
    before = retry_outcomes(ports["worker"])

    s3_server.start()
    records = predictions(endpoints, topics.predictions, set(post_ids), lambda rs: Counter(
        r["model"] for r in retried(rs)) == Counter({"static": len(post_ids), "temporal": len(post_ids)}),
        timeout_s=180)
    check_recovered_once(records, set(post_ids), latest)
    poll(lambda: pending(redis, keys) == 0, 30, "nothing left to retry")
    after = retry_outcomes(ports["worker"])
    # Every post recovered by the remaining worker, those of worker-2's shards included, once each.
    assert after["recovered"] - before["recovered"] == len(post_ids), (before, after)
    assert after["given_up"] == after["rejected"] == 0, after
    redis.close()
