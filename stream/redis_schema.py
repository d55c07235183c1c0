"""The worker's Redis schema: every key, hash field, TTL and stored encoding, and the KEYS/ARGV of its Lua scripts.

Nothing else spells a key or a field name. Each script's KEYS and ARGV are built by one function here, and a
script touches only the keys its KEYS name (Redis Cluster routes a call by them). Every key is under
``settings.redis.key_prefix`` (``ps:``) and a shard's hash tag: ``<prefix>{<shard>}:<name>``; ``horizon`` below
is ``score.horizon_s``, ``refresh`` is ``worker.post_ttl_refresh_s``.

Shards. A post's shard is the Kafka partition a keyed send of its post_id goes to (the producers' default
partitioner: murmur2 of the key, masked positive, modulo ``kafka.topics.partitions``), and ``{<shard>}`` is the
hash tag of all its keys, so they lie in one Redis Cluster slot. The keys that are not a post's (the awaiting and
maturity sets, the leaderboards and their registries) exist once per shard under the same tag. So every script
call touches one slot: the worker groups a step's posts by shard and makes one call per shard (the calls of one
pipeline go to their nodes concurrently), and a Kafka partition's records touch one slot, so moving a partition to
another worker moves whole slots' work and moving a slot to another Redis node moves whole partitions' state. The
same layout serves one Redis (a hash tag is only part of the name there): one code path, and a deployment moves
from one Redis to a cluster without renaming a key. The cost is the reads that span shards: a board's top
``k`` is the merge of its shards' top ``k`` (``merge_rankings``: exact, since each shard's board keeps its best
``size`` and ``k`` <= ``size``), the board registries are the union of the shards' ones, and timers read every
shard's awaiting and maturity sets. A shard is one slot, so a Redis Cluster spreads the load over at most as many
masters as there are partitions, and the operator places those slots (``CLUSTER SETSLOT``, ``redis-cli --cluster
reshard``), not ``--cluster rebalance``, which counts slots, not load. Changing the partition count re-shards
every key (as it moves Kafka keys between partitions): the state must be migrated, or starts empty.

``{<shard>}:seq:<post_id>``, string, expires a horizon after its last change
    ``FORMAT_VERSION``, then one ``RECORD`` per observation, sorted by time. Written by merge_snapshots.lua
    (``SnapshotSequenceStore.merge_records``). Read from the merge's reply (the tail the features read, with
    the number of records before it), by ``SnapshotSequenceStore.current``,
    ``matured``, ``get`` (the ``/posts`` view) and ``estimate_tracked_posts`` (counts the keys).
``{<shard>}:post:<post_id>``, hash, expires a horizon + refresh after the post event; merges refresh that TTL at
    most every refresh (``PostMetaCache``), so it outlives the sequence; a hash created by record_predictions.lua
    (a prediction before any post event or merge) expires a horizon after. Fields:
    ``created_at`` (epoch seconds, decimal), ``platform``, ``category`` (only if the post has one), ``static``
    (the static features, float32), ``title`` (only when titles are embedded): written by
    ``SnapshotSequenceStore.put_posts`` (``encode_post``), read back as ``PostMeta`` by every merge that does not
    hold it (``META_FIELDS``), ``current`` and ``matured``; ``static`` and ``title`` only by ``content_inputs``.
    ``content`` (``encode_content``: the content model's tag, its vector and modality weights): written by
    ``put_posts`` and, when the content model changed, ``put_content``; read like ``created_at``.
    ``prediction:<kind>`` (the latest prediction of ``static`` or ``temporal``, its latest view as JSON) and
    ``predicted_to`` (epoch seconds: the observation time of the latest temporal prediction in Kafka): written
    by record_predictions.lua (``Leaderboards.record``); ``prediction:<kind>`` read by the ``/posts`` view
    (``latest_predictions``), ``predicted_to`` by merge_snapshots.lua on redelivery.
    ``eval:<model>:<version>:<age_h>`` (a predicted log score kept for online accuracy, the first one made at
    that evaluation age): written by record_predictions.lua, read and deleted by ``matured``.
``{<shard>}:thumb:<post_id>``, string, expires ``media.thumbnail_ttl_s`` after the post event
    A JPEG of the post's picture (of a video's first frame), its longest side ``media.thumbnail_px``: what the
    heat map is computed on and drawn over. Written by ``SnapshotSequenceStore.put_thumbnails`` (the features
    stage, for posts whose picture was used), read by ``get_thumbnail`` (the ``/posts/{id}/heatmap.png`` view).
``{<shard>}:awaiting``, sorted set per shard, no TTL
    post_id -> the wall time from which its snapshots are scored without their post. Added by
    ``SnapshotSequenceStore.await_posts`` (ZADD LT: a waiting post keeps its earlier time; a leased one gets the
    new due time back), leased by claim_awaiting.lua (``claim_overdue``: the score becomes the lease end),
    removed by ``done_waiting`` (the post came) or, once scored without it, by release_awaiting.lua
    (``release_overdue``: only if still at its lease end, so a snapshot merged meanwhile is scored too).
``{<shard>}:media_retry``, sorted set per shard, no TTL
    post_id -> the wall time its picture is read again: a post whose picture was unavailable (the object store
    failed) when it was scored. Added by ``MediaRetries.schedule`` (``stream/media_retry.py``, ZADD NX), leased by
    claim_media_retries.lua (``MediaRetries.claim``: the score becomes the lease end), moved to the next retry by
    ``reschedule``, removed by ``done`` (read, given up or now rejected for good). Bounded: a member per post
    awaiting a retry, at most ``media.retry_attempts`` retries each.
``{<shard>}:media_retry_posts``, hash per shard, no TTL
    post_id -> its retry record (``encode_retry``: JSON of the retries made and the post event, what reading the
    picture again and scoring the post need). Written by ``MediaRetries.schedule`` (HSETNX) and ``reschedule``,
    read by claim_media_retries.lua, removed by ``done``: it holds exactly the members of ``media_retry``.
``{<shard>}:maturity``, sorted set per shard, no TTL
    post_id -> created_at + horizon, the moment its kept predictions can be compared with what it reached.
    Added by record_predictions.lua, read and removed by ``SnapshotSequenceStore.matured``.
``{<shard>}:lb:top``, ``...:lb:top:platform:<platform>``, ``...:lb:top:category:<category>``, ``...:lb:rising``,
    sorted sets per shard, expire ``worker.leaderboard_ttl_s`` after their last write
    post_id -> predicted score (``top``) or realised log-score growth per hour over the last hour (``rising``) of
    the shard's posts, trimmed to ``worker.leaderboard_size``. Written by record_predictions.lua from temporal
    predictions; a board is read as the merge of its shards' (``merge_rankings``) by ``Leaderboards.top`` and
    ``board.queries.BoardReader`` (the board views and feeds). Bounded in number: ``<platform>`` is a platform
    the deployment knows (``Route.label``), one of at most ``worker.max_platform_boards`` others in the shard's
    ``boards:platforms``, or ``other`` for the rest; ``<category>`` one of ``worker.leaderboard_categories`` or,
    without that list, one of at most ``worker.max_category_boards`` in the shard's ``boards:categories`` (the
    rest have no category board). The bounds hold per shard: with more categories than the bound and no
    allow-list, shards may admit different ones, and a category board then lists the posts of the shards that
    admitted it (the allow-list makes every shard admit the same).
``{<shard>}:boards:categories``, ``...:boards:platforms``, sorted sets per shard, expire
    ``worker.leaderboard_ttl_s`` after their last write
    category / unknown platform -> when its board was last written (epoch s): the shard's boards that exist.
    Written by record_predictions.lua, which drops the entries whose board has expired and admits a new one only
    while there are fewer than the bound.
``{<shard>}:boards``, sorted set per shard, expires ``worker.leaderboard_ttl_s`` after its last write
    board name (``top:platform:reddit``...) -> when a prediction last wrote the shard's board, so the boards can
    be listed without scanning the keyspace (the union of the shards'); entries older than the TTL are dropped at
    every write (their board expired). Written by record_predictions.lua, read by ``BoardReader`` (``/boards``).
``{<shard>}:replicated``, string per shard, expires ``REPLICATED_TTL_S`` after its last write
    When a worker last asked the shard's primary for replica confirmations (epoch ms), with ``redis.replica_acks``
    only. Written by ``ReplicaAcks.confirm`` (``stream/replication.py``) just before its WAIT, on the same
    connection: the write WAIT waits for (Redis 7.0 has no key-less write a cluster node replicates). Read by
    nobody.
"""

from __future__ import annotations

import functools
import heapq
import json
import math
import operator
import re
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np
import orjson
from aiokafka.partitioner import murmur2

from popscore.contract import Post, Snapshot
from popscore.settings import COUNTER_NAMES, Settings


def shard_of(post_id: str, shards: int) -> int:
    """The Kafka partition a keyed send of ``post_id`` goes to with ``shards`` partitions (the default
    partitioner of the Java client, kafka-python and aiokafka)."""
    return (murmur2(post_id.encode()) & 0x7FFFFFFF) % shards


class RedisKeys:
    """The key names under one prefix and ``shards`` shards (``kafka.topics.partitions``): a post's keys under its
    shard's hash tag, the sets, boards and registries once per shard."""

    __slots__ = ("prefix", "shards", "shard", "_sequence", "_post", "_thumbnail", "_sequence_key")

    def __init__(self, prefix: str, shards: int) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"a key prefix without braces, not {prefix!r}: the hash tag after it is the shard's")
        if shards < 1:
            raise ValueError(f"at least one shard, not {shards}")
        self.prefix = prefix
        self.shards = shards
        # murmur2 is pure Python and the worker sees the same posts again and again
        self.shard: Callable[[str], int] = functools.lru_cache(maxsize=1 << 18)(
            functools.partial(shard_of, shards=shards))
        self._sequence = [f"{self.tag(s)}seq:" for s in range(shards)]
        self._post = [f"{self.tag(s)}post:" for s in range(shards)]
        self._thumbnail = [f"{self.tag(s)}thumb:" for s in range(shards)]
        self._sequence_key = re.compile(re.escape(prefix.encode()) + rb"\{[0-9]+\}:seq:")

    @classmethod
    def of(cls, settings: Settings) -> "RedisKeys":
        return cls(settings.redis.key_prefix, settings.kafka.topics.partitions)

    def tag(self, shard: int) -> str:
        """``<prefix>{<shard>}:``, what every key of the shard starts with."""
        return f"{self.prefix}{{{shard}}}:"

    @property
    def all_shards(self) -> range:
        return range(self.shards)

    def sequence(self, post_id: str) -> str:
        return self._sequence[self.shard(post_id)] + post_id

    def post(self, post_id: str) -> str:
        return self._post[self.shard(post_id)] + post_id

    def thumbnail(self, post_id: str) -> str:
        return self._thumbnail[self.shard(post_id)] + post_id

    def sequence_pattern(self, post_ids: str = "*") -> str:
        """A SCAN pattern of the sequences of the posts ``post_ids`` matches, in every shard (braces are not
        special in Redis patterns)."""
        return f"{self.prefix}{{*}}:seq:{post_ids}"

    def is_sequence(self, key: bytes) -> bool:
        return self._sequence_key.match(key) is not None

    def awaiting(self, shard: int) -> str:
        return f"{self.tag(shard)}awaiting"

    def media_retry(self, shard: int) -> str:
        return f"{self.tag(shard)}media_retry"

    def media_retry_posts(self, shard: int) -> str:
        return f"{self.tag(shard)}media_retry_posts"

    def maturity(self, shard: int) -> str:
        return f"{self.tag(shard)}maturity"

    def boards(self, shard: int) -> str:
        """The shard's registry of the boards written (record_predictions.lua)."""
        return f"{self.tag(shard)}boards"

    def board(self, name: str, shard: int) -> str:
        """The shard's part of board ``name``; the board is the merge of all shards' (``merge_rankings``)."""
        return f"{self.tag(shard)}lb:{name}"

    def board_names(self, family: str, shard: int) -> str:
        """The shard's registry of the category or unknown-platform boards that exist (record_predictions.lua)."""
        return f"{self.tag(shard)}boards:{family}"

    def replicated(self, shard: int) -> str:
        """The shard's replication marker (``ReplicaAcks``)."""
        return f"{self.tag(shard)}replicated"

    def by_shard(self, post_ids: Iterable[str]) -> dict[int, list[str]]:
        """``post_ids`` grouped by shard, each group in the order given."""
        groups: dict[int, list[str]] = {}
        shard = self.shard
        for post_id in post_ids:
            groups.setdefault(shard(post_id), []).append(post_id)
        return groups


def merge_rankings(rankings: Iterable[Sequence[tuple[bytes | str, float]]], k: int) -> list[tuple[str, float]]:
    """A board's best ``k`` from its shards' best ``k`` (ZREVRANGE ... WITHSCORES of each): by value, ties by
    member descending, as ZREVRANGE orders one sorted set."""
    rows = [(member.decode() if isinstance(member, bytes) else member, value)
            for ranking in rankings for member, value in ranking]
    return heapq.nlargest(k, rows, key=lambda row: (row[1], row[0]))


TOP_BOARD, RISING_BOARD = "top", "rising"
CATEGORY_BOARDS, PLATFORM_BOARDS = "categories", "platforms"  # boards:<family>: which of those boards exist


def platform_board(platform: str) -> str:
    return f"top:platform:{platform}"


def category_board(category: str) -> str:
    return f"top:category:{category}"


REPLICATED_TTL_S = 3600  # the marker outlives any batch's confirmation and is gone soon after replica_acks is off


def post_ttl_s(sequence_ttl_s: int, refresh_s: int) -> int:
    """The post hash outlives its sequence by the refresh interval, since merges refresh its TTL only that
    often."""
    return sequence_ttl_s + refresh_s


# --- sequences --------------------------------------------------------------------------------------------

FORMAT_VERSION = b"\x01"
RECORD = struct.Struct(">I" + "d" * len(COUNTER_NAMES))
"""``observed_at`` (uint32, big-endian: the merge script decodes it and compares times as numbers), then one
float64 per counter of ``COUNTER_NAMES`` (NaN where the platform lacks the counter; float64 is exact below
2**53, the contract's cap)."""
RECORD_DTYPE = np.dtype([("t", ">u4")] + [(name, ">f8") for name in COUNTER_NAMES])

_COUNTS = operator.attrgetter(*COUNTER_NAMES)
_NAN = float("nan")


def encode_snapshot(snapshot: Snapshot) -> bytes:
    return RECORD.pack(int(snapshot.observed_at.timestamp()),
                       *[_NAN if v is None else v for v in _COUNTS(snapshot.counts)])


def record_time(record: bytes) -> int:
    """A record's ``observed_at``, epoch seconds."""
    return int.from_bytes(record[:4], "big")


def encode_sequence(records: Iterable[bytes]) -> bytes:
    """A stored sequence of records already in time order (the merge script sorts them in Redis)."""
    return FORMAT_VERSION + b"".join(records)


def decode_sequence(blob: bytes) -> np.ndarray:
    """Stored bytes -> float64 array [n, 1 + len(COUNTER_NAMES)]: observed_at epoch seconds, counters."""
    return decode_sequences([blob])[0]


def decode_sequences(blobs: list[bytes | None]) -> list[np.ndarray]:
    """Many stored sequences at once: one ``frombuffer`` and one float64 conversion for the whole micro-batch,
    not numpy calls per post. The arrays returned are views of one table."""
    bodies = []
    for blob in blobs:
        if blob and blob[:1] != FORMAT_VERSION:
            raise ValueError(f"unknown sequence format version {blob[:1]!r}")
        bodies.append(memoryview(blob)[1:] if blob else b"")
    return decode_records(bodies)


def decode_records(bodies: Sequence[bytes | memoryview]) -> list[np.ndarray]:
    """Like ``decode_sequences``, of records without the header (a tail the merge script returns)."""
    lengths = [len(body) // RECORD.size for body in bodies]
    records = np.frombuffer(b"".join(bodies), dtype=RECORD_DTYPE)
    table = np.empty((len(records), len(RECORD_DTYPE.names)))
    for column, name in enumerate(RECORD_DTYPE.names):
        table[:, column] = records[name]
    return np.split(table, np.cumsum(lengths)[:-1])


# --- the post hash ------------------------------------------------------------------------------------------

CREATED_AT, PLATFORM, CATEGORY, CONTENT, STATIC, TITLE = "created_at", "platform", "category", "content", \
    "static", "title"
PREDICTED_TO = "predicted_to"  # merge_snapshots.lua and record_predictions.lua name it too

META_FIELDS = (CREATED_AT, PLATFORM, CATEGORY, CONTENT)
"""The post-hash fields read back with every sequence, in ``PostMeta.from_values`` order. The inputs the
content vector was computed from (``CONTENT_INPUT_FIELDS``) stay in the hash but are read only to recompute it."""
META_FIELDS_JSON = json.dumps(META_FIELDS)
CONTENT_INPUT_FIELDS = (STATIC, TITLE)

PREDICTION_FIELD = "prediction:"  # + the model kind; record_predictions.lua writes these
EVAL_FIELD = "eval:"  # + model:version:age_h; record_predictions.lua writes these


def prediction_field(kind: str) -> str:
    return f"{PREDICTION_FIELD}{kind}"


def latest_predictions(fields: dict[bytes, bytes]) -> dict[str, dict]:
    """A post hash's latest prediction of each model kind, decoded."""
    prefix = PREDICTION_FIELD.encode()
    return {name[len(prefix):].decode(): json.loads(value) for name, value in fields.items()
            if name.startswith(prefix)}


def eval_field(model_name: str, version: str, age_h: float) -> str:
    """``model_name`` is the served model's name, which names its platform (``popscore_reddit_temporal``), or
    ``persistence`` for the fallback."""
    return f"{EVAL_FIELD}{model_name}:{version}:{age_h:g}"


def parse_eval_field(name: str) -> tuple[str, str, str]:
    """(model name, version, age_h) of an ``eval_field`` name."""
    model, version, age = name[len(EVAL_FIELD):].split(":")
    return model, version, age


def kept_predictions(fields: dict[bytes, bytes]) -> dict[str, float]:
    """A post hash's ``eval_field`` fields and their predicted log scores."""
    prefix = EVAL_FIELD.encode()
    return {name.decode(): float(value) for name, value in fields.items() if name.startswith(prefix)}


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
    ok = np.array([b is not None and len(b) == width and b[:CONTENT_HEADER.size] == tag for b in blobs], bool)
    table = np.zeros((len(blobs), dim + n_weights), np.float32)
    if ok.any():
        body = b"".join(memoryview(b)[CONTENT_HEADER.size:] for b, good in zip(blobs, ok) if good)
        table[ok] = np.frombuffer(body, dtype="<f4").reshape(-1, dim + n_weights)
    return table[:, :dim], table[:, dim:], ok


def encode_post(post: Post, static_features: np.ndarray, content: bytes | None, embedded_title: bool
                ) -> dict[str, str | bytes]:
    """The post-hash fields a post event sets: what the temporal model needs (age, platform, category, content
    vector) and the inputs the vector came from, to compute it for a new model. ``content`` is None for a post
    no model set scores; the title (tens of bytes; its token states would be ~20 KB) only if titles are
    embedded."""
    fields: dict[str, str | bytes] = {CREATED_AT: str(int(post.created_at.timestamp())), PLATFORM: post.platform,
                                      STATIC: np.asarray(static_features, dtype=np.float32).tobytes()}
    if content is not None:
        fields[CONTENT] = content
    if embedded_title:
        fields[TITLE] = post.text.title or ""
    category = post.attributes.get("category")
    if category is not None:
        fields[CATEGORY] = str(category)
    return fields


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
        """From the values of ``META_FIELDS``, in order."""
        return cls(created_at=None if created_at is None else float(created_at),
                   platform=None if platform is None else platform.decode(),
                   category=None if category is None else category.decode(), content=content)

    @classmethod
    def from_hash(cls, fields: dict[bytes, bytes]) -> "PostMeta":
        return cls.from_values(*(fields.get(name.encode()) for name in META_FIELDS))


# --- the Lua scripts: one function per script builds its KEYS and ARGV ------------------------------------

MERGE_SNAPSHOTS, CLAIM_AWAITING, RELEASE_AWAITING, RECORD_PREDICTIONS, CLAIM_MEDIA_RETRIES = \
    "merge_snapshots.lua", "claim_awaiting.lua", "release_awaiting.lua", "record_predictions.lua", \
    "claim_media_retries.lua"


def lua_source(script: str) -> str:
    return resources.files("popscore.stream").joinpath("lua").joinpath(script).read_text()


DUPLICATE, APPENDED, CORRECTED, OUT_OF_ORDER = 0, 1, 2, 3  # what the merge did with each record
KEEP_META, READ_META, REFRESH_TTL = 48, 49, 50  # b"0", b"1", b"2": what a merge does with a post's hash


def merge_snapshots_call(keys: RedisKeys, post_ids: Sequence[str], records: dict[str, list[bytes]],
                         meta_actions: bytes, ttl_s: int, meta_ttl_s: int, lookback_s: float
                         ) -> tuple[list[str], list]:
    """merge_snapshots.lua's KEYS and ARGV for ``post_ids``, all of one shard
    (``RedisKeys.by_shard``): their new ``records``, and per post one of
    ``KEEP_META``, ``READ_META``, ``REFRESH_TTL``; ``lookback_s``: how far before a post's latest observation
    the reply's tail reaches (``popscore.features.lookback_s``)."""
    call_keys, args = [], [FORMAT_VERSION, RECORD.size, ttl_s, META_FIELDS_JSON, meta_ttl_s, meta_actions,
                           math.ceil(lookback_s)]
    for post_id in post_ids:
        call_keys += [keys.sequence(post_id), keys.post(post_id)]
        args.append(b"".join(records[post_id]))
    return call_keys, args


def claim_awaiting_call(keys: RedisKeys, shard: int, now: float, lease_until: float, limit: int
                        ) -> tuple[list[str], list]:
    return [keys.awaiting(shard)], [now, lease_until, limit]


def release_awaiting_call(keys: RedisKeys, shard: int, lease_until: float, post_ids: Sequence[str]
                          ) -> tuple[list[str], list]:
    return [keys.awaiting(shard)], [lease_until, *post_ids]


def claim_media_retries_call(keys: RedisKeys, shard: int, now: float, lease_until: float, limit: int
                             ) -> tuple[list[str], list]:
    return [keys.media_retry(shard), keys.media_retry_posts(shard)], [now, lease_until, limit]


def encode_retry(retries: int, post: Post) -> bytes:
    """A ``media_retry_posts`` record: the retries of the post's picture made so far and the post event."""
    return b'{"retries":%d,"post":%s}' % (retries, post.model_dump_json(by_alias=True, exclude_none=True).encode())


def decode_retry(record: bytes) -> tuple[int, Post]:
    """(retries made, post) of an ``encode_retry`` record."""
    fields = orjson.loads(record)
    return int(fields["retries"]), Post.model_validate_json(orjson.dumps(fields["post"]))


@dataclass(frozen=True)
class RecordedPrediction:
    """One prediction as record_predictions.lua stores it."""

    post_id: str
    score: float
    rising: float
    platform: str
    category: str | None
    latest_view: str  # JSON text
    matures_at: float
    kept_for_evaluation: tuple[tuple[str, float], ...] = ()  # (eval_field, predicted log score)
    as_of: int = 0  # observation time (epoch s) the prediction is as of
    known_platform: bool = False  # a platform the deployment knows (``Route.label``): its board is not counted


@dataclass(frozen=True)
class BoardLimits:
    """What bounds the leaderboards: how long a board outlives its last write, and which categories get one."""

    ttl_s: int = 7 * 24 * 3600
    max_categories: int = 100  # category boards at once, first come (when ``categories`` is empty)
    max_platforms: int = 100  # boards of platforms the deployment does not know, first come
    categories: frozenset[str] = frozenset()  # the allow-list; empty: any category, up to ``max_categories``


OTHER_PLATFORM_BOARD = platform_board("other")  # where an unknown platform beyond the bound is ranked
FIXED_BOARDS = (TOP_BOARD, RISING_BOARD, OTHER_PLATFORM_BOARD)  # record_predictions.lua's KEYS[5], [6], [7]


def record_predictions_call(keys: RedisKeys, shard: int, ttl_s: int, board_size: int, kind: str,
                            predictions: Sequence[RecordedPrediction], limits: BoardLimits, now: float
                            ) -> tuple[list[str], list]:
    """record_predictions.lua's KEYS and ARGV for ``predictions`` of posts of ``shard``. KEYS name every key the
    script may write: the shard's sets and fixed boards, each post's hash, and the board of each platform and
    (allowed) category among the rows, whether or not the script then admits it (ARGV[10] names them)."""
    allowed = limits.categories
    rows, boards = [], {}
    for p in predictions:
        category = p.category if p.category and (not allowed or p.category in allowed) else ""
        rows.append([p.post_id, p.score, p.rising, p.platform, category, p.latest_view, p.matures_at,
                     [[name, repr(value)] for name, value in p.kept_for_evaluation], p.as_of, int(p.known_platform)])
        if kind == "temporal":
            boards[platform_board(p.platform)] = None
            if category:
                boards[category_board(category)] = None
    max_categories = len(allowed) if allowed else limits.max_categories
    named = [name for name in boards if name not in FIXED_BOARDS]
    call_keys = [keys.maturity(shard), keys.boards(shard), keys.board_names(CATEGORY_BOARDS, shard),
                 keys.board_names(PLATFORM_BOARDS, shard), *(keys.board(name, shard) for name in FIXED_BOARDS),
                 *(keys.post(p.post_id) for p in predictions), *(keys.board(name, shard) for name in named)]
    return call_keys, [ttl_s, board_size, kind, orjson.dumps(rows), limits.ttl_s, max_categories,
                       limits.max_platforms, int(now), orjson.dumps(named)]

