"""Each post's early-popularity sequence in Redis: compact, idempotent, out-of-order safe, batched.

A sequence is one Redis string: a version byte, then fixed-width records sorted by time. A record is
``observed_at`` (uint32, big-endian, so byte order is time order) followed by one float64 per counter of
``COUNTER_NAMES`` (NaN where the platform lacks the counter; float64 is exact below 2**53, the contract's
cap). A Lua script merges new records into place atomically: a record already present is a no-op
(redelivery changes nothing), an older one is inserted in order, a different record at the same time
replaces the old one and is reported as a correction. The script returns the merged sequence so that
features are computed from exactly what is stored, in the same round trip. Post metadata (created_at,
platform, ...) lives in a small hash beside it. The sequence expires ``ttl_s`` after its last update, the hash
up to ``post_ttl_refresh_s`` later (``PostMetaCache``: the script reads a post's hash only where the worker does
not hold it, and refreshes its TTL only every ``post_ttl_refresh_s``).
"""

from __future__ import annotations

import json
import operator
import struct
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import redis.asyncio as redis

from popscore.contract import Post, Snapshot
from popscore.settings import COUNTER_NAMES
from popscore.stream.redis_script import PipelinedScript

FORMAT_VERSION = b"\x01"
RECORD = struct.Struct(">I" + "d" * len(COUNTER_NAMES))
RECORD_DTYPE = np.dtype([("t", ">u4")] + [(name, ">f8") for name in COUNTER_NAMES])

APPENDED, DUPLICATE, CORRECTED, OUT_OF_ORDER = 1, 0, 2, 3

# Many posts per call. KEYS: sequence and metadata key of each post, in pairs. ARGV: header, record width,
# ttl seconds, META_FIELDS as a JSON list, the metadata hash's ttl, one byte per post saying what to do with
# its hash (READ_META '1': read it and refresh its TTL, REFRESH_TTL '2': refresh its TTL, KEEP_META '0':
# nothing), then per post its records concatenated (one argument per post: redis-py's packing costs per
# argument). Returns per post {statuses, merged sequence, values of META_FIELDS or nil, predicted mark or nil}: the
# mark (the hash's ``predicted_to``, the observation time of the post's latest published temporal prediction,
# written by leaderboard.RECORD_SCRIPT) is read only when no record changed the sequence, i.e. on redelivery,
# so that a post whose prediction was lost in a crash is scored again.
MERGE_SCRIPT = """
local header, width, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local meta_fields = cjson.decode(ARGV[4])
local meta_ttl, meta_actions = tonumber(ARGV[5]), ARGV[6]
local hlen = #header
local out = {}
local a = 7
for p = 1, #KEYS, 2 do
  local key, meta_key = KEYS[p], KEYS[p + 1]
  local stored = redis.call('GET', key)
  local seq = stored or header
  local statuses = {}
  local changed, rewrite = false, not stored  -- rewrite: more than records appended at the end
  local records = ARGV[a]
  for start = 1, #records, width do
    local rec = string.sub(records, start, start + width - 1)
    local t = string.sub(rec, 1, 4)
    local n = (#seq - hlen) / width
    if n == 0 or string.sub(seq, -width, -width + 3) < t then
      seq = seq .. rec  -- the usual case, a newer snapshot: no search (Lua interns every substring it makes)
      statuses[#statuses + 1] = 1
      changed = true
    else
      local lo, hi = 0, n
      while lo < hi do
        local mid = math.floor((lo + hi) / 2)
        local off = hlen + mid * width
        if string.sub(seq, off + 1, off + 4) < t then lo = mid + 1 else hi = mid end
      end
      local off = hlen + lo * width
      if lo < n and string.sub(seq, off + 1, off + 4) == t then
        if string.sub(seq, off + 1, off + width) == rec then
          statuses[#statuses + 1] = 0
        else
          seq = string.sub(seq, 1, off) .. rec .. string.sub(seq, off + width + 1)
          statuses[#statuses + 1] = 2
          changed, rewrite = true, true
        end
      else
        seq = string.sub(seq, 1, off) .. rec .. string.sub(seq, off + 1)
        statuses[#statuses + 1] = (lo < n) and 3 or 1
        changed, rewrite = true, true
      end
    end
  end
  a = a + 1
  if rewrite then
    redis.call('SET', key, seq, 'EX', ttl)
  elseif changed then
    -- Only newer records: APPEND them, so the append-only file (and a replica) gets tens of bytes, not the
    -- whole sequence again.
    redis.call('APPEND', key, string.sub(seq, #stored + 1))
    redis.call('EXPIRE', key, ttl)
  end
  local action = string.byte(meta_actions, (p + 1) / 2)  -- 48 KEEP_META, 49 READ_META, 50 REFRESH_TTL
  if action ~= 48 then redis.call('EXPIRE', meta_key, meta_ttl) end
  out[#out + 1] = statuses
  out[#out + 1] = seq
  if action == 49 then
    out[#out + 1] = redis.call('HMGET', meta_key, unpack(meta_fields))
  else
    out[#out + 1] = false
  end
  out[#out + 1] = (not changed) and redis.call('HGET', meta_key, 'predicted_to') or false
end
return out
"""


# Posts whose snapshots wait for their post event (``ps:awaiting``: member post_id, score the wall time from
# which it may be scored without its post). KEYS[1]: the set; ARGV: now, lease end, limit. Takes the due posts
# and moves them to the lease end, atomically, so one worker scores each while it holds the lease, and a worker
# that dies before it removed one leaves it to be taken again when the lease ends.
CLAIM_AWAITING_SCRIPT = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, post in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], post) end
return due
"""

_COUNTS = operator.attrgetter(*COUNTER_NAMES)
_NAN = float("nan")


def encode_snapshot(snapshot: Snapshot) -> bytes:
    return RECORD.pack(int(snapshot.observed_at.timestamp()),
                       *[_NAN if v is None else v for v in _COUNTS(snapshot.counts)])


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


def decode_sequence(blob: bytes) -> np.ndarray:
    """Stored bytes -> float64 array [n, 1 + len(COUNTER_NAMES)]: observed_at epoch seconds, counters."""
    return decode_sequences([blob])[0]


def decode_sequences(blobs: list[bytes | None]) -> list[np.ndarray]:
    """Many stored sequences at once: one ``frombuffer`` and one float64 conversion for the whole micro-batch
    (per-post numpy calls were ~10 % of the worker's time). The arrays returned are views of one table."""
    bodies, lengths = [], []
    for blob in blobs:
        if not blob:
            lengths.append(0)
            continue
        if blob[:1] != FORMAT_VERSION:
            raise ValueError(f"unknown sequence format version {blob[:1]!r}")
        body = memoryview(blob)[1:]
        bodies.append(body)
        lengths.append(len(body) // RECORD.size)
    records = np.frombuffer(b"".join(bodies), dtype=RECORD_DTYPE)
    table = np.empty((len(records), len(RECORD_DTYPE.names)))
    for column, name in enumerate(RECORD_DTYPE.names):
        table[:, column] = records[name]
    return np.split(table, np.cumsum(lengths)[:-1])


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


META_FIELDS = ("created_at", "platform", "category", "content")
"""The post-hash fields read back with every sequence, in ``PostMeta.from_values`` order. The inputs the
content vector was computed from (``static`` features and the ``title`` the text encoder read) stay in the hash
but are read only to recompute it."""
META_FIELDS_JSON = json.dumps(META_FIELDS)
CONTENT_INPUT_FIELDS = ("static", "title")
CONTENT_HEADER = struct.Struct("<II")  # which content model made the vector: CRC-32 of its name, its version


def content_tag(model_name: str, version: int) -> bytes:
    """The header of the vectors ``model_name`` version ``version`` makes. The name is in it because every
    platform's content model counts its versions from 1: a vector of another platform's model, or of a post
    whose platform now routes elsewhere, is recomputed, not read by the wrong head."""
    return CONTENT_HEADER.pack(zlib.crc32(model_name.encode()), version)


def encode_content(tag: bytes, vectors: np.ndarray, modality_weights: np.ndarray) -> list[bytes]:
    """Per post: the content model's tag (``content_tag``), then its float32 content vector and modality
    weights."""
    rows = np.concatenate([vectors, modality_weights], axis=1).astype("<f4")
    return [tag + row.tobytes() for row in rows]


def decode_content(blobs: list[bytes | None], tag: bytes, dim: int, n_weights: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vectors [B, dim], modality weights [B, n_weights], ok [B]): rows whose blob is absent, of another
    content model or version (``tag``) or of another size are zero and not ok (they must be recomputed)."""
    width = CONTENT_HEADER.size + 4 * (dim + n_weights)
    header = tag
    ok = np.array([b is not None and len(b) == width and b[:CONTENT_HEADER.size] == header for b in blobs], bool)
    table = np.zeros((len(blobs), dim + n_weights), np.float32)
    if ok.any():
        body = b"".join(memoryview(b)[CONTENT_HEADER.size:] for b, good in zip(blobs, ok) if good)
        table[ok] = np.frombuffer(body, dtype="<f4").reshape(-1, dim + n_weights)
    return table[:, :dim], table[:, dim:], ok


@dataclass(frozen=True)
class PostMeta:
    """What the worker kept of the post event; empty when the snapshot came before (or without) its post."""

    created_at: float | None = None
    platform: str | None = None
    category: str | None = None
    content: bytes | None = None  # encode_content: the post's content vector for the temporal head

    @classmethod
    def from_values(cls, created_at: bytes | None, platform: bytes | None, category: bytes | None,
                    content: bytes | None) -> "PostMeta":
        return cls(created_at=None if created_at is None else float(created_at),
                   platform=None if platform is None else platform.decode(),
                   category=None if category is None else category.decode(), content=content)

    @classmethod
    def from_hash(cls, fields: dict[bytes, bytes]) -> "PostMeta":
        return cls.from_values(*(fields.get(name.encode()) for name in META_FIELDS))


KEEP_META, READ_META, REFRESH_TTL = 48, 49, 50  # b"0", b"1", b"2": what a merge does with a post's hash


class PostMetaCache:
    """The worker's copy of its posts' metadata, so a merge need not read it back (HMGET and its ~300 B reply
    were ~2 us of Redis per snapshot) nor refresh its TTL every time (``refresh_s``; the hash's TTL is that much
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
    sequence: np.ndarray
    post: PostMeta
    statuses: list[int] = field(default_factory=list)
    merged_at: list[int] = field(default_factory=list)  # observed_at of the merged records that changed it
    post_from_cache: bool = False  # ``post`` came from the worker's PostMetaCache, not from Redis
    predicted_to: float | None = None  # read only when nothing changed: the latest observation predicted

    @property
    def changed(self) -> bool:
        return bool(self.merged_at)

    @property
    def needs_prediction(self) -> bool:
        """Changed, or redelivered after a crash lost the prediction of its latest observation."""
        return self.changed or len(self.sequence) > 0 and (
            self.predicted_to is None or self.predicted_to < self.sequence[-1, 0])


class SnapshotSequenceStore:
    def __init__(self, client: redis.Redis, key_prefix: str, ttl_s: int, cached_posts: int = 0,
                 post_ttl_refresh_s: int = 3600) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self.ttl_s = ttl_s
        self.post_ttl_s = ttl_s + post_ttl_refresh_s  # the post hash outlives its sequence
        self.meta_cache = PostMetaCache(cached_posts, post_ttl_refresh_s)
        self._merge = PipelinedScript(client, MERGE_SCRIPT)
        self._claim_awaiting = client.register_script(CLAIM_AWAITING_SCRIPT)

    def sequence_key(self, post_id: str) -> str:
        return f"{self.key_prefix}seq:{post_id}"

    def post_key(self, post_id: str) -> str:
        return f"{self.key_prefix}post:{post_id}"

    async def merge(self, snapshots: list[Snapshot]) -> list[SequenceUpdate]:
        return await self.merge_records(group_by_post(snapshots))

    async def merge_records(self, by_post: dict[str, list[bytes]], posts_per_call: int = 256
                            ) -> list[SequenceUpdate]:
        """Merge encoded snapshots grouped by post: one script call per ``posts_per_call`` posts, all in one
        pipelined round trip (a call per post costs more in client-side command encoding than the merge
        itself)."""
        if not by_post:
            return []
        post_ids = list(by_post)
        now = time.monotonic()
        cached, actions = zip(*[self.meta_cache.for_merge(post_id, now) for post_id in post_ids])

        def queue_calls(pipe) -> None:
            for start in range(0, len(post_ids), posts_per_call):
                chunk = slice(start, start + posts_per_call)
                keys, args = [], [FORMAT_VERSION, RECORD.size, self.ttl_s, META_FIELDS_JSON, self.post_ttl_s,
                                  bytes(actions[chunk])]
                for post_id in post_ids[chunk]:
                    keys += [self.sequence_key(post_id), self.post_key(post_id)]
                    args.append(b"".join(by_post[post_id]))
                self._merge.call(pipe, keys, args)

        results = await self._merge.run(queue_calls)
        flat = [item for result in results for item in result]
        sequences = decode_sequences(flat[1::4])
        updates = []
        for i, post_id in enumerate(post_ids):
            meta = cached[i]
            if meta is None:
                meta = PostMeta.from_values(*flat[4 * i + 2])
                self.meta_cache.put(post_id, meta, now)
            statuses, mark = flat[4 * i], flat[4 * i + 3]
            updates.append(SequenceUpdate(post_id, sequences[i], meta, statuses,
                                          [int.from_bytes(record[:4], "big")
                                           for record, status in zip(by_post[post_id], statuses)
                                           if status != DUPLICATE], cached[i] is not None,
                                          None if mark is None else float(mark)))
        return updates

    async def current(self, post_ids: list[str]) -> list[SequenceUpdate]:
        """The stored sequence and metadata of posts that have a sequence (nothing merged)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for post_id in post_ids:
                pipe.get(self.sequence_key(post_id))
                pipe.hmget(self.post_key(post_id), *META_FIELDS)
            rows = await pipe.execute()
        sequences = decode_sequences(rows[0::2])
        return [SequenceUpdate(post_id, sequences[i], PostMeta.from_values(*rows[2 * i + 1]))
                for i, post_id in enumerate(post_ids) if rows[2 * i]]

    async def put_posts(self, posts: list[Post], static_features: Sequence[np.ndarray],
                        content: Sequence[bytes | None], embedded_titles: bool = False) -> None:
        """Keep what the temporal model needs from the post event: its age, platform, category, its content
        vector (``encode_content``; None for a post no model set scores, which has none), and the inputs that
        vector came from, to compute it for a new model: the static features (one row per post; model sets may
        differ in width) and, if titles are embedded (``embedded_titles``), the title itself (tens of bytes;
        its token states would be ~20 KB)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for i, (post, features) in enumerate(zip(posts, static_features)):
                key = self.post_key(post.post_id)
                fields = {"created_at": str(int(post.created_at.timestamp())), "platform": post.platform,
                          "static": np.asarray(features, dtype=np.float32).tobytes()}
                if content[i] is not None:
                    fields["content"] = content[i]
                else:  # a post event sent again after its platform lost its model set: no stale vector stays
                    pipe.hdel(key, "content")
                if embedded_titles:
                    fields["title"] = post.text.title or ""
                category = post.attributes.get("category")
                if category is not None:
                    fields["category"] = str(category)
                pipe.hset(key, mapping=fields)
                pipe.expire(key, self.post_ttl_s)
            await pipe.execute()
        for post in posts:  # the next merge reads the hash as it now is
            self.meta_cache.forget(post.post_id)

    async def content_inputs(self, post_ids: list[str]) -> list[tuple[bytes | None, str | None]]:
        """(static features blob, embedded title) per post, for recomputing stale content vectors."""
        async with self.client.pipeline(transaction=False) as pipe:
            for post_id in post_ids:
                pipe.hmget(self.post_key(post_id), *CONTENT_INPUT_FIELDS)
            rows = await pipe.execute()
        return [(static, None if title is None else title.decode("utf-8", "replace")) for static, title in rows]

    async def put_content(self, post_ids: list[str], content: list[bytes]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for post_id, blob in zip(post_ids, content):
                key = self.post_key(post_id)
                pipe.hset(key, "content", blob)
                pipe.expire(key, self.post_ttl_s)
            await pipe.execute()
        for post_id, blob in zip(post_ids, content):
            self.meta_cache.set_content(post_id, blob)

    # --- snapshots waiting for their post: kept in Redis, so a restart does not forget them -----------------

    @property
    def awaiting_key(self) -> str:
        return f"{self.key_prefix}awaiting"

    async def await_posts(self, post_ids: list[str], due: float) -> None:
        """Posts whose sequence changed before their post event came; a post already waiting keeps its time."""
        await self.client.zadd(self.awaiting_key, {post_id: due for post_id in post_ids}, nx=True)

    async def claim_overdue(self, now: float, lease_s: float, limit: int) -> list[str]:
        """Waiting posts due by ``now``, leased to the caller for ``lease_s``."""
        claimed = await self._claim_awaiting(keys=[self.awaiting_key], args=[now, now + lease_s, limit])
        return [post_id.decode() for post_id in claimed]

    async def done_waiting(self, post_ids: list[str]) -> None:
        """Called once the posts' predictions are delivered."""
        if post_ids:
            await self.client.zrem(self.awaiting_key, *post_ids)

    async def get_post(self, post_id: str) -> dict[bytes, bytes]:
        return await self.client.hgetall(self.post_key(post_id))

    # --- online accuracy: predictions kept until the post matures --------------------------------------

    @property
    def maturity_key(self) -> str:
        return f"{self.key_prefix}maturity"  # written by leaderboard.RECORD_SCRIPT

    async def matured(self, clock: float, limit: int) -> list[tuple[str, np.ndarray, PostMeta, dict[str, float]]]:
        """Posts whose horizon has passed by ``clock``: (post_id, sequence, metadata, kept predictions).
        They are removed from the maturity set; their kept predictions are deleted."""
        members = await self.client.zrangebyscore(self.maturity_key, "-inf", clock, start=0, num=limit)
        if not members:
            return []
        post_ids = [m.decode() for m in members]
        async with self.client.pipeline(transaction=False) as pipe:
            for post_id in post_ids:
                pipe.get(self.sequence_key(post_id))
                pipe.hgetall(self.post_key(post_id))
            rows = await pipe.execute()
        out = []
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zrem(self.maturity_key, *members)
            for i, post_id in enumerate(post_ids):
                blob, fields = rows[2 * i], rows[2 * i + 1]
                kept = {k.decode(): float(v) for k, v in fields.items() if k.startswith(b"eval:")}
                if kept:
                    pipe.hdel(self.post_key(post_id), *kept)
                out.append((post_id, decode_sequence(blob or b""), PostMeta.from_hash(fields), kept))
            await pipe.execute()
        return out

    async def estimate_tracked_posts(self, exact_below: int = 100_000, sample: int = 200) -> int:
        """Live sequences: counted exactly in small databases, else estimated from random keys (a full
        SCAN of millions of keys would stall Redis for the sake of a gauge)."""
        size = await self.client.dbsize()
        prefix = f"{self.key_prefix}seq:".encode()
        if size <= exact_below:
            return sum([1 async for _ in self.client.scan_iter(match=prefix + b"*", count=10_000)])
        async with self.client.pipeline(transaction=False) as pipe:
            for _ in range(sample):
                pipe.randomkey()
            keys = await pipe.execute()
        hits = sum(1 for key in keys if key and key.startswith(prefix))
        return round(size * hits / sample)

    async def get(self, post_id: str) -> np.ndarray:
        return decode_sequence(await self.client.get(self.sequence_key(post_id)) or b"")

