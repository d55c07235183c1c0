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


def test_the_embedded_cluster_with_replicas_asks_for_one_confirmation_unless_told_otherwise(tmp_path):
    from popscore.settings import Settings
    from popscore.tools.stack.components import Endpoints
    from popscore.tools.stack.stack import worker_settings_env

    ports = dict(broker_port=1, redis_port=2, triton_http_port=3, triton_grpc_port=4, triton_metrics_port=5,
                 worker_web_port=6, worker_metrics_port=7)
    single, cluster = Endpoints("127.0.0.1", **ports), Endpoints("127.0.0.1", **ports,
                                                                 redis_cluster_nodes=((2, 12), (8, 18), (9, 19)))

    def acks(endpoints, replicas: int, given: int | None = None) -> str:
        settings = Settings()
        settings.stack.redis_cluster_replicas = replicas
        if given is not None:
            settings.redis.replica_acks = given
        return worker_settings_env(settings, endpoints, tmp_path)["POPSCORE_REDIS__REPLICA_ACKS"]

    assert acks(single, 0) == "0"
    assert acks(cluster, 0) == "0"
    assert acks(cluster, 1) == "1"
    assert acks(cluster, 1, given=0) == "0"
