"""The v1 contract: valid examples round-trip; each invalid one is rejected with a clear reason."""

import json
from datetime import datetime, timedelta, timezone

import pytest

from popscore.contract import (
    MAX_BATCH_SNAPSHOTS,
    DeadLetter,
    Post,
    Prediction,
    RejectedRecord,
    RejectReason,
    Snapshot,
    SnapshotBatch,
    decode_record,
    encode_record,
    json_schemas,
)

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
MAX_BYTES = 4 * 1_048_576  # room for a batch over the snapshot cap
ALL = ("post.v1", "snapshot.v1", "snapshot-batch.v1", "prediction.v1", "deadletter.v1")

POST = {
    "schema": "post.v1", "post_id": "yt:abc_123", "platform": "youtube", "created_at": "2025-12-31T10:00:00Z",
    "author": {"id": "chan-1", "followers": 1200, "verified": True, "country": "US"},
    "text": {"title": "A title", "description": "Words", "tags": ["music", "live"]},
    "media": {"image_uris": ["https://img.example/1.jpg"], "video_uri": "file:///v/1.mp4", "duration_s": 61.5},
    "attributes": {"category": "Music", "category_id": 10},
}
SNAPSHOT = {"schema": "snapshot.v1", "post_id": "yt:abc_123", "observed_at": "2025-12-31T11:00:00+00:00",
            "counts": {"views": 1000, "likes": 50, "dislikes": 2}}
PREDICTION = {"schema": "prediction.v1", "post_id": "yt:abc_123", "model": "temporal", "model_version": "3",
              "as_of": "2025-12-31T11:00:00Z", "horizon_s": 604800, "score": 1234.5, "log_score": 7.12,
              "interval": [6.5, 7.8], "explanation": {"modality_weights": {"text": 0.3}},
              "produced_at": "2025-12-31T11:00:01Z"}


def decode(raw, accept=ALL):
    data = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    return decode_record(data, accept=accept, now=NOW, max_bytes=MAX_BYTES)


def with_(base, path, value):
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


@pytest.mark.parametrize("raw, model", [
    (POST, Post), (SNAPSHOT, Snapshot), ({"schema": "snapshot-batch.v1", "snapshots": [SNAPSHOT] * 3}, SnapshotBatch),
    (PREDICTION, Prediction),
])
def test_valid_records_round_trip(raw, model):
    event = decode(raw)
    assert isinstance(event, model)
    again = decode(encode_record(event))
    assert again == event


def test_snapshot_keeps_extra_counters_and_the_instant_of_an_offset_time():
    event = decode(with_(SNAPSHOT, "observed_at", "2025-12-31T13:00:00+02:00"))
    assert event.observed_at.timestamp() == datetime(2025, 12, 31, 11, tzinfo=timezone.utc).timestamp()
    assert event.counts.as_dict() == {"views": 1000, "likes": 50, "dislikes": 2}


def test_dead_letter_round_trips_original_bytes():
    error = RejectedRecord(RejectReason.NOT_JSON, "Expecting value")
    letter = DeadLetter.of(topic="snapshots", partition=2, offset=7, key=b"k", value=b"\xff\x00", error=error)
    again = decode(encode_record(letter))
    assert again.value_b64 == "/wA=" and again.reason is RejectReason.NOT_JSON and again.offset == 7


INVALID = [
    # (id, raw, reason, words the message must contain)
    ("negative counter", with_(SNAPSHOT, "counts.views", -1), RejectReason.INVALID, "counts.views"),
    ("float counter", with_(SNAPSHOT, "counts.likes", 5.0), RejectReason.INVALID, "counts.likes"),
    ("string counter", with_(SNAPSHOT, "counts.likes", "5"), RejectReason.INVALID, "valid integer"),
    ("bool counter", with_(SNAPSHOT, "counts.likes", True), RejectReason.INVALID, "counts.likes"),
    ("huge counter", with_(SNAPSHOT, "counts.views", 2**60), RejectReason.INVALID, "less than or equal"),
    ("extra counter not int", with_(SNAPSHOT, "counts.saves", 1.5), RejectReason.INVALID, "counts.saves"),
    ("no counters", with_(SNAPSHOT, "counts", {}), RejectReason.INVALID, "at least one counter"),
    ("missing post_id", with_(SNAPSHOT, "post_id", ...), RejectReason.INVALID, "post_id: Field required"),
    ("empty post_id", with_(SNAPSHOT, "post_id", ""), RejectReason.INVALID, "post_id"),
    ("post_id too long", with_(SNAPSHOT, "post_id", "x" * 129), RejectReason.INVALID, "at most 128"),
    ("post_id with spaces", with_(SNAPSHOT, "post_id", "a b"), RejectReason.INVALID, "pattern"),
    ("naive timestamp", with_(SNAPSHOT, "observed_at", "2025-12-31T11:00:00"), RejectReason.INVALID,
     "timezone"),
    ("before 2005", with_(SNAPSHOT, "observed_at", "2004-12-31T23:59:59Z"), RejectReason.INVALID, "before 2005"),
    ("far future", with_(SNAPSHOT, "observed_at", "2026-01-03T00:00:00Z"), RejectReason.INVALID, "ahead of now"),
    ("epoch number time", with_(SNAPSHOT, "observed_at", 1767178800), RejectReason.INVALID, "observed_at"),
    ("unknown top-level field", with_(SNAPSHOT, "obseved_at", "x"), RejectReason.INVALID,
     "obseved_at: Extra inputs are not permitted"),
    ("unknown text field", with_(POST, "text.body", "x"), RejectReason.INVALID, "text.body"),
    ("title too long", with_(POST, "text.title", "t" * 1001), RejectReason.INVALID, "text.title"),
    ("too many tags", with_(POST, "text.tags", ["t"] * 65), RejectReason.INVALID, "text.tags"),
    ("bad uri scheme", with_(POST, "media.image_uris", ["ftp://x/y.jpg"]), RejectReason.INVALID,
     "media.image_uris.0"),
    ("inlined media", with_(POST, "media.video_uri", "data:video/mp4;base64,AAAA"), RejectReason.INVALID,
     "media.video_uri"),
    ("negative duration", with_(POST, "media.duration_s", -1), RejectReason.INVALID, "media.duration_s"),
    ("platform uppercase", with_(POST, "platform", "YouTube"), RejectReason.INVALID, "platform"),
    ("author attribute not scalar", with_(POST, "author.friends", [1, 2]), RejectReason.INVALID,
     "author.friends"),
    ("too many attributes", with_(POST, "attributes", {f"a{i}": i for i in range(65)}), RejectReason.INVALID,
     "attributes"),
    ("empty batch", {"schema": "snapshot-batch.v1", "snapshots": []}, RejectReason.INVALID, "snapshots"),
    ("batch over cap", {"schema": "snapshot-batch.v1", "snapshots": [SNAPSHOT] * (MAX_BATCH_SNAPSHOTS + 1)},
     RejectReason.INVALID, "snapshots"),
    ("bad snapshot in batch", {"schema": "snapshot-batch.v1", "snapshots": [SNAPSHOT, with_(SNAPSHOT, "counts.views", -3)]},
     RejectReason.INVALID, "snapshots.1.counts.views"),
    ("late check names the batch index", {"schema": "snapshot-batch.v1", "snapshots": [
        SNAPSHOT, with_(SNAPSHOT, "observed_at", "2004-01-01T00:00:00Z"), with_(SNAPSHOT, "counts", {})]},
     RejectReason.INVALID, "snapshots.1.observed_at: timestamp 2004-01-01T00:00:00+00:00 is before 2005-01-01; "
                           "snapshots.2.counts: counts must hold at least one counter"),
    ("post in the future", with_(POST, "created_at", "2026-01-03T00:00:00Z"), RejectReason.INVALID,
     "created_at: timestamp"),
    ("interval reversed", with_(PREDICTION, "interval", [8.0, 7.0]), RejectReason.INVALID, "lo <= hi"),
    ("unknown schema", with_(SNAPSHOT, "schema", "snapshot.v2"), RejectReason.UNKNOWN_SCHEMA, "snapshot.v2"),
    ("no schema", with_(SNAPSHOT, "schema", ...), RejectReason.UNKNOWN_SCHEMA, "None"),
    ("not json", b"{not json", RejectReason.NOT_JSON, "Expecting"),
    ("not utf-8", b"\xff\xfe{}", RejectReason.NOT_UTF8, "utf-8"),
    ("json array", b"[1, 2]", RejectReason.NOT_AN_OBJECT, "list"),
    ("too large", b" " * (MAX_BYTES + 1), RejectReason.TOO_LARGE, f"{MAX_BYTES + 1} bytes"),
]


@pytest.mark.parametrize("raw, reason, words", [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_records_are_rejected_with_a_clear_reason(raw, reason, words):
    with pytest.raises(RejectedRecord) as caught:
        decode(raw)
    assert caught.value.reason is reason
    assert words in caught.value.detail


def test_schema_accepted_only_on_its_topic():
    with pytest.raises(RejectedRecord) as caught:
        decode(POST, accept=("snapshot.v1", "snapshot-batch.v1"))
    assert caught.value.reason is RejectReason.WRONG_TOPIC


def test_future_skew_is_configurable():
    raw = json.dumps(with_(SNAPSHOT, "observed_at", "2026-01-01T00:30:00Z")).encode()
    with pytest.raises(RejectedRecord):
        decode_record(raw, accept=ALL, now=NOW, max_future_skew=timedelta(minutes=10))
    assert decode_record(raw, accept=ALL, now=NOW, max_future_skew=timedelta(hours=1))


def test_json_schemas_publish_the_caps():
    schemas = json_schemas()
    assert set(schemas) == set(ALL)
    snapshot = schemas["snapshot.v1"]
    assert snapshot["properties"]["post_id"]["maxLength"] == 128
    assert snapshot["additionalProperties"] is False
    assert schemas["snapshot-batch.v1"]["properties"]["snapshots"]["maxItems"] == MAX_BATCH_SNAPSHOTS
