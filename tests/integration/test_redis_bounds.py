"""Issue 21 item 5 through the real worker and Redis: whatever platform and category strings producers send,
the leaderboards stay few and expire, every key family expires or is bounded, and Redis runs with the memory
budget the settings derive.

1,000 posts, each of its own unknown platform and category, go through a private embedded stack with small
bounds; then the boards are counted, every key's TTL is read, and ``maxmemory`` is asked of Redis.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import redis.asyncio as aioredis

from popscore.stream.leaderboard import Leaderboards
from popscore.stream.redis_schema import CATEGORY_BOARDS, PLATFORM_BOARDS, BoardLimits, RecordedPrediction, \
    RedisKeys, prediction_field
from tests.integration.kafka_io import produce
from tests.integration.outcomes import board_members, iso, metric, redis_of, send_snapshots

pytestmark = pytest.mark.integration

N_POSTS = 1_000
KNOWN = "hackernews"  # a platform with a model set: every 50th post, its board is not counted against the bound
MAX_PLATFORM_BOARDS, MAX_CATEGORY_BOARDS, BOARD_TTL_S = 5, 7, 3600
UNBOUNDED_FAMILIES = {"awaiting", "maturity"}  # one member per live post, removed when due (docs/architecture.md)


def configure_private_stack(settings) -> None:
    settings.worker.max_platform_boards = MAX_PLATFORM_BOARDS
    settings.worker.max_category_boards = MAX_CATEGORY_BOARDS
    settings.worker.leaderboard_ttl_s = BOARD_TTL_S
    settings.redis.capacity_posts = 20_000  # a budget of its own, not the default, to see it reach Redis


def traffic(run: str):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    posts, snapshots = [], []
    for i in range(N_POSTS):
        post_id = f"{run}-{i}"
        posts.append((post_id.encode(), json.dumps({
            "schema": "post.v1", "post_id": post_id, "platform": KNOWN if i % 50 == 0 else f"plat{run}{i}",
            "created_at": iso(now - timedelta(hours=3)),
            "text": {"title": f"post {i}"}, "attributes": {"category": f"cat-{run}-{i}"}}).encode()))
        at = now - timedelta(hours=1)
        snapshots.append((post_id, int(at.timestamp()), json.dumps({
            "schema": "snapshot.v1", "post_id": post_id, "observed_at": iso(at),
            "counts": {"likes": i, "comments": i // 2}}).encode()))
    return posts, snapshots


def test_a_thousand_platforms_and_categories_make_few_boards_and_every_key_is_bounded(private_stack):
    settings, endpoints = private_stack.settings, private_stack.state.endpoints_obj()
    keys = RedisKeys.of(settings)
    client = redis_of(private_stack)
    run = uuid.uuid4().hex[:6]
    posts, snapshots = traffic(run)
    asyncio.run(produce(endpoints.broker_bootstrap, settings.kafka.topics.posts, posts))
    send_snapshots(private_stack, snapshots, envelopes=True)

    post_ids = [key.decode() for key, _ in posts]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        with client.pipeline(transaction=False) as pipe:
            for post_id in post_ids:
                pipe.hexists(keys.post(post_id), prediction_field("temporal"))
            if all(pipe.execute()):
                break
        time.sleep(0.5)
    else:
        pytest.fail("not every post got its temporal prediction recorded")

    # The bounds hold per shard (each shard's registries admit their own boards: redis_schema), so the deployment
    # has at most shards x bound boards of each family.
    all_boards = set()
    for shard in keys.all_shards:
        boards = {key.decode()[len(keys.board("", shard)):]
                  for key in client.scan_iter(match=keys.board("top:*", shard), count=1000)}
        ours = {b for b in boards if b.startswith(f"top:platform:plat{run}")}
        category_boards = {b for b in boards if b.startswith("top:category:")}
        assert len(ours) <= MAX_PLATFORM_BOARDS and "top:platform:other" in boards, (shard, sorted(boards))
        assert len(category_boards) <= MAX_CATEGORY_BOARDS, (shard, sorted(category_boards))
        assert client.zcard(keys.board_names(PLATFORM_BOARDS, shard)) <= MAX_PLATFORM_BOARDS
        assert client.zcard(keys.board_names(CATEGORY_BOARDS, shard)) <= MAX_CATEGORY_BOARDS
        all_boards |= boards
    assert len({b for b in all_boards if b.startswith(f"top:platform:plat{run}")}) <= keys.shards * MAX_PLATFORM_BOARDS
    assert len({b for b in all_boards if b.startswith("top:category:")}) <= keys.shards * MAX_CATEGORY_BOARDS
    known = board_members(client, keys, f"top:platform:{KNOWN}")
    assert {p for i, p in enumerate(post_ids) if i % 50 == 0} <= known
    # The posts beyond the bounds are still on the overall and the 'other' boards, not lost from the view.
    assert board_members(client, keys, "top:platform:other") & set(post_ids)

    without_ttl = []
    for key in client.scan_iter(match=f"{keys.prefix}*", count=1000):
        ttl = client.ttl(key)
        name = key.decode()[len(keys.prefix):].partition("}:")[2]  # the family after the shard's tag
        if name.startswith(("lb:", "boards:")):
            assert 0 < ttl <= BOARD_TTL_S, (name, ttl)
        if ttl == -1:
            without_ttl.append(name)
    assert set(without_ttl) <= UNBOUNDED_FAMILIES, without_ttl

    memory = client.config_get("maxmemory")
    assert int(memory["maxmemory"]) == settings.redis.memory_budget_bytes() > 0
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    # The worker exports Redis's memory figures for PopscoreRedisMemoryHigh (its gauges timer).
    deadline = time.monotonic() + 4 * settings.worker.gauge_interval_s
    while metric(private_stack, "popscore_redis_maxmemory_bytes") == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert metric(private_stack, "popscore_redis_maxmemory_bytes") == settings.redis.memory_budget_bytes()
    assert 0 < metric(private_stack, "popscore_redis_used_memory_bytes") < settings.redis.memory_budget_bytes()
    # The budget's per-post figure for what is not the sequence covers a real post hash (a model-scored one
    # holds its content vector and both predictions).
    hash_bytes = max(client.memory_usage(keys.post(post_id), samples=0) for post_id in post_ids[::50])
    print(f"post hash MEMORY USAGE up to {hash_bytes} B; budget {settings.redis.memory_budget_bytes():,} B")
    assert hash_bytes <= settings.redis.post_extra_bytes, hash_bytes


def test_a_board_expires_when_no_prediction_enters_it(private_stack):
    """Against the stack's Redis: a board's TTL is refreshed by each write and it goes once writes stop."""
    redis_url = private_stack.state.endpoints_obj().redis_url
    prefix = f"lbttl-{uuid.uuid4().hex[:8]}:"
    keys = RedisKeys(prefix, 1)  # one shard: both predictions write the same boards

    def prediction(post: str) -> RecordedPrediction:
        return RecordedPrediction(post, 1.0, 0.0, "someplatform", "somecategory", "{}", 0.0)

    async def scenario() -> tuple[list[int], float]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            boards = Leaderboards(client, keys, size=10, ttl_s=600, limits=BoardLimits(ttl_s=2))
            await boards.record("temporal", [prediction("a")])
            await asyncio.sleep(1.2)
            await boards.record("temporal", [prediction("b")])  # refreshes the TTL of every board written
            ttls = [await client.pttl(keys.board(name, 0)) for name in
                    ("top", "rising", "top:platform:someplatform", "top:category:somecategory")]
            ttls += [await client.pttl(keys.board_names(family, 0)) for family in (CATEGORY_BOARDS, PLATFORM_BOARDS)]
            written = time.monotonic()
            while await client.exists(keys.board("top:category:somecategory", 0)) and time.monotonic() - written < 10:
                await asyncio.sleep(0.1)
            gone_after = time.monotonic() - written
            assert not await client.keys(f"{keys.tag(0)}lb:*") and not await client.keys(f"{keys.tag(0)}boards:*")
            return ttls, gone_after
        finally:
            await client.aclose()

    ttls, gone_after = asyncio.run(scenario())
    # Refreshed at the second write: without it the boards would have less than 0.8 s left.
    assert all(1_000 < ttl <= 2_000 for ttl in ttls), ttls
    assert 1.0 < gone_after < 5.0, gone_after
