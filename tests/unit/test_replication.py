"""Replica confirmation (stream/replication.py): where the markers go, what its failure counts as, its settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from popscore.settings import RedisSettings
from popscore.stream.batch_runner import is_transient
from popscore.stream.replication import ReplicasBehind, marker_shards


def test_one_marker_per_primary_on_its_lowest_written_shard():
    primary = {0: "a", 1: "b", 2: "a", 3: "c", 5: "b"}
    assert marker_shards([5, 2, 3, 2, 1], primary.__getitem__) == {"a": 2, "b": 1, "c": 3}
    assert marker_shards([], primary.__getitem__) == {}
    assert marker_shards([4, 7, 6], lambda _: None) == {None: 4}  # one Redis: one marker


def test_replicas_behind_is_a_transient_failure_alone_or_among_lanes():
    assert is_transient(ReplicasBehind("0 of 1"))
    assert is_transient(ExceptionGroup("lanes", [ValueError("x"), ReplicasBehind("0 of 1")]))


def test_the_wait_must_end_before_the_socket_times_out():
    assert RedisSettings(replica_acks=1, replica_ack_timeout_ms=4_999, socket_timeout_s=5).replica_acks == 1
    with pytest.raises(ValidationError, match="replica_ack_timeout_ms"):
        RedisSettings(replica_ack_timeout_ms=5_000, socket_timeout_s=5)
    with pytest.raises(ValidationError):
        RedisSettings(replica_acks=-1)
