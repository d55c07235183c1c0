"""The pure parts of replay: pacing, the partitioner used for batches, the batch envelope."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from aiokafka.partitioner import murmur2

from popscore.contract import SnapshotBatch, decode_record
from popscore.tools.replay import Pacer, ReplayOptions, batch_envelope, partition_for

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def test_speed_pacing_scales_event_time():
    pacer = Pacer(speed=60.0, rate=None)
    assert pacer.due(0, T0) == 0
    assert pacer.due(1, T0 + timedelta(hours=1)) == pytest.approx(60.0)
    assert pacer.due(2, T0 + timedelta(hours=2)) == pytest.approx(120.0)


def test_rate_pacing_spaces_events_evenly():
    pacer = Pacer(speed=None, rate=100.0)
    assert [pacer.due(i, T0 + timedelta(days=i)) for i in range(3)] == pytest.approx([0, 0.01, 0.02])


def test_unpaced_is_immediate():
    assert Pacer(None, None).due(10, T0 + timedelta(days=3)) == 0


def test_options_are_checked():
    with pytest.raises(ValueError):
        ReplayOptions(speed=2, rate=10)
    with pytest.raises(ValueError):
        ReplayOptions(speed=0)
    with pytest.raises(ValueError):
        ReplayOptions(batch_max=0)


def test_partition_is_kafkas_murmur2_of_the_key():
    partitions = [0, 1, 2, 3]
    for post_id in ("hn:1", "reddit:18vi8zh", "yt:-abcdefghij", "p" * 100):
        expected = (murmur2(post_id.encode()) & 0x7FFFFFFF) % 4
        assert partition_for(post_id, partitions) == expected
    # the partition list is indexed as aiokafka's own partitioner does (the function it replaced)
    from aiokafka.partitioner import DefaultPartitioner

    for post_id in ("hn:1", "reddit:18vi8zh", "yt:-abcdefghij", "p" * 100):
        assert partition_for(post_id, [3, 5, 8]) == DefaultPartitioner()(post_id.encode(), [3, 5, 8], [3, 5, 8])
    # known value of the Java client's murmur2 ("21" -> -973932308, a published test vector, as unsigned here)
    assert murmur2(b"21") & 0xFFFFFFFF == -973932308 & 0xFFFFFFFF


def test_batch_envelope_is_a_valid_snapshot_batch():
    lines = [
        b'{"schema":"snapshot.v1","post_id":"a","observed_at":"2024-01-01T00:00:00Z","counts":{"likes":1}}',
        b'{"schema":"snapshot.v1","post_id":"b","observed_at":"2024-01-01T00:00:01Z","counts":{"views":2}}',
    ]
    batch = decode_record(batch_envelope(lines), accept=("snapshot-batch.v1",))
    assert isinstance(batch, SnapshotBatch)
    assert [s.post_id for s in batch.snapshots] == ["a", "b"]


def test_max_idle_cuts_quiet_stretches_only():
    pacer = Pacer(speed=1.0, rate=None, max_idle_s=5.0)
    times = [T0, T0 + timedelta(seconds=2), T0 + timedelta(days=300), T0 + timedelta(days=300, seconds=3)]
    assert [pacer.due(i, t) for i, t in enumerate(times)] == pytest.approx([0, 2, 7, 10])
