"""Each post's early-popularity sequence in Redis: compact, idempotent, out-of-order safe, batched.

A sequence is one Redis string of fixed-width records sorted by time (the layout of this and every other key
is in ``redis_schema``). merge_snapshots.lua merges new records into place atomically: a record already present
is a no-op (redelivery changes nothing), an older one is inserted in order, a different record at the same time
replaces the old one and is reported as a correction. The script returns the tail of the merged sequence that
the features read (``popscore.features.lookback_s``) and the number of records before it, so that features are
computed from exactly what is stored, in the same round trip, at a cost that does not grow with the number of
observations stored. Post metadata (created_at, platform, ...)
lives in a small hash beside it. The sequence expires ``ttl_s`` after its last update, the hash up to
``post_ttl_refresh_s`` later (``PostMetaCache``: the script reads a post's hash only where the worker does not
hold it, and refreshes its TTL only every ``post_ttl_refresh_s``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from itertools import groupby

import numpy as np

from popscore import features as F
from popscore.contract import Post, Snapshot
from popscore.stream.redis_schema import CLAIM_AWAITING, CONTENT, CONTENT_INPUT_FIELDS, DUPLICATE, KEEP_META, \
    META_FIELDS, MERGE_SNAPSHOTS, READ_META, REFRESH_TTL, RELEASE_AWAITING, PostMeta, RedisKeys, \
    claim_awaiting_call, decode_records, decode_sequence, decode_sequences, encode_post, encode_snapshot, \
    kept_predictions, lua_source, merge_snapshots_call, post_ttl_s, record_time, release_awaiting_call
from popscore.stream.redis_client import AsyncClient, on_node, primaries, repeat_on_node
from popscore.stream.redis_script import PipelinedScript


DEFAULT_LOOKBACK_S = F.lookback_s(F.DEFAULT_SPEC)


def group_by_post(snapshots: Iterable[Snapshot], into: dict[str, list[bytes]] | None = None
                  ) -> dict[str, list[bytes]]:
    """Encoded snapshots per post, in arrival order (44 bytes each instead of a validated model object, so a
    window of hundreds of thousands stays small)."""
    by_post = {} if into is None else into
    for snapshot in snapshots:
        records = by_post.get(snapshot.post_id)
        if records is None:
            by_post[snapshot.post_id] = [encode_snapshot(snapshot)]
        else:
            records.append(encode_snapshot(snapshot))
    return by_post


def steps_by_post(by_post: dict[str, list[bytes]], max_snapshots: int) -> list[dict[str, list[bytes]]]:
    """Split posts into steps of about ``max_snapshots`` snapshots; a post's snapshots stay in one step, so it
    is merged once and scored once."""
    steps, step, size = [], {}, 0
    for post_id, records in by_post.items():
        step[post_id] = records
        size += len(records)
        if size >= max_snapshots:
            steps.append(step)
            step, size = {}, 0
    if step:
        steps.append(step)
    return steps


def count_decreases(sequences: Sequence[np.ndarray], merged_at: Sequence[Sequence[int]]) -> int:
    """Counter decreases a merge brought: over the steps (consecutive observations of one post) with an end
    among the post's just-merged observation times (``merged_at``), the counters that went down. Decreases
    are kept as observed (never hidden) and counted once, when their step appears or changes, not again at
    every later merge of the post."""
    pairs = [(s, t) for s, t in zip(sequences, merged_at) if len(s) > 1 and len(t)]
    if not pairs:
        return 0
    table = np.concatenate([s for s, _ in pairs])
    post = np.repeat(np.arange(len(pairs), dtype=np.int64), [len(s) for s, _ in pairs])
    keys = (post << 32) | table[:, 0].astype(np.int64)  # ascending: posts in order, each sorted by time
    merged = np.fromiter(((i << 32) | int(t) for i, (_, times) in enumerate(pairs) for t in times), np.int64)
    at = np.minimum(np.searchsorted(keys, merged), len(keys) - 1)
    rows = at[keys[at] == merged]
    ends = np.unique(np.concatenate([rows, rows + 1]))  # the steps into and out of each merged row, by end row
    ends = ends[(ends > 0) & (ends < len(keys))]
    ends = ends[post[ends] == post[ends - 1]]  # not the step from one post to the next
    return int((table[ends, 1:] < table[ends - 1, 1:]).sum())  # NaN (a missing counter) compares False


class PostMetaCache:
    """The worker's copy of its posts' metadata, so a merge need not read it back (an HMGET and its ~300 B reply
    per snapshot) nor refresh its TTL every time (``refresh_s``; the hash's TTL is that much
    longer than the sequence's, so it still outlives it). Entries come from merges, and follow the worker's own
    writes (a post event drops the entry, a recomputed content vector replaces its content); a post not seen
    yet is never cached. Posts and snapshots are keyed and partitioned alike, so one worker writes and reads a
    post; the worker clears the cache when its partitions change. Bounded: the oldest entry goes first
    (``max_posts`` 0 disables it)."""

    def __init__(self, max_posts: int, refresh_s: float = 3600.0) -> None:
        self.max_posts = max_posts
        self.refresh_s = refresh_s
        self._posts: dict[str, tuple[PostMeta, float]] = {}  # post_id -> (metadata, when its TTL was refreshed)

    def get(self, post_id: str) -> "PostMeta | None":
        entry = self._posts.get(post_id)
        return None if entry is None else entry[0]

    def for_merge(self, post_id: str, now: float) -> "tuple[PostMeta | None, int]":
        """The cached metadata and what the merge at ``now`` does with the post's hash (``KEEP_META``,
        ``READ_META``, ``REFRESH_TTL``); a refresh is taken as done."""
        entry = self._posts.get(post_id)
        if entry is None:
            return None, READ_META
        if now - entry[1] < self.refresh_s:
            return entry[0], KEEP_META
        self._posts[post_id] = (entry[0], now)
        return entry[0], REFRESH_TTL

    def put(self, post_id: str, meta: "PostMeta", refreshed_at: float) -> None:
        if self.max_posts <= 0 or meta.created_at is None:
            return
        if post_id not in self._posts and len(self._posts) >= self.max_posts:
            del self._posts[next(iter(self._posts))]
        self._posts[post_id] = (meta, refreshed_at)

    def set_content(self, post_id: str, content: bytes) -> None:
        entry = self._posts.get(post_id)
        if entry is not None:
            self._posts[post_id] = (replace(entry[0], content=content), entry[1])

    def forget(self, post_id: str) -> None:
        self._posts.pop(post_id, None)

    def clear(self) -> None:
        self._posts.clear()

    def __len__(self) -> int:
        return len(self._posts)


@dataclass
class SequenceUpdate:
    post_id: str
    sequence: np.ndarray  # the stored sequence, or its tail from a merge: what the features read of it
    post: PostMeta
    statuses: list[int] = field(default_factory=list)
    merged_at: list[int] = field(default_factory=list)  # observed_at of the merged records that changed it
    post_from_cache: bool = False  # ``post`` came from the worker's PostMetaCache, not from Redis
    predicted_to: float | None = None  # read only when nothing changed: the latest observation predicted
    n_earlier: int = 0  # stored observations before ``sequence`` (0: it is the whole sequence)

    @property
    def changed(self) -> bool:
        return bool(self.merged_at)

    def reaches_back(self, lookback_s: float) -> bool:
        """Whether ``sequence`` holds every record the features read ``lookback_s`` before its latest observation:
        it is the whole sequence, or it starts at or before that time."""
        return self.n_earlier == 0 or len(self.sequence) > 0 and \
            self.sequence[0, 0] <= self.sequence[-1, 0] - lookback_s

    @property
    def needs_prediction(self) -> bool:
        """Changed, or redelivered after a crash lost the prediction of its latest observation."""
        return self.changed or len(self.sequence) > 0 and (
            self.predicted_to is None or self.predicted_to < self.sequence[-1, 0])


class SnapshotSequenceStore:
    def __init__(self, client: AsyncClient, keys: RedisKeys, ttl_s: int, cached_posts: int = 0,
                 post_ttl_refresh_s: int = 3600) -> None:
        self.client = client
        self.keys = keys
        self.ttl_s = ttl_s
        self.post_ttl_s = post_ttl_s(ttl_s, post_ttl_refresh_s)
        self.meta_cache = PostMetaCache(cached_posts, post_ttl_refresh_s)
        self._merge = PipelinedScript(client, lua_source(MERGE_SNAPSHOTS))
        self._claim_awaiting = PipelinedScript(client, lua_source(CLAIM_AWAITING))
        self._release_awaiting = PipelinedScript(client, lua_source(RELEASE_AWAITING))

    async def merge(self, snapshots: list[Snapshot]) -> list[SequenceUpdate]:
        return await self.merge_records(group_by_post(snapshots))

    async def merge_records(self, by_post: dict[str, list[bytes]],
                            lookback_s: Callable[[str | None], float] = lambda _: DEFAULT_LOOKBACK_S,
                            posts_per_call: int = 256) -> list[SequenceUpdate]:
        """Merge encoded snapshots grouped by post: one script call per shard and look-back (per
        ``posts_per_call`` of its posts), all in one pipelined round trip (a call per post costs more in
        client-side command encoding than the merge itself; on a cluster, each node's calls are one round trip,
        the nodes' concurrent). Each update holds the tail of its sequence from ``lookback_s(platform)`` before
        its latest observation (and from the record before the earliest one merged); ``lookback_s(None)`` for a
        post whose platform the worker does not hold (the longest any model reads)."""
        if not by_post:
            return []
        now = time.monotonic()
        entries = {post_id: self.meta_cache.for_merge(post_id, now) for post_id in by_post}
        lookbacks: dict[str | None, float] = {}
        for meta, _ in entries.values():
            platform = None if meta is None else meta.platform
            if platform not in lookbacks:
                lookbacks[platform] = lookback_s(platform)
        # The posts in calls of one shard and look-back each (a few platforms: a few groups per shard).
        shard = self.keys.shard

        def call_group(post_id: str) -> tuple[int, float]:
            meta = entries[post_id][0]
            return shard(post_id), lookbacks[None if meta is None else meta.platform]

        post_ids = sorted(by_post, key=call_group)
        cached, actions = zip(*[entries[post_id] for post_id in post_ids])
        group_of = [call_group(post_id) for post_id in post_ids]

        def queue_calls(pipe) -> None:
            for (_, value), rows in groupby(range(len(post_ids)), key=group_of.__getitem__):
                rows = list(rows)  # contiguous: the posts are sorted by shard and look-back
                for start in range(rows[0], rows[-1] + 1, posts_per_call):
                    chunk = slice(start, min(start + posts_per_call, rows[-1] + 1))
                    self._merge.call(pipe, *merge_snapshots_call(self.keys, post_ids[chunk], by_post,
                                                                 bytes(actions[chunk]), self.ttl_s, self.post_ttl_s,
                                                                 value))

        results = await self._merge.run(queue_calls)
        flat = [item for result in results for item in result]
        sequences = decode_records(flat[1::5])
        updates = []
        for i, post_id in enumerate(post_ids):
            meta = cached[i]
            if meta is None:
                meta = PostMeta.from_values(*flat[5 * i + 3])
            statuses, n_earlier, mark = flat[5 * i], flat[5 * i + 2], flat[5 * i + 4]
            updates.append(SequenceUpdate(post_id, sequences[i], meta, statuses,
                                          [record_time(record) for record, status in zip(by_post[post_id], statuses)
                                           if status != DUPLICATE], cached[i] is not None,
                                          None if mark is None else float(mark), n_earlier))
        if post_ids != list(by_post):  # back in the order of ``by_post``
            at = {post_id: i for i, post_id in enumerate(by_post)}
            updates.sort(key=lambda update: at[update.post_id])
        for update in updates:  # cached in the order of ``by_post``, whatever the calls' grouping
            if not update.post_from_cache:
                self.meta_cache.put(update.post_id, update.post, now)
        return updates

    async def current(self, post_ids: list[str]) -> list[SequenceUpdate]:
        """The stored sequence and metadata of posts that have a sequence (nothing merged)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for post_id in post_ids:
                pipe.get(self.keys.sequence(post_id))
                pipe.hmget(self.keys.post(post_id), *META_FIELDS)
            rows = await pipe.execute()
        sequences = decode_sequences(rows[0::2])
        return [SequenceUpdate(post_id, sequences[i], PostMeta.from_values(*rows[2 * i + 1]))
                for i, post_id in enumerate(post_ids) if rows[2 * i]]

    async def sequences(self, post_ids: list[str]) -> list[np.ndarray]:
        """The whole stored sequences of posts, pipelined (a merge returns only a tail)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for post_id in post_ids:
                pipe.get(self.keys.sequence(post_id))
            return decode_sequences(await pipe.execute())

    async def put_posts(self, posts: list[Post], static_features: Sequence[np.ndarray],
                        content: Sequence[bytes | None], embedded_titles: bool = False) -> None:
        """Keep what the temporal model needs from the post events (``encode_post``); ``static_features`` has
        one row per post (model sets may differ in width)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for post, features, blob in zip(posts, static_features, content):
                key = self.keys.post(post.post_id)
                if blob is None:  # a post event sent again after its platform lost its model set: no stale vector
                    pipe.hdel(key, CONTENT)
                pipe.hset(key, mapping=encode_post(post, features, blob, embedded_titles))
                pipe.expire(key, self.post_ttl_s)
            await pipe.execute()
        for post in posts:  # the next merge reads the hash as it now is
            self.meta_cache.forget(post.post_id)

    async def content_inputs(self, post_ids: list[str]) -> list[tuple[bytes | None, str | None]]:
        """(static features blob, embedded title) per post, for recomputing stale content vectors."""
        async with self.client.pipeline(transaction=False) as pipe:
            for post_id in post_ids:
                pipe.hmget(self.keys.post(post_id), *CONTENT_INPUT_FIELDS)
            rows = await pipe.execute()
        return [(static, None if title is None else title.decode("utf-8", "replace")) for static, title in rows]

    async def put_thumbnails(self, thumbnails: dict[str, bytes], ttl_s: int) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for post_id, png in thumbnails.items():
                pipe.set(self.keys.thumbnail(post_id), png, ex=ttl_s)
            await pipe.execute()

    async def get_thumbnail(self, post_id: str) -> bytes | None:
        return await self.client.get(self.keys.thumbnail(post_id))

    async def put_content(self, post_ids: list[str], content: list[bytes]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for post_id, blob in zip(post_ids, content):
                key = self.keys.post(post_id)
                pipe.hset(key, CONTENT, blob)
                pipe.expire(key, self.post_ttl_s)
            await pipe.execute()
        for post_id, blob in zip(post_ids, content):
            self.meta_cache.set_content(post_id, blob)

    # --- snapshots waiting for their post: kept in Redis, so a restart does not forget them -----------------

    async def await_posts(self, post_ids: list[str], due: float) -> None:
        """Posts whose sequence changed before their post event came. A post already waiting keeps its earlier
        time; one the overdue timer holds (its score the lease end, later than ``due``) is due again at ``due``,
        so the timer's release keeps it (release_awaiting.lua) and this newer observation is scored too."""
        async with self.client.pipeline(transaction=False) as pipe:
            for shard, group in self.keys.by_shard(post_ids).items():
                pipe.zadd(self.keys.awaiting(shard), {post_id: due for post_id in group}, lt=True)
            await pipe.execute()

    async def claim_overdue(self, now: float, lease_until: float, limit: int) -> list[str]:
        """Waiting posts due by ``now``, leased to the caller until ``lease_until``: up to ``limit`` of each
        shard."""
        def queue_calls(pipe) -> None:
            for shard in self.keys.all_shards:
                self._claim_awaiting.call(pipe, *claim_awaiting_call(self.keys, shard, now, lease_until, limit))

        claimed = await self._claim_awaiting.run(queue_calls)
        return [post_id.decode() for shard_claimed in claimed for post_id in shard_claimed]

    async def release_overdue(self, post_ids: list[str], lease_until: float) -> int:
        """Called once the claimed posts' predictions are delivered: removes those still at ``lease_until`` (none
        of their snapshots came meanwhile); returns how many."""
        if not post_ids:
            return 0

        def queue_calls(pipe) -> None:
            for shard, group in self.keys.by_shard(post_ids).items():
                self._release_awaiting.call(pipe, *release_awaiting_call(self.keys, shard, lease_until, group))

        return sum(await self._release_awaiting.run(queue_calls))

    async def done_waiting(self, post_ids: list[str]) -> None:
        """Called once the posts' predictions are delivered, their post having come."""
        if post_ids:
            async with self.client.pipeline(transaction=False) as pipe:
                for shard, group in self.keys.by_shard(post_ids).items():
                    pipe.zrem(self.keys.awaiting(shard), *group)
                await pipe.execute()

    async def get_post(self, post_id: str) -> dict[bytes, bytes]:
        return await self.client.hgetall(self.keys.post(post_id))

    # --- online accuracy: predictions kept until the post matures --------------------------------------

    async def matured(self, clock: float, limit: int) -> list[tuple[str, np.ndarray, PostMeta, dict[str, float]]]:
        """Posts whose horizon has passed by ``clock`` (up to ``limit`` of each shard): (post_id, sequence,
        metadata, kept predictions). They are removed from the maturity sets; their kept predictions are
        deleted."""
        async with self.client.pipeline(transaction=False) as pipe:
            for shard in self.keys.all_shards:
                pipe.zrangebyscore(self.keys.maturity(shard), "-inf", clock, start=0, num=limit)
            members = [member for shard_members in await pipe.execute() for member in shard_members]
        if not members:
            return []
        post_ids = [m.decode() for m in members]
        async with self.client.pipeline(transaction=False) as pipe:
            for post_id in post_ids:
                pipe.get(self.keys.sequence(post_id))
                pipe.hgetall(self.keys.post(post_id))
            rows = await pipe.execute()
        out = []
        async with self.client.pipeline(transaction=False) as pipe:
            for shard, group in self.keys.by_shard(post_ids).items():
                pipe.zrem(self.keys.maturity(shard), *group)
            for i, post_id in enumerate(post_ids):
                blob, fields = rows[2 * i], rows[2 * i + 1]
                kept = kept_predictions(fields)
                if kept:
                    pipe.hdel(self.keys.post(post_id), *kept)
                out.append((post_id, decode_sequence(blob or b""), PostMeta.from_hash(fields), kept))
            await pipe.execute()
        return out

    async def estimate_tracked_posts(self, exact_below: int = 100_000, sample: int = 200) -> int:
        """Live sequences: counted exactly in small databases, else estimated from random keys of each primary
        (a full SCAN of millions of keys would stall Redis for the sake of a gauge)."""
        nodes = primaries(self.client)
        sizes = [await on_node(self.client, node, "DBSIZE") for node in nodes]
        if sum(sizes) <= exact_below:
            return sum([1 async for key in self.client.scan_iter(match=self.keys.sequence_pattern(), count=10_000)
                        if self.keys.is_sequence(key)])
        estimate = 0.0
        for node, size in zip(nodes, sizes):
            if size:
                keys = await repeat_on_node(self.client, node, sample, "RANDOMKEY")
                estimate += size * sum(1 for key in keys if key and self.keys.is_sequence(key)) / sample
        return round(estimate)

    async def get(self, post_id: str) -> np.ndarray:
        return decode_sequence(await self.client.get(self.keys.sequence(post_id)) or b"")
