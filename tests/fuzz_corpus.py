"""A deterministic corpus of hostile and valid records for the posts and snapshots topics.

Each invalid record names its kind and the ``RejectReason`` value its dead letter must carry; the valid ones
(posts, then single snapshots keyed by post_id and snapshot-batch envelopes of them) must all be stored. Used by
``tests/unit/test_fuzz_corpus.py`` against the contract and by the integration fuzz test through the real
stack. Topics are logical names ("posts", "snapshots"); a test maps them to real topic names.

Envelopes have no Kafka key: ``route_key`` is the post_id whose partition they must be sent to (all the
snapshots of one envelope belong to that post, as the worker requires).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from popscore.contract import MAX_BATCH_SNAPSHOTS, MAX_COUNTER, MAX_JSON_DEPTH, MAX_TAGS, MAX_TITLE_CHARS

OVERSIZED_BYTES = 1_100_000  # over the default max_record_bytes (1 MiB): its dead letter must be truncated


@dataclass(frozen=True)
class FuzzRecord:
    topic: str  # "posts" or "snapshots"
    key: bytes | None
    value: bytes
    kind: str  # a short name of the invalid kind, or "valid"
    expected_reason: str | None  # RejectReason value expected in the dead letter; None for valid records
    invalid_indices: tuple[int, ...] = ()  # for envelopes with some invalid snapshots: which ones
    route_key: bytes | None = None  # for envelopes (no key): the post_id whose partition they go to


WORKER_KINDS = frozenset({"key_differs_from_post_id", "missing_key"})
"""Kinds the contract accepts and the worker rejects (a record must be keyed by its post_id)."""


def _json(record: object) -> bytes:
    return json.dumps(record, separators=(",", ":"), allow_nan=True).encode()


def _rfc3339(when: datetime, rng: random.Random) -> str:
    text = when.astimezone(timezone.utc).replace(microsecond=0).isoformat()
    return text.replace("+00:00", "Z") if rng.random() < 0.5 else text


def post_record(post_id: str, created_at: str) -> dict:
    return {"schema": "post.v1", "post_id": post_id, "platform": "hackernews", "created_at": created_at,
            "author": {"id": "fuzz-author", "followers": 3}, "text": {"title": f"Fuzz post {post_id}"},
            "attributes": {"kind": "story"}}


def snapshot_record(post_id: str, observed_at: str, likes: int, comments: int) -> dict:
    return {"schema": "snapshot.v1", "post_id": post_id, "observed_at": observed_at,
            "counts": {"likes": likes, "comments": comments}}


def with_(base: dict, path: str, value: object) -> dict:
    """A deep copy of ``base`` with the dotted ``path`` set to ``value`` (or deleted when value is ...)."""
    record = json.loads(json.dumps(base))
    *parents, leaf = path.split(".")
    target = record
    for part in parents:
        target = target[part]
    if value is ...:
        del target[leaf]
    else:
        target[leaf] = value
    return record


def _envelope(snapshots: list) -> dict:
    return {"schema": "snapshot-batch.v1", "snapshots": snapshots}


# kind -> (topic, expected reason)
_KINDS: dict[str, tuple[str, str]] = {
    "oversized": ("posts", "too_large"),
    "not_utf8": ("snapshots", "not_utf8"),
    "not_json": ("posts", "not_json"),
    "truncated_json": ("snapshots", "not_json"),
    "empty_value": ("snapshots", "not_json"),
    "top_level_array": ("snapshots", "not_an_object"),
    "top_level_string": ("posts", "not_an_object"),
    "top_level_number": ("snapshots", "not_an_object"),
    "top_level_null": ("posts", "not_an_object"),
    "deeply_nested_array": ("snapshots", "invalid"),
    "deeply_nested_open_map": ("posts", "invalid"),
    "huge_integer_counter": ("snapshots", "invalid"),
    "huge_float_exponent": ("posts", "invalid"),
    "long_float": ("posts", "invalid"),
    "schema_list": ("snapshots", "unknown_schema"),
    "schema_object": ("posts", "unknown_schema"),
    "schema_unknown": ("snapshots", "unknown_schema"),
    "post_on_snapshots_topic": ("snapshots", "wrong_topic"),
    "snapshot_on_posts_topic": ("posts", "wrong_topic"),
    "missing_required_field": ("posts", "invalid"),
    "extra_unknown_field": ("snapshots", "invalid"),
    "negative_counter": ("snapshots", "invalid"),
    "string_counter": ("snapshots", "invalid"),
    "float_counter": ("snapshots", "invalid"),
    "counter_above_2_53": ("snapshots", "invalid"),
    "nan_in_attributes": ("posts", "invalid"),
    "infinity_author_rating": ("posts", "invalid"),
    "epoch_string_timestamp": ("snapshots", "invalid"),
    "epoch_number_timestamp": ("posts", "invalid"),
    "timestamp_without_zone": ("snapshots", "invalid"),
    "timestamp_without_seconds": ("posts", "invalid"),
    "timestamp_before_2005": ("snapshots", "invalid"),
    "timestamp_far_future": ("posts", "invalid"),
    "empty_counts": ("snapshots", "invalid"),
    "bad_post_id_chars": ("posts", "invalid"),
    "post_id_129_chars": ("snapshots", "invalid"),
    "duplicate_keys": ("snapshots", "invalid"),
    "duplicate_counter_key": ("snapshots", "invalid"),
    "title_too_long": ("posts", "invalid"),
    "too_many_tags": ("posts", "invalid"),
    "open_map_nested_object": ("posts", "invalid"),
    "envelope_over_10000": ("snapshots", "invalid"),
    "envelope_extra_top_level_key": ("snapshots", "invalid"),
    "envelope_empty": ("snapshots", "invalid"),
    "envelope_snapshots_not_a_list": ("snapshots", "invalid"),
    "envelope_some_invalid": ("snapshots", "invalid"),
    "key_differs_from_post_id": ("posts", "key_mismatch"),
    "missing_key": ("snapshots", "key_mismatch"),
}


def invalid_kinds() -> list[str]:
    """Every invalid kind, in a fixed order."""
    return list(_KINDS)


def expected_reason(kind: str) -> str:
    return _KINDS[kind][1]


def invalid_record(kind: str, n: int, *, prefix: str, valid_post_id: str, now: datetime,
                   rng: random.Random) -> FuzzRecord:
    """The ``n``-th record of ``kind``. Its post ids start with ``prefix`` and never name a valid post,
    except in ``envelope_some_invalid`` (its valid snapshots are of ``valid_post_id``) and the worker kinds."""
    topic, reason = _KINDS[kind]
    pid = f"{prefix}-bad-{kind.replace('_', '-')}-{n}"
    recent = _rfc3339(now - timedelta(hours=rng.randint(1, 5)), rng)
    post, snap = post_record(pid, recent), snapshot_record(pid, recent, rng.randint(0, 999), rng.randint(0, 99))
    key: bytes | None = pid.encode()
    invalid_indices: tuple[int, ...] = ()
    route_key = None

    match kind:
        case "oversized":
            body = _json(with_(post, "text.description", ""))
            pad = OVERSIZED_BYTES - len(body)
            value = _json(with_(post, "text.description", "x" * pad))
        case "not_utf8":
            value = b'{"schema":"snapshot.v1","post_id":"' + b"\xff\xfe\xc3" + b'"}'
        case "not_json":
            value = b'{"schema": post.v1, "post_id": ' + pid.encode() + b"}"
        case "truncated_json":
            value = _json(snap)[:-9]
        case "empty_value":
            value = b""
        case "top_level_array":
            value = b"[" + _json(snap) + b"]"
        case "top_level_string":
            value = b'"post.v1"'
        case "top_level_number":
            value = b"42"
        case "top_level_null":
            value = b"null"
        case "deeply_nested_array":
            value = b"[" * 100_000 + b"]" * 100_000
        case "deeply_nested_open_map":
            nested = b'{"a":' * (MAX_JSON_DEPTH + 50) + b"1" + b"}" * (MAX_JSON_DEPTH + 50)
            value = _json(post).replace(b'"attributes":{"kind":"story"}', b'"attributes":{"kind":' + nested + b"}")
        case "huge_integer_counter":
            value = _json(with_(snap, "counts.likes", 0)).replace(b'"likes":0', b'"likes":' + b"7" * 5_000, 1)
        case "huge_float_exponent":
            value = _json(post).replace(b'"kind":"story"', b'"kind":"story","weight":1e999999')
        case "long_float":
            value = _json(post).replace(b'"kind":"story"', b'"kind":"story","weight":1.' + b"0" * 60 + b"1")
        case "schema_list":
            value = _json(with_(snap, "schema", ["snapshot.v1"]))
        case "schema_object":
            value = _json(with_(post, "schema", {"name": "post.v1"}))
        case "schema_unknown":
            value = _json(with_(snap, "schema", "snapshot.v9"))
        case "post_on_snapshots_topic":
            value = _json(post)
        case "snapshot_on_posts_topic":
            value = _json(snap)
        case "missing_required_field":
            value = _json(with_(post, "platform", ...))
        case "extra_unknown_field":
            value = _json(with_(snap, "observed", recent))
        case "negative_counter":
            value = _json(with_(snap, "counts.likes", -1))
        case "string_counter":
            value = _json(with_(snap, "counts.likes", "5"))
        case "float_counter":
            value = _json(with_(snap, "counts.likes", 5.0))
        case "counter_above_2_53":
            value = _json(with_(snap, "counts.likes", MAX_COUNTER + 1))
        case "nan_in_attributes":
            value = _json(with_(post, "attributes.ratio", float("nan")))
        case "infinity_author_rating":
            value = _json(with_(post, "author.rating", float("inf")))
        case "epoch_string_timestamp":
            value = _json(with_(snap, "observed_at", str(int(now.timestamp()) - 3600)))
        case "epoch_number_timestamp":
            value = _json(with_(post, "created_at", int(now.timestamp()) - 3600))
        case "timestamp_without_zone":
            value = _json(with_(snap, "observed_at", recent.replace("Z", "").replace("+00:00", "")))
        case "timestamp_without_seconds":
            value = _json(with_(post, "created_at", (now - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%MZ")))
        case "timestamp_before_2005":
            value = _json(with_(snap, "observed_at", "2004-12-31T23:59:59Z"))
        case "timestamp_far_future":
            value = _json(with_(post, "created_at", _rfc3339(now + timedelta(days=30), rng)))
        case "empty_counts":
            value = _json(with_(snap, "counts", {}))
        case "bad_post_id_chars":
            value = _json(with_(post, "post_id", f"{pid} has/spaces"))
        case "post_id_129_chars":
            long_id = (pid + "-" + "x" * 129)[:129]
            value, key = _json(with_(snap, "post_id", long_id)), long_id.encode()
        case "duplicate_keys":
            value = _json(snap).replace(b'"post_id":', b'"post_id":"' + pid.encode() + b'-other","post_id":', 1)
        case "duplicate_counter_key":
            value = _json(snap).replace(b'"likes":', b'"likes":1,"likes":', 1)
        case "title_too_long":
            value = _json(with_(post, "text.title", "t" * (MAX_TITLE_CHARS + 1)))
        case "too_many_tags":
            value = _json(with_(post, "text.tags", [f"t{i}" for i in range(MAX_TAGS + 1)]))
        case "open_map_nested_object":
            value = _json(with_(post, "attributes.meta", {"source": "x"}))
        case "envelope_over_10000":
            one = {"post_id": f"{prefix}-e{n}", "observed_at": recent, "counts": {"likes": 1}}  # stays under 1 MiB
            value, key, route_key = _json(_envelope([one] * (MAX_BATCH_SNAPSHOTS + 1))), None, pid.encode()
        case "envelope_extra_top_level_key":
            value, key, route_key = _json({**_envelope([snap]), "producer": "x"}), None, pid.encode()
        case "envelope_empty":
            value, key, route_key = _json(_envelope([])), None, pid.encode()
        case "envelope_snapshots_not_a_list":
            value, key, route_key = _json({"schema": "snapshot-batch.v1", "snapshots": snap}), None, pid.encode()
        case "envelope_some_invalid":
            times = [_rfc3339(now - timedelta(minutes=50 - 10 * i), rng) for i in range(5)]
            good = [snapshot_record(valid_post_id, t, 10 + i, i) for i, t in enumerate(times)]
            good[1] = with_(good[1], "counts.likes", -5)
            good[3] = with_(good[3], "observed_at", "2004-01-01T00:00:00Z")
            invalid_indices = (1, 3)
            value, key, route_key = _json(_envelope(good)), None, valid_post_id.encode()
        case "key_differs_from_post_id":
            value, key = _json(post), f"{pid}-other-key".encode()
        case "missing_key":
            value, key = _json(snap), None
        case _:
            raise ValueError(f"unknown kind {kind!r}")
    return FuzzRecord(topic, key, value, kind, reason, invalid_indices, route_key)


def corpus(n_invalid: int, *, n_posts: int = 10, snapshots_per_post: int = 3, prefix: str = "fz", seed: int = 0,
           now: datetime | None = None) -> list[FuzzRecord]:
    """``n_posts`` valid posts first (ids ``{prefix}-post-{i}``), then, shuffled, their valid snapshots (single
    records keyed by post_id, and one envelope of each post's snapshots) and ``n_invalid`` invalid records
    cycling through ``invalid_kinds()`` (so ``n_invalid >= len(invalid_kinds())`` covers every kind)."""
    rng = random.Random(seed)
    now = now or datetime.now(timezone.utc)
    records: list[FuzzRecord] = []
    post_ids = [f"{prefix}-post-{i}" for i in range(n_posts)]
    for pid in post_ids:
        created = _rfc3339(now - timedelta(hours=rng.randint(2, 6), minutes=rng.randint(0, 59)), rng)
        records.append(FuzzRecord("posts", pid.encode(), _json(post_record(pid, created)), "valid", None))
    rest: list[FuzzRecord] = []
    for pid in post_ids:
        likes = 0
        batch = []
        for j in range(snapshots_per_post):
            likes += rng.randint(0, 50)
            when = _rfc3339(now - timedelta(minutes=90 - 10 * j), rng)
            rest.append(FuzzRecord("snapshots", pid.encode(), _json(snapshot_record(pid, when, likes, j)), "valid",
                                   None))
            batch.append(snapshot_record(pid, _rfc3339(now - timedelta(minutes=85 - 10 * j), rng), likes + 1, j))
        rest.append(FuzzRecord("snapshots", None, _json(_envelope(batch)), "valid", None, route_key=pid.encode()))
    kinds = invalid_kinds()
    for n in range(n_invalid):
        kind = kinds[n % len(kinds)]
        valid_post_id = post_ids[n % len(post_ids)] if post_ids else f"{prefix}-post-0"
        rest.append(invalid_record(kind, n, prefix=prefix, valid_post_id=valid_post_id, now=now, rng=rng))
    rng.shuffle(rest)
    return records + rest
