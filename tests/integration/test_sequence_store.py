"""The Redis sequence store against a real Redis: idempotent, out-of-order safe, corrections reported."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import uuid
from datetime import datetime, timezone

import numpy as np
import pytest
import redis.asyncio as aioredis

from popscore import features as F
from popscore.contract import Counts, Post, Snapshot
from popscore.stream.redis_schema import APPENDED, CORRECTED, DUPLICATE, OUT_OF_ORDER, PLATFORM, RedisKeys, \
    content_tag, decode_content, decode_sequence, encode_content, encode_sequence, encode_snapshot
from popscore.stream.sequence_store import SnapshotSequenceStore, count_decreases, group_by_post

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


# Two times a minute apart, T0 + 494586 and T0 + 496616: 65 5b 7c fa and 65 5b 84 e8, bytes >= 0x80 next to lower
# ones. en_US.UTF-8's collation (strcoll, what Lua's string `<` uses) puts the later first.
EARLIER, LATER = 494_586, 496_616


def test_times_whose_bytes_have_the_high_bit_are_ordered_by_time(redis_url):
    """The stored order is the times' order, the later one merged first and each inserted out of order."""
    post = f"p{uuid.uuid4().hex[:8]}"
    times = [LATER + 3_600, LATER, EARLIER, EARLIER - 1_024, LATER - 128]

    async def scenario(store, client):
        statuses = [(await store.merge([snap(post, dt, i)]))[0].statuses for i, dt in enumerate(times)]
        return statuses, decode_sequence(await client.get(store.keys.sequence(post)))

    statuses, stored = run(redis_url, scenario)
    assert statuses == [[APPENDED]] + [[OUT_OF_ORDER]] * 4
    assert stored[:, 0].tolist() == sorted(T0 + dt for dt in times)


@pytest.fixture(scope="module")
def collating_redis(tmp_path_factory):
    """A Redis whose LC_COLLATE is en_US.UTF-8 (Redis calls setlocale(LC_COLLATE, "")), the locale compiled with
    localedef into a folder of the test's (LOCPATH): no system locale needed."""
    from popscore.tools.stack.components import redis_server_binary
    from popscore.tools.stack.process import free_port

    if shutil.which("localedef") is None or not os.path.exists("/usr/share/i18n/locales/en_US"):
        pytest.skip("localedef or the en_US locale source (Debian's libc-bin, locales) is missing")
    root = tmp_path_factory.mktemp("collating")
    subprocess.run(["localedef", "-i", "en_US", "-f", "UTF-8", str(root / "en_US.UTF-8")], check=True,
                   capture_output=True)
    port = free_port()
    env = {**os.environ, "LOCPATH": str(root), "LC_ALL": "en_US.UTF-8"}
    server = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(root)], env=env, stdout=subprocess.DEVNULL)
    try:
        import redis

        client, deadline = redis.Redis(port=port), time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_times_are_ordered_by_time_under_a_collation_that_is_not_byte_order(collating_redis):
    """Lua compares strings with strcoll: the script must compare the times as numbers."""
    import redis

    earlier, later = (encode_snapshot(snap("p", dt, 0))[:4] for dt in (EARLIER, LATER))
    lua_less = redis.Redis.from_url(collating_redis).eval("return ARGV[1] < ARGV[2] and 1 or 0", 0, earlier, later)
    assert lua_less == 0, "this Redis's Lua orders these times' bytes as bytes: the test would prove nothing"
    test_times_whose_bytes_have_the_high_bit_are_ordered_by_time(collating_redis)


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


def long_history(post_id: str, n: int, seed: int) -> list[Snapshot]:
    """``n`` snapshots at irregular times (bursts of a minute, gaps of hours), likes mostly growing."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.choice([60, 600, 1800, 7200], size=n))
    likes = np.cumsum(rng.integers(-1, 30, size=n)).clip(0)
    return [snap(post_id, int(t), int(v)) for t, v in zip(times, likes)]


def features_of(sequences, created, n_earlier=None):
    spec = F.DEFAULT_SPEC
    weights = np.stack([F.weight_vector({"likes": 1.0})] * len(sequences))
    as_of = np.array([s[-1, 0] for s in sequences])
    return F.build_sequence(spec, sequences, np.full(len(sequences), created), as_of, weights, n_earlier=n_earlier)


def test_a_merge_returns_the_tail_the_features_read_and_they_equal_those_of_the_whole_sequence(redis_url):
    """Posts of 300 observations: newer records appended, an old one inserted, an old one corrected, the batch
    redelivered. Each merge's tail (and the count of records before it) gives the features of the whole stored
    sequence, and its counter decreases; a look-back an hour short does not."""
    posts = [f"p{uuid.uuid4().hex[:8]}" for _ in range(3)]
    appended, inserted, corrected = posts
    histories = {post: long_history(post, 300, seed) for seed, post in enumerate(posts)}
    last = {post: int(h[-1].observed_at.timestamp()) - T0 for post, h in histories.items()}
    at_40 = {post: int(h[40].observed_at.timestamp()) - T0 for post, h in histories.items()}
    step = [snap(appended, last[appended] + 60, 10_000), snap(appended, last[appended] + 120, 9_000),
            snap(inserted, at_40[inserted] + 1, 0), snap(inserted, last[inserted] + 60, 5),
            snap(corrected, at_40[corrected], 7)]
    lookback = F.lookback_s(F.DEFAULT_SPEC)

    async def scenario(store, client):
        await store.put_posts([Post(post_id=post, platform="hackernews",
                                    created_at=datetime.fromtimestamp(T0, timezone.utc)) for post in posts],
                              [np.zeros(2, np.float32)] * 3, [None] * 3)
        merges = []
        for snapshots in ([s for h in histories.values() for s in h], step, step):  # the last: redelivered
            updates = await store.merge(snapshots)
            merges.append((updates, {p: decode_sequence(await client.get(store.keys.sequence(p))) for p in posts}))
        return merges

    merges = run(redis_url, scenario)
    (first, _), (merged, stored), (again, stored_again) = merges
    assert [u.statuses for u in first] == [[APPENDED] * 300] * 3 and all(len(u.sequence) == 300 for u in first)
    assert {u.post_id: u.statuses for u in merged} == \
        {appended: [APPENDED, APPENDED], inserted: [OUT_OF_ORDER, APPENDED], corrected: [CORRECTED]}
    assert all(u.statuses == [DUPLICATE] * len(u.statuses) and not u.changed for u in again)
    assert all(np.array_equal(stored_again[p], stored[p], equal_nan=True) for p in posts)  # redelivery changed nothing
    assert stored[corrected][40, 2] == 7 and len(stored[inserted]) == 302 and len(stored[appended]) == 302
    for updates, whole in merges[:3]:
        for update in updates:
            full = whole[update.post_id]
            # The look-back's tail, not the sequence, unless older records changed: then from the one before them
            # (the first merge appended all 300; the second inserted and corrected the 41st)
            if updates is again or update.post_id == appended and updates is merged:
                assert len(update.sequence) < 60
            np.testing.assert_array_equal(np.concatenate([full[:update.n_earlier], update.sequence]), full)
            for name, values in features_of([full], T0).items():
                np.testing.assert_array_equal(features_of([update.sequence], T0, [update.n_earlier])[name], values,
                                              err_msg=f"{update.post_id} {name}")
    by_post = {u.post_id: u for u in merged}
    assert by_post[inserted].n_earlier == 40  # from the record before the one inserted after the 41st
    assert by_post[corrected].n_earlier == 39  # from the record before the one corrected
    # The decreases the merge brought, counted from the tails, as from the whole sequences.
    merged_at = [by_post[p].merged_at for p in posts]
    counted = count_decreases([by_post[p].sequence for p in posts], merged_at)
    assert counted == count_decreases([stored[p] for p in posts], merged_at) > 0


def test_features_from_a_merge_with_a_look_back_an_hour_short_differ_from_those_of_the_whole_sequence(redis_url):
    """What makes the test above able to fail: with a look-back shorter than the features', the tail misses
    records they read."""
    post = f"p{uuid.uuid4().hex[:8]}"
    lookback = F.lookback_s(F.DEFAULT_SPEC)

    async def scenario(store, client):
        await store.put_posts([Post(post_id=post, platform="hackernews",
                                    created_at=datetime.fromtimestamp(T0, timezone.utc))], [np.zeros(2, np.float32)],
                              [None])
        await store.merge([snap(post, 600 * k, 3 * k) for k in range(300)])
        short = await store.merge_records(group_by_post([snap(post, 600 * 300, 900)]),
                                          lambda _: lookback - 3600)
        enough = await store.merge_records(group_by_post([snap(post, 600 * 301, 903)]),
                                           lambda _: lookback)
        return short[0], enough[0], await store.get(post)

    short, enough, whole = run(redis_url, scenario)
    assert short.n_earlier + len(short.sequence) == 301 and enough.n_earlier + len(enough.sequence) == 302
    as_of_short = features_of([whole[:301]], T0)
    assert not all(np.array_equal(features_of([short.sequence], T0, [short.n_earlier])[name], as_of_short[name])
                   for name in as_of_short)
    for name, values in features_of([whole], T0).items():
        np.testing.assert_array_equal(features_of([enough.sequence], T0, [enough.n_earlier])[name], values)


def test_a_post_without_its_post_event_gets_its_whole_sequence_whose_first_observation_stands_in(redis_url):
    post = f"p{uuid.uuid4().hex[:8]}"

    async def scenario(store, client):
        await store.merge(long_history(post, 100, 7))
        return await store.merge([snap(post, 10_000_000, 1)])

    update, = run(redis_url, scenario)
    assert update.post.created_at is None and update.n_earlier == 0 and len(update.sequence) == 101


def test_a_posts_tail_reaches_back_as_far_as_its_platforms_model_reads_and_the_longest_before_its_platform_is_known(
        redis_url):
    posts = {"reddit": f"p{uuid.uuid4().hex[:8]}", "youtube": f"p{uuid.uuid4().hex[:8]}"}
    lookbacks = {None: 96 * 3600.0, "youtube": 96 * 3600.0, "reddit": 8 * 3600.0}
    asked = []

    def lookback(platform):
        asked.append(platform)
        return lookbacks[platform]

    async def scenario(store, client):
        store.meta_cache.max_posts = 10
        await store.put_posts([Post(post_id=post, platform=platform, created_at=datetime.fromtimestamp(T0, timezone.utc))
                               for platform, post in posts.items()], [np.zeros(2, np.float32)] * 2, [None] * 2)
        for post in posts.values():  # stored as a merge would have, without the merge's post metadata cache
            await client.set(store.keys.sequence(post), encode_sequence(encode_snapshot(snap(post, 1800 * k, k))
                                                                        for k in range(300)))
        unknown = await store.merge_records(group_by_post([snap(post, 1800 * 300, 1) for post in posts.values()]),
                                            lookback)
        known = await store.merge_records(group_by_post([snap(post, 1800 * 301, 1) for post in posts.values()]),
                                          lookback)
        return unknown, known

    unknown, known = run(redis_url, scenario)
    assert [u.post_id for u in known] == list(posts.values())  # in the order given
    # 30 min apart: 8 h back is 16 records before the latest, 96 h 192; and the latest itself
    assert [len(u.sequence) for u in unknown] == [193, 193]  # the platforms not held yet: the longest
    assert [len(u.sequence) for u in known] == [17, 193]
    assert set(asked) == {None, "reddit", "youtube"}


def test_a_step_of_posts_of_every_shard_is_merged_and_its_waiting_posts_are_found_in_every_shard(redis_url):
    """One script call per shard, each touching its shard's keys only; the timers read every shard's sets."""
    posts = [f"p{uuid.uuid4().hex[:8]}-{i}" for i in range(24)]

    async def scenario(store, client):
        shards = {store.keys.shard(post) for post in posts}
        merged = await store.merge([snap(post, 60 * k, k) for post in posts for k in range(3)])
        stored = {post: len(await store.get(post)) for post in posts}
        await store.await_posts(posts[:12], due=T0)
        claimed = await store.claim_overdue(T0 + 1, lease_until=T0 + 31, limit=100)
        await store.release_overdue(posts[:12], lease_until=T0 + 31)
        after = await store.claim_overdue(T0 + 100, lease_until=T0 + 130, limit=100)
        keys = [key async for key in client.scan_iter(match=store.keys.sequence_pattern())]
        return shards, merged, stored, claimed, after, keys

    shards, merged, stored, claimed, after, keys = run(redis_url, scenario)
    assert shards == set(range(SHARDS))  # the posts span every shard
    assert sorted(u.post_id for u in merged) == sorted(posts) and all(u.statuses == [1, 1, 1] for u in merged)
    assert stored == {post: 3 for post in posts}
    assert sorted(claimed) == sorted(posts[:12]) and not set(after) & set(posts)
    assert {key.decode() for key in keys} >= {RedisKeys("test:", SHARDS).sequence(post) for post in posts}


def test_a_snapshot_merged_while_its_post_is_scored_without_the_post_keeps_it_waiting(redis_url):
    """The overdue timer leases a waiting post, scores it and releases it; a snapshot of it merged in between
    registers it again, so the release leaves it to be scored when due (not the newest observation unscored)."""
    calm, busy = (f"p{uuid.uuid4().hex[:8]}-{name}" for name in ("calm", "busy"))

    async def scenario(store, client):
        await store.await_posts([calm, busy], due=T0)
        await store.await_posts([calm], due=T0 + 50)  # a waiting post keeps its earlier time
        claimed = await store.claim_overdue(T0 + 1, lease_until=T0 + 61, limit=100)
        # while the timer scores them: a new snapshot of ``busy`` (its post still missing) registers it again
        await store.await_posts([busy], due=T0 + 11)
        released = await store.release_overdue(claimed, lease_until=T0 + 61)
        again = await store.claim_overdue(T0 + 12, lease_until=T0 + 72, limit=100)
        await store.done_waiting([busy])  # its post came: it leaves, whatever its time
        left = {m.decode() for shard in store.keys.all_shards
                for m in await client.zrange(store.keys.awaiting(shard), 0, -1)}
        return claimed, released, again, left

    claimed, released, again, left = run(redis_url, scenario)
    assert sorted(claimed) == sorted([calm, busy]) and released == 1
    assert again == [busy]  # due at T0 + 11, not at the lease end
    assert not left & {calm, busy}
