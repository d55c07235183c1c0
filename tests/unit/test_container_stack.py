"""The container stack's configuration and the embedded/containers switch, checked without a Docker engine:
the images are compose's, Kafka runs KRaft from apache/kafka's own environment (not testcontainers'
Confluent-only KafkaContainer) and advertises the port it is published on, and every port is published
on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from popscore.settings import Settings
from popscore.tools.stack.containers import (
    LOOPBACK, ContainerStack, kafka_spec, redis_spec, select_stack_class, to_container, triton_spec)
from popscore.tools.stack.process import StackError
from popscore.tools.stack.stack import EmbeddedStack

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
# A fixed Docker API version: docker-py then builds its client without asking an engine for one.
NO_ENGINE = {"version": "1.41"}


def test_the_images_are_the_ones_compose_runs():
    assert kafka_spec(19094).image == COMPOSE["kafka"]["image"]
    assert redis_spec(16379).image == COMPOSE["redis"]["image"]
    assert triton_spec(REPO / "model_repo", 1, 2, 3).image == COMPOSE["triton"]["image"]


def test_kafka_runs_kraft_with_compose_settings_and_advertises_its_published_port():
    spec = kafka_spec(19094)
    compose = COMPOSE["kafka"]["environment"]
    for key in ("KAFKA_NODE_ID", "KAFKA_PROCESS_ROLES", "KAFKA_CONTROLLER_LISTENER_NAMES",
                "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "KAFKA_INTER_BROKER_LISTENER_NAME", "CLUSTER_ID",
                "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"):
        assert spec.env[key] == compose[key], key
    assert not any("ZOOKEEPER" in key for key in spec.env)
    # the client listener: the container port published on the host, advertised at that host address
    listeners = dict(item.split("://") for item in spec.env["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://") for item in spec.env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    container_port = int(listeners["EXTERNAL"].rsplit(":", 1)[1])
    assert spec.ports == {container_port: 19094}
    assert advertised["EXTERNAL"] == f"{LOOPBACK}:19094"
    voter_port = int(spec.env["KAFKA_CONTROLLER_QUORUM_VOTERS"].rsplit(":", 1)[1])
    assert listeners["CONTROLLER"] == f":{voter_port}"


def test_redis_keeps_compose_persistence_and_triton_compose_model_control(tmp_path):
    redis = redis_spec(16379)
    compose_redis = COMPOSE["redis"]["command"]
    assert redis.command[0] == "redis-server" and "--appendonly" in redis.command
    for flag in ("--appendonly", "--appendfsync", "--maxmemory-policy"):
        assert redis.command[redis.command.index(flag) + 1] == compose_redis[compose_redis.index(flag) + 1]
    triton = triton_spec(tmp_path, 18000, 18001, 18002)
    model_control = ("--model-repository", "--model-control-mode", "--load-model")
    assert ([a for a in triton.command if a.startswith(model_control)]
            == [a for a in COMPOSE["triton"]["command"] if a.startswith(model_control)])
    assert triton.ports == {8000: 18000, 8001: 18001, 8002: 18002}
    assert triton.volumes == [(str(tmp_path.resolve()), "/models", "ro")]


def test_the_testcontainers_container_publishes_on_loopback_only(tmp_path):
    container = to_container(triton_spec(tmp_path, 18000, 18001, 18002), docker_client_kw=NO_ENGINE)
    assert container.image.endswith(COMPOSE["triton"]["image"])
    assert container.ports == {"8000": (LOOPBACK, 18000), "8001": (LOOPBACK, 18001), "8002": (LOOPBACK, 18002)}
    assert container.volumes[str(tmp_path.resolve())] == {"bind": "/models", "mode": "ro"}
    assert container._command[0] == "tritonserver" and container._kwargs == {"shm_size": "1g"}
    kafka = to_container(kafka_spec(19094), docker_client_kw=NO_ENGINE)
    assert kafka.env["KAFKA_PROCESS_ROLES"] == "broker,controller" and kafka.ports == {"9094": (LOOPBACK, 19094)}


def test_testcontainers_own_kafka_container_refuses_the_apache_image():
    """Why the stack does not use KafkaContainer: if this starts passing, testcontainers accepts apache/kafka."""
    from testcontainers.community.kafka import KafkaContainer

    kafka = KafkaContainer.__new__(KafkaContainer)
    kafka.image = COMPOSE["kafka"]["image"]
    with pytest.raises(ValueError, match="must be 7.0.0 or above"):
        kafka.with_kraft()


# --- the embedded/containers switch ---------------------------------------------------------------------

def no_engine_expected():
    raise AssertionError("only `auto` asks for a Docker engine")


@pytest.mark.parametrize("backend, engine, expected", [
    ("embedded", no_engine_expected, EmbeddedStack),
    ("containers", no_engine_expected, ContainerStack),
    ("auto", lambda: True, ContainerStack),
    ("auto", lambda: False, EmbeddedStack),
])
def test_the_backend_setting_selects_the_stack(backend, engine, expected):
    assert select_stack_class(backend, engine) is expected


def test_an_unknown_backend_fails_clearly(monkeypatch):
    with pytest.raises(StackError, match="embedded, containers or auto"):
        select_stack_class("kubernetes", lambda: True)
    monkeypatch.setenv("POPSCORE_STACK__BACKEND", "kubernetes")
    with pytest.raises(ValidationError, match="backend"):
        Settings()


def test_the_test_fixtures_follow_the_setting(monkeypatch):
    from tests.conftest import stack_class

    monkeypatch.setenv("POPSCORE_STACK__BACKEND", "embedded")
    assert stack_class() is EmbeddedStack
    monkeypatch.setenv("POPSCORE_STACK__BACKEND", "containers")
    assert stack_class() is ContainerStack
