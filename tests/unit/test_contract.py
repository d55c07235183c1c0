"""The v1 contract: valid examples round-trip; each invalid one is rejected with a clear reason."""

import base64
import hashlib
import json
from datetime import datetime, timedelta, timezone

import pytest

from popscore.contract import (
    DEADLETTER_ORIGINAL_BYTES,
    MAX_BATCH_SNAPSHOTS,
    MAX_JSON_DEPTH,
    MAX_NUMBER_CHARS,
    DeadLetter,
    Post,
    Prediction,
    RejectedRecord,
    RejectReason,
    Snapshot,
    SnapshotBatch,
    decode_record,
    decode_snapshots,
    encode_record,
    json_schemas,
)
from popscore.settings import LimitSettings
from tests.fuzz_corpus import with_

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
    ("not json", b"{not json", RejectReason.NOT_JSON, "line 1 column 2"),
    ("not utf-8", b"\xff\xfe{}", RejectReason.NOT_UTF8, "utf-8"),
    ("json array", b"[1, 2]", RejectReason.NOT_AN_OBJECT, "an array"),
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


# --- strictness the README promises ---------------------------------------------------------------------------

STRICT_INVALID = [
    ("NaN in attributes", with_(POST, "attributes.ratio", float("nan")), "attributes.ratio"),
    ("Infinity in author extras", with_(POST, "author.score", float("inf")), "author.score"),
    ("-Infinity author rating", with_(POST, "author.rating", float("-inf")), "author.rating"),
    ("NaN duration", with_(POST, "media.duration_s", float("nan")), "media.duration_s"),
    ("NaN prediction score", with_(PREDICTION, "score", float("nan")), "score"),
    ("epoch string", with_(SNAPSHOT, "observed_at", "1700000000"), "RFC 3339"),
    ("epoch string with fraction", with_(POST, "created_at", "1700000000.5"), "RFC 3339"),
    ("epoch float", with_(SNAPSHOT, "observed_at", 1767178800.5), "RFC 3339"),
    ("no seconds", with_(SNAPSHOT, "observed_at", "2025-12-31T11:00Z"), "RFC 3339"),
    ("offset without colon", with_(SNAPSHOT, "observed_at", "2025-12-31T11:00:00+0000"), "RFC 3339"),
    ("underscore separator", with_(SNAPSHOT, "observed_at", "2025-12-31_11:00:00Z"), "RFC 3339"),
    ("date only", with_(SNAPSHOT, "observed_at", "2025-12-31"), "RFC 3339"),
    ("long float", with_(POST, "author.rating", "LONG"), f"at most {MAX_NUMBER_CHARS}"),
]


@pytest.mark.parametrize("raw, words", [c[1:] for c in STRICT_INVALID], ids=[c[0] for c in STRICT_INVALID])
def test_nan_epoch_times_and_long_numbers_are_rejected(raw, words):
    data = json.dumps(raw).encode().replace(b'"LONG"', b"1." + b"0" * 50 + b"1")
    with pytest.raises(RejectedRecord) as caught:
        decode(data)
    assert caught.value.reason is RejectReason.INVALID
    assert words in caught.value.detail


@pytest.mark.parametrize("stamp", ["2025-12-31T11:00:00Z", "2025-12-31t11:00:00z", "2025-12-31 11:00:00+00:00",
                                   "2025-12-31T13:00:00.123456+02:00", "2025-12-31T11:00:00.5-00:00"])
def test_rfc3339_timestamps_are_accepted(stamp):
    assert decode(with_(SNAPSHOT, "observed_at", stamp)).observed_at.tzinfo is not None


def test_a_number_of_40_characters_is_accepted():
    data = json.dumps(with_(POST, "author.rating", "N")).encode().replace(b'"N"', b"1." + b"0" * 37 + b"1")
    assert decode(data).author.rating == 1.0


def test_models_built_in_python_take_datetimes_as_before():
    snapshot = Snapshot(post_id="a", observed_at=datetime(2025, 1, 1, tzinfo=timezone.utc), counts={"likes": 1})
    assert decode(encode_record(snapshot)) == snapshot


DUPLICATES = [
    ("top-level", b'{"schema":"snapshot.v1","post_id":"a","post_id":"b","observed_at":"2025-12-31T11:00:00Z",'
                  b'"counts":{"likes":1}}', "<record>: duplicate key 'post_id'"),
    ("counter", b'{"schema":"snapshot.v1","post_id":"a","observed_at":"2025-12-31T11:00:00Z",'
                b'"counts":{"likes":1,"likes":2}}', "counts: duplicate key 'likes'"),
    ("escaped key", b'{"schema":"snapshot.v1","post_id":"a","post\\u005fid":"b","observed_at":'
                    b'"2025-12-31T11:00:00Z","counts":{"likes":1}}', "duplicate key 'post_id'"),
    ("space before colon", b'{"schema":"snapshot.v1","post_id":"a","observed_at":"2025-12-31T11:00:00Z",'
                           b'"counts":{"likes":1,"likes" :2}}', "counts: duplicate key 'likes'"),
    ("post attribute", json.dumps(POST).encode().replace(b'"category": "Music"', b'"category": "A", "category": "B"'),
     "attributes: duplicate key 'category'"),
    ("post with a colon-led title", json.dumps(with_(POST, "text.title", ':) "q":')).encode().replace(
        b'"description": "Words"', b'"description": "A", "description": "B"'), "text: duplicate key 'description'"),
    ("envelope element", b'{"schema":"snapshot-batch.v1","snapshots":[{"post_id":"a","observed_at":'
                         b'"2025-12-31T11:00:00Z","counts":{"likes":1,"likes":2}}]}',
     "snapshots.0.counts: duplicate key 'likes'"),
]


@pytest.mark.parametrize("data, words", [c[1:] for c in DUPLICATES], ids=[c[0] for c in DUPLICATES])
def test_duplicate_keys_are_rejected(data, words):
    with pytest.raises(RejectedRecord) as caught:
        decode(data)
    assert caught.value.reason is RejectReason.INVALID
    assert words in caught.value.detail


def test_escaped_timestamp_keys_and_values_are_checked_like_plain_ones():
    base = b'{"schema":"snapshot.v1","post_id":"a","observ\\u0065d_at":%s,"counts":{"likes":1}}'
    with pytest.raises(RejectedRecord) as caught:
        decode(base % b'"1700000000"')
    assert "RFC 3339" in caught.value.detail
    assert decode(base % b'"2025-12-31T11:00:00\\u005a"').observed_at.hour == 11


def test_strings_that_look_like_keys_are_not_duplicates():
    post = with_(with_(POST, "text.title", 'say "a": then'), "text.description", ":starts with a colon")
    assert decode(post).text.title == 'say "a": then'


# --- bounded work on hostile input --------------------------------------------------------------------------

MiB = 1_048_576
SNAP = '{"schema":"snapshot.v1","post_id":"a","observed_at":"2025-12-31T11:00:00Z","counts":{"likes":%s}}'


def envelope(elements):
    return ('{"schema":"snapshot-batch.v1","snapshots":[' + ",".join(elements) + "]}").encode()


WORST = [
    ("1 MiB of [", b"[" * (MiB - 1), RejectReason.INVALID, f"deeper than {MAX_JSON_DEPTH}"),
    ("1 MiB of nested objects", b'{"a":' * (MiB // 5), RejectReason.INVALID, "nested deeper"),
    ("nesting in an open map", json.dumps(with_(POST, "attributes", "X")).encode().replace(
        b'"X"', b'{"a":' + b"[" * (MiB - 1000)), RejectReason.INVALID, "nested deeper"),
    ("one 1 MiB integer", b"7" * (MiB - 1), RejectReason.INVALID, "number longer than"),
    ("a 1 MiB counter", (SNAP % ("7" * (MiB - 200))).encode(), RejectReason.INVALID, "number longer than"),
    ("100k big numbers", b"[" + b",".join([b"12345678901234567890123"] * 40_000) + b"]",
     RejectReason.NOT_AN_OBJECT, "array"),
    ("envelope of big counters", envelope([SNAP % ("9" * 25)] * 8_000), RejectReason.INVALID, "less than or equal"),
    ("1 MiB string", b'"' + b"a" * (MiB - 3) + b'"', RejectReason.NOT_AN_OBJECT, "string"),
    ("1 MiB title", json.dumps(with_(POST, "text.title", "a" * (MiB - 500))).encode(), RejectReason.INVALID,
     "text.title"),
    ("1 MiB of escapes", json.dumps(with_(POST, "text.title", "é" * ((MiB - 500) // 6))).encode(),
     RejectReason.INVALID, "text.title"),
    ("1 MiB of whitespace", b" " * MiB, RejectReason.NOT_JSON, "EOF"),
    ("1 MiB schema list", b'{"schema":[' + b"1," * (MiB // 2 - 10) + b"1]}", RejectReason.UNKNOWN_SCHEMA, "array"),
    ("schema object", b'{"schema":{"a":1}}', RejectReason.UNKNOWN_SCHEMA, "object"),
    ("huge exponent", (SNAP % "1e999999999").encode(), RejectReason.INVALID, "counts.likes"),
    ("many duplicate keys", b"{" + b'"a":1,' * (MiB // 6 - 1) + b'"b":1}', RejectReason.UNKNOWN_SCHEMA, "None"),
    ("8,000 invalid snapshots", envelope([SNAP % "-1"] * 8_000), RejectReason.INVALID, "greater than or equal"),
]


@pytest.mark.parametrize("data, reason, words", [c[1:] for c in WORST], ids=[c[0] for c in WORST])
def test_worst_case_inputs_are_rejected_not_raised(data, reason, words):
    assert len(data) <= MiB
    for decoder in (lambda d: decode_record(d, accept=ALL, now=NOW), lambda d: decode_snapshots(d, now=NOW)):
        try:
            result = decoder(data)
        except RejectedRecord as exc:
            if exc.reason is RejectReason.WRONG_TOPIC:
                continue
            assert exc.reason is reason and words in exc.detail, exc.detail
        else:  # decode_snapshots keeps an envelope's invalid elements apart
            assert not result.snapshots and result.rejected
            assert all(p.error.reason is reason and words in p.error.detail for p in result.rejected)


def test_an_unexpected_exception_while_decoding_becomes_a_rejection(monkeypatch):
    import popscore.contract as contract

    def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(contract, "_record_problem", broken)
    for decoder in (lambda d: decode_record(d, accept=ALL, now=NOW), lambda d: decode_snapshots(d, now=NOW)):
        with pytest.raises(RejectedRecord) as caught:
            decoder(json.dumps(SNAPSHOT).encode())
        assert caught.value.reason is RejectReason.INVALID and "KeyError" in caught.value.detail


# --- dead letters ---------------------------------------------------------------------------------------------

def test_dead_letters_of_large_records_are_cut_to_fit():
    value, key = b"v" * 1_100_000, b"k" * 300_000
    error = RejectedRecord(RejectReason.TOO_LARGE, "x" * 10_000)
    letter = DeadLetter.of(topic="posts", partition=0, offset=1, key=key, value=value, error=error)
    encoded = encode_record(letter)
    assert len(encoded) < 1_000_000
    again = decode_record(encoded, accept=ALL, max_bytes=MiB)
    assert base64.b64decode(again.value_b64) == value[:DEADLETTER_ORIGINAL_BYTES]
    assert again.value_truncated and again.value_bytes == len(value)
    assert again.value_sha256 == hashlib.sha256(value).hexdigest()
    assert again.key_truncated and again.key_bytes == len(key) and len(base64.b64decode(again.key_b64)) == 262_144
    assert again.index is None and len(again.detail) == 4_000


def test_dead_letter_cap_and_index_are_keywords():
    error = RejectedRecord(RejectReason.INVALID, "counts.likes: negative")
    letter = DeadLetter.of(topic="snapshots", partition=1, offset=2, key=None, value=b"12345", error=error,
                           index=7, max_original_bytes=3)
    assert base64.b64decode(letter.value_b64) == b"123" and letter.value_truncated and letter.value_bytes == 5
    assert letter.index == 7 and letter.key_b64 is None and letter.key_truncated is None
    small = DeadLetter.of(topic="t", partition=0, offset=0, key=b"k", value=b"v", error=error)
    assert small.value_truncated is False and small.key_truncated is False


def test_the_settings_default_is_the_contract_default():
    assert LimitSettings().deadletter_original_bytes == DEADLETTER_ORIGINAL_BYTES


# --- per-snapshot rejection of envelopes ------------------------------------------------------------------------

def snapshots(*elements, **top):
    return json.dumps({"schema": "snapshot-batch.v1", "snapshots": list(elements), **top}).encode()


def test_a_valid_envelope_decodes_whole():
    decoded = decode_snapshots(snapshots(*[with_(SNAPSHOT, "post_id", f"p{i}") for i in range(5)]), now=NOW)
    assert decoded.envelope and not decoded.rejected and decoded.indices == [0, 1, 2, 3, 4]
    assert [s.post_id for s in decoded.snapshots] == [f"p{i}" for i in range(5)]
    single = decode_snapshots(json.dumps(SNAPSHOT).encode(), now=NOW)
    assert not single.envelope and single.snapshots[0].post_id == "yt:abc_123" and single.indices == [0]


def test_an_envelope_keeps_its_valid_snapshots_and_names_the_invalid_ones():
    elements = [with_(SNAPSHOT, "post_id", "p0"), with_(SNAPSHOT, "counts.views", -3), 5,
                with_(SNAPSHOT, "observed_at", "2004-01-01T00:00:00Z"), with_(SNAPSHOT, "counts", {}),
                with_(SNAPSHOT, "observed_at", "1700000000"), with_(SNAPSHOT, "post_id", "p6"),
                with_(SNAPSHOT, "counts.likes", float("nan"))]
    decoded = decode_snapshots(snapshots(*elements), now=NOW)
    assert [s.post_id for s in decoded.snapshots] == ["p0", "p6"] and decoded.indices == [0, 6]
    details = {p.index: p.error.detail for p in decoded.rejected}
    assert list(details) == [1, 2, 3, 4, 5, 7]
    assert all(p.error.reason is RejectReason.INVALID for p in decoded.rejected)
    assert "counts.views" in details[1] and "object" in details[2] and "before 2005" in details[3]
    assert "at least one counter" in details[4] and "RFC 3339" in details[5] and "counts.likes" in details[7]
    parts = {p.index: p.value for p in decoded.rejected}
    assert json.loads(parts[1])["counts"]["views"] == -3 and parts[2] == b"5" and b"NaN" in parts[7]
    assert json.loads(parts[3])["post_id"] == "yt:abc_123"


def test_an_envelope_element_with_a_duplicate_key_is_rejected_alone():
    good = json.dumps(SNAPSHOT)
    data = f'{{"schema":"snapshot-batch.v1","snapshots":[{good},{good[:-2]}, "likes": 9}}}}]}}'.encode()
    decoded = decode_snapshots(data, now=NOW)
    assert len(decoded.snapshots) == 1 and [p.index for p in decoded.rejected] == [1]
    assert "counts: duplicate key 'likes'" in decoded.rejected[0].error.detail


@pytest.mark.parametrize("data, words", [
    (snapshots(), "at least 1"),
    (snapshots(*[SNAPSHOT] * (MAX_BATCH_SNAPSHOTS + 1)), "at most 10000"),
    (snapshots(SNAPSHOT, producer="x"), "producer"),
    (json.dumps({"schema": "snapshot-batch.v1", "snapshots": SNAPSHOT}).encode(), "array"),
    (json.dumps({"schema": "snapshot-batch.v1"}).encode(), "snapshots: Field required"),
    (b'{"schema":"snapshot-batch.v1","snapshots":[],"snapshots":[' + json.dumps(SNAPSHOT).encode() + b"]}",
     "duplicate key 'snapshots'"),
    (json.dumps(with_(SNAPSHOT, "counts.likes", -1)).encode(), "counts.likes"),
], ids=["empty", "over the cap", "extra key", "not a list", "no snapshots", "duplicate snapshots", "single"])
def test_an_unusable_envelope_or_an_invalid_single_snapshot_is_rejected_whole(data, words):
    with pytest.raises(RejectedRecord) as caught:
        decode_snapshots(data, now=NOW, max_bytes=MAX_BYTES)
    assert caught.value.reason is RejectReason.INVALID and words in caught.value.detail


def test_decode_snapshots_rejects_other_schemas_as_decode_record_does():
    for raw, reason in [(POST, RejectReason.WRONG_TOPIC), (with_(SNAPSHOT, "schema", "x"), RejectReason.UNKNOWN_SCHEMA),
                        (b"\xff", RejectReason.NOT_UTF8), (b"", RejectReason.NOT_JSON)]:
        with pytest.raises(RejectedRecord) as caught:
            decode_snapshots(raw if isinstance(raw, bytes) else json.dumps(raw).encode(), now=NOW)
        assert caught.value.reason is reason
