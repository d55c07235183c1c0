"""The Redis sequence store against a real Redis: idempotent, out-of-order safe, corrections reported."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

import numpy as np
import pytest
import redis.asyncio as aioredis

from popscore.contract import Counts, Post, Snapshot
from popscore.stream.redis_schema import APPENDED, CORRECTED, DUPLICATE, OUT_OF_ORDER, PLATFORM, RedisKeys, \
    content_tag, decode_content, encode_content
from popscore.stream.sequence_store import SnapshotSequenceStore

pytestmark = pytest.mark.integration


def tag(version: int) -> bytes:
    return content_tag("popscore_reddit_temporal_content", version)


T0 = 1_700_000_000
SHARDS = 4


def snap(post_id: str, dt: int, likes: int) -> Snapshot:
    return Snapshot(post_id=post_id, observed_at=datetime.fromtimestamp(T0 + dt, timezone.utc),
                    counts=Counts(likes=likes))


def run(redis_url, scenario):
    async def main():
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await scenario(SnapshotSequenceStore(client, RedisKeys("test:", SHARDS), ttl_s=3600), client)
        finally:
            await client.aclose()
    return asyncio.run(main())


def test_merge_is_idempotent_and_keeps_time_order(redis_url):
    post = f"p{uuid.uuid4().hex[:8]}"

    async def scenario(store, client):
        first = await store.merge([snap(post, 100, 1), snap(post, 300, 3)])
        late = await store.merge([snap(post, 200, 2)])
        again = await store.merge([snap(post, 200, 2), snap(post, 100, 1)])
        corrected = await store.merge([snap(post, 300, 4)])
        return first, late, again, corrected, await client.ttl(store.keys.sequence(post))

    first, late, again, corrected, ttl = run(redis_url, scenario)
    assert first[0].statuses == [APPENDED, APPENDED]
    assert late[0].statuses == [OUT_OF_ORDER]
    assert again[0].statuses == [DUPLICATE, DUPLICATE] and not again[0].changed
    assert corrected[0].statuses == [CORRECTED]
    assert (first[0].merged_at, late[0].merged_at, again[0].merged_at, corrected[0].merged_at) == \
        ([T0 + 100, T0 + 300], [T0 + 200], [], [T0 + 300])
    assert corrected[0].sequence[:, 0].tolist() == [T0 + 100, T0 + 200, T0 + 300]
    assert corrected[0].sequence[:, 2].tolist() == [1, 2, 4]
    assert again[0].sequence.tobytes() == late[0].sequence.tobytes()
    assert 0 < ttl <= 3600


def test_several_snapshots_of_one_post_in_one_batch_make_one_update_with_post_metadata(redis_url):
    post = f"p{uuid.uuid4().hex[:8]}"

    async def scenario(store, client):
        await store.put_posts([Post(post_id=post, platform="reddit",
                                    created_at=datetime.fromtimestamp(T0, timezone.utc),
                                    attributes={"category": "news"})], np.array([[1.5, 2.5]], dtype=np.float32),
                              encode_content(tag(7), np.array([[0.5, -1.0]]), np.array([[0.25, 0.75]])))
        return await store.merge([snap(post, t, t) for t in (30, 10, 20)])

    updates = run(redis_url, scenario)
    assert len(updates) == 1
    assert updates[0].statuses == [APPENDED, OUT_OF_ORDER, OUT_OF_ORDER]
    assert updates[0].sequence[:, 2].tolist() == [10, 20, 30]
    meta = updates[0].post
    assert (meta.platform, meta.category, meta.created_at) == ("reddit", "news", T0)
    vectors, weights, ok = decode_content([meta.content], tag(7), dim=2, n_weights=2)
    assert ok.tolist() == [True] and vectors.tolist() == [[0.5, -1.0]] and weights.tolist() == [[0.25, 0.75]]


def test_merges_send_no_script_exists_and_reload_the_script_after_a_flush(redis_url):
    post = f"p{uuid.uuid4().hex[:8]}"

    async def script_exists_calls(client) -> int:
        return (await client.info("commandstats")).get("cmdstat_script|exists", {}).get("calls", 0)

    async def scenario(store, client):
        await store.merge([snap(post, 100, 1)])
        before = await script_exists_calls(client)
        await client.script_flush()  # as after a Redis restart: the next merge finds no script
        reloaded = await store.merge([snap(post, 200, 2)])
        again = await store.merge([snap(post, 300, 3)])
        return reloaded, again, before, await script_exists_calls(client)

    reloaded, again, before, after = run(redis_url, scenario)
    assert reloaded[0].statuses == [APPENDED] and again[0].statuses == [APPENDED]
    assert reloaded[0].sequence[:, 0].tolist() == [T0 + 100, T0 + 200]
    assert after == before  # redis-py's Script in a pipeline would have asked SCRIPT EXISTS before each merge


def test_cached_post_metadata_is_not_read_back_and_follows_the_workers_own_writes(redis_url):
    post, early = f"p{uuid.uuid4().hex[:8]}", f"p{uuid.uuid4().hex[:8]}"
    created = datetime.fromtimestamp(T0, timezone.utc)

    async def scenario(store, client):
        store.meta_cache.max_posts = 10
        await store.merge([snap(early, 5, 1)])  # a snapshot before its post: nothing to cache yet
        await store.put_posts([Post(post_id=post, platform="reddit", created_at=created)],
                              np.zeros((1, 2), np.float32), encode_content(tag(7), np.ones((1, 2)), np.ones((1, 2))))
        first_update = (await store.merge([snap(post, 10, 1)]))[0]
        first = first_update.post
        await client.hset(store.keys.post(post), PLATFORM, "youtube")  # behind the worker's back
        cached_update = (await store.merge([snap(post, 20, 2)]))[0]
        cached = cached_update.post
        assert (first_update.post_from_cache, cached_update.post_from_cache) == (False, True)
        await store.put_content([post], encode_content(tag(8), np.ones((1, 2)), np.ones((1, 2))))
        recomputed = (await store.merge([snap(post, 30, 3)]))[0].post
        await store.put_posts([Post(post_id=post, platform="hackernews", created_at=created)],
                              np.zeros((1, 2), np.float32), encode_content(tag(9), np.ones((1, 2)), np.ones((1, 2))))
        reposted = (await store.merge([snap(post, 40, 4)]))[0].post
        return first, cached, recomputed, reposted, len(store.meta_cache), store.meta_cache.get(early)

    first, cached, recomputed, reposted, size, early_meta = run(redis_url, scenario)
    version = lambda meta: decode_content([meta.content], tag(9), 2, 2)[2][0]  # noqa: E731
    assert (first.platform, cached.platform) == ("reddit", "reddit")  # the cached copy, not the changed hash
    assert recomputed.platform == "reddit" and recomputed.content[:8] == tag(8)
    assert reposted.platform == "hackernews" and version(reposted)  # a post event makes the next merge read
    assert size == 1 and early_meta is None


def test_the_metadata_cache_keeps_at_most_max_posts_and_none_when_off(redis_url):
    posts = [f"p{uuid.uuid4().hex[:8]}" for _ in range(3)]
    created = datetime.fromtimestamp(T0, timezone.utc)

    async def scenario(store, client):
        await store.put_posts([Post(post_id=p, platform="reddit", created_at=created) for p in posts],
                              np.zeros((3, 2), np.float32), encode_content(tag(7), np.ones((3, 2)), np.ones((3, 2))))
        off = len(store.meta_cache)
        await store.merge([snap(p, 10, 1) for p in posts])
        off_after = len(store.meta_cache)
        store.meta_cache.max_posts = 2
        updates = await store.merge([snap(p, 20, 2) for p in posts])
        return off, off_after, [store.meta_cache.get(p) is not None for p in posts], updates

    off, off_after, cached, updates = run(redis_url, scenario)
    assert (off, off_after) == (0, 0)
    assert cached == [False, True, True]  # the oldest entry went
    assert all(u.post.platform == "reddit" for u in updates)


def test_a_cached_posts_hash_ttl_is_refreshed_every_refresh_interval_and_outlives_its_sequence(redis_url):
    post = f"p{uuid.uuid4().hex[:8]}"

    async def scenario(store, client):
        store.meta_cache.max_posts = 10
        await store.put_posts([Post(post_id=post, platform="reddit", created_at=datetime.fromtimestamp(T0, timezone.utc))],
                              np.zeros((1, 2), np.float32), encode_content(tag(7), np.ones((1, 2)), np.ones((1, 2))))
        await store.merge([snap(post, 10, 1)])  # read: the hash's TTL refreshed
        after_read = await client.ttl(store.keys.post(post)), await client.ttl(store.keys.sequence(post))
        await client.expire(store.keys.post(post), 50)
        await store.merge([snap(post, 20, 2)])  # cached, refreshed moments ago: TTL left alone
        kept = await client.ttl(store.keys.post(post))
        store.meta_cache.refresh_s = 0
        await store.merge([snap(post, 30, 3)])  # due: refreshed without being read
        return after_read, kept, await client.ttl(store.keys.post(post))

    (post_ttl, seq_ttl), kept, refreshed = run(redis_url, scenario)
    assert 3600 < post_ttl <= 3600 + 3600 and 0 < seq_ttl <= 3600  # the hash outlives the sequence
    assert kept <= 50
    assert refreshed > 3600


def test_a_step_of_posts_of_every_shard_is_merged_and_its_waiting_posts_are_found_in_every_shard(redis_url):
    """One script call per shard, each touching its shard's keys only; the timers read every shard's sets."""
    posts = [f"p{uuid.uuid4().hex[:8]}-{i}" for i in range(24)]

    async def scenario(store, client):
        shards = {store.keys.shard(post) for post in posts}
        merged = await store.merge([snap(post, 60 * k, k) for post in posts for k in range(3)])
        stored = {post: len(await store.get(post)) for post in posts}
        await store.await_posts(posts[:12], due=T0)
        claimed = await store.claim_overdue(T0 + 1, lease_s=30, limit=100)
        await store.done_waiting(posts[:12])
        after = await store.claim_overdue(T0 + 100, lease_s=30, limit=100)
        keys = [key async for key in client.scan_iter(match=store.keys.sequence_pattern())]
        return shards, merged, stored, claimed, after, keys

    shards, merged, stored, claimed, after, keys = run(redis_url, scenario)
    assert shards == set(range(SHARDS))  # the posts span every shard
    assert sorted(u.post_id for u in merged) == sorted(posts) and all(u.statuses == [1, 1, 1] for u in merged)
    assert stored == {post: 3 for post in posts}
    assert sorted(claimed) == sorted(posts[:12]) and not set(after) & set(posts)
    assert {key.decode() for key in keys} >= {RedisKeys("test:", SHARDS).sequence(post) for post in posts}
