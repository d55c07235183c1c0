"""The fuzz corpus against the contract: every invalid kind gets exactly its reason, every valid record decodes."""

from datetime import datetime, timezone

import pytest

from popscore.contract import RejectedRecord, decode_record, decode_snapshots
from tests.fuzz_corpus import WORKER_KINDS, FuzzRecord, corpus, invalid_kinds

NOW = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
MAX_BYTES = 1_048_576
RECORDS = corpus(len(invalid_kinds()), n_posts=4, snapshots_per_post=3, prefix="fz", seed=7, now=NOW)


def decode(record: FuzzRecord):
    """What the worker's decoding gives: a post, or the snapshots topic's DecodedSnapshots."""
    if record.topic == "posts":
        return decode_record(record.value, accept=("post.v1",), max_bytes=MAX_BYTES, now=NOW)
    return decode_snapshots(record.value, max_bytes=MAX_BYTES, now=NOW)


def test_the_corpus_covers_every_kind_deterministically():
    kinds = invalid_kinds()
    assert len(kinds) >= 30 and len(set(kinds)) == len(kinds)
    assert {r.kind for r in RECORDS if r.kind != "valid"} == set(kinds)
    again = corpus(len(kinds), n_posts=4, snapshots_per_post=3, prefix="fz", seed=7, now=NOW)
    assert again == RECORDS
    assert all(r.topic in ("posts", "snapshots") for r in RECORDS)
    oversized = next(r for r in RECORDS if r.kind == "oversized")
    assert len(oversized.value) > MAX_BYTES


@pytest.mark.parametrize("record", [r for r in RECORDS if r.kind != "valid"], ids=lambda r: r.kind)
def test_each_invalid_kind_is_rejected_with_its_reason(record):
    if record.kind in WORKER_KINDS:  # the contract accepts it; the worker checks the key
        decoded = decode(record)
        post_id = decoded.post_id if record.topic == "posts" else decoded.snapshots[0].post_id
        assert record.key is None or record.key != post_id.encode()
        return
    if record.invalid_indices:
        decoded = decode(record)
        assert [p.index for p in decoded.rejected] == list(record.invalid_indices)
        assert all(p.error.reason.value == record.expected_reason for p in decoded.rejected)
        assert len(decoded.snapshots) + len(decoded.rejected) == len(decoded.indices) + len(record.invalid_indices)
        return
    with pytest.raises(RejectedRecord) as caught:
        decode(record)
    assert caught.value.reason.value == record.expected_reason, caught.value.detail


@pytest.mark.parametrize("record", [r for r in RECORDS if r.kind == "valid"],
                         ids=lambda r: f"{r.topic}-{(r.key or r.route_key).decode()}")
def test_valid_records_decode(record):
    decoded = decode(record)
    if record.topic == "posts":
        assert decoded.post_id.encode() == record.key
    else:
        assert not decoded.rejected and decoded.snapshots
        assert {s.post_id.encode() for s in decoded.snapshots} == {record.key or record.route_key}
