"""Safe network defaults of docker-compose.yml and the Dockerfile: nothing private is published on every host
interface, Triton's repository API and Prometheus's lifecycle API stay off the host, and every POPSCORE_*
variable the image sets is a setting the worker reads. `docker compose config` validates the file where a
Compose v2 binary exists. Exposing on purpose: docs/deployment.md."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess

import pytest

from popscore.settings import Settings, settings_reference
from tests.ops.test_compose import COMPOSE, DOCKERFILE, REPO, interpolate, load

LOOPBACK = {"127.0.0.1", "::1", "[::1]", "localhost"}
# (service, container port) published beyond loopback as a reviewed decision (docs/deployment.md,
# "Network exposure"). None by default.
EXPOSED_ON_PURPOSE: set[tuple[str, str]] = set()


def published_ports(service: dict) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of every port the service publishes on the host; the address
    is "" where the entry names none (Docker then binds every interface)."""
    found = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            found.append((str(entry.get("host_ip", "")), str(entry.get("published", "")), str(entry["target"])))
            continue
        text = interpolate(str(entry)).split("/")[0]
        if text.startswith("["):  # [::1]:9094:9094
            address, _, rest = text[1:].partition("]:")
            host_port, _, container_port = rest.partition(":")
            found.append((address, host_port, container_port))
            continue
        parts = text.split(":")
        if len(parts) == 3:
            found.append((parts[0], parts[1], parts[2]))
        elif len(parts) == 2:
            found.append(("", parts[0], parts[1]))
        else:
            found.append(("", "", parts[0]))  # a container port alone: published on a random host port
    return found


def exposure_problems(compose: dict) -> list[str]:
    """Every unsafe default of a compose document (an empty list for a safe one)."""
    found = []
    for name, service in compose["services"].items():
        for address, host_port, container_port in published_ports(service):
            if address not in LOOPBACK and (name, container_port) not in EXPOSED_ON_PURPOSE:
                found.append(f"{name}: port {container_port} published on {address or 'every interface'}")
        if name == "triton" and service.get("ports"):
            found.append("triton: published on the host (its HTTP/gRPC APIs include the model repository API)")
        command = service.get("command") or []
        command = command if isinstance(command, list) else command.split()
        if any(arg.startswith("--web.enable-lifecycle") for arg in command):
            found.append(f"{name}: --web.enable-lifecycle (the HTTP API can stop or reload Prometheus)")
    return found


def test_compose_publishes_nothing_private_beyond_loopback():
    assert exposure_problems(load()) == []


@pytest.mark.parametrize("service, key, value, expected", [
    ("prometheus", "ports", ["9090:9090"], "prometheus: port 9090 published on every interface"),
    ("kafka", "ports", ["0.0.0.0:9094:9094"], "kafka: port 9094 published on 0.0.0.0"),
    ("grafana", "ports", [{"target": 3000, "published": 3000}], "grafana: port 3000 published on every"),
    ("redis", "ports", ["6379"], "redis: port 6379 published on every interface"),
    ("triton", "ports", ["127.0.0.1:8000:8000"], "triton: published on the host"),
    ("prometheus", "command", ["--config.file=/etc/prometheus/prometheus.yml", "--web.enable-lifecycle"],
     "prometheus: --web.enable-lifecycle"),
])
def test_the_exposure_check_catches_an_unsafe_file(service, key, value, expected):
    compose = copy.deepcopy(load())
    compose["services"][service][key] = value
    assert any(problem.startswith(expected) for problem in exposure_problems(compose)), exposure_problems(compose)


# --- the worker image's environment -----------------------------------------------------------------------

def stage_env(dockerfile: str, stage: str) -> dict[str, str]:
    """The ENV variables set in one stage of a Dockerfile (``KEY=VALUE`` form, continuation lines joined)."""
    text = dockerfile.replace("\\\n", " ")
    env, current = {}, None
    for line in text.splitlines():
        start = re.match(r"^FROM\s+\S+\s+AS\s+(\S+)", line, re.I)
        if start:
            current = start.group(1)
        elif current == stage and re.match(r"^ENV\s", line):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


def env_problems(env: dict[str, str]) -> list[str]:
    known = {row[0] for row in settings_reference(Settings())}
    found = [f"{name} is not a setting" for name in env if name.startswith("POPSCORE_") and name not in known]
    # the embedded stack's address: `popscore worker` never reads it, so setting it changes nothing
    found += [f"{name} is read by the embedded stack only, not by the worker" for name in env
              if name in ("POPSCORE_STACK__HOST", "POPSCORE_STACK__BACKEND")]
    if env.get("POPSCORE_WORKER__BIND_HOST") in (None, *LOOPBACK):
        found.append("POPSCORE_WORKER__BIND_HOST must be 0.0.0.0: on loopback `docker run -p` reaches nothing")
    return found


def test_worker_image_sets_only_settings_the_worker_reads(monkeypatch):
    env = stage_env(DOCKERFILE.read_text(), "worker")
    assert env_problems(env) == []
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Settings().worker.bind_host == "0.0.0.0"


@pytest.mark.parametrize("change, expected", [
    ({"POPSCORE_STACK__HOST": "0.0.0.0"}, "POPSCORE_STACK__HOST is read by the embedded stack only"),
    ({"POPSCORE_WORKER__BIND": "0.0.0.0"}, "POPSCORE_WORKER__BIND is not a setting"),
    ({"POPSCORE_WORKER__BIND_HOST": "127.0.0.1"}, "POPSCORE_WORKER__BIND_HOST must be 0.0.0.0"),
])
def test_the_environment_check_catches_a_variable_the_worker_ignores(change, expected):
    env = {**stage_env(DOCKERFILE.read_text(), "worker"), **change}
    assert any(problem.startswith(expected) for problem in env_problems(env)), env_problems(env)


def test_stage_env_reads_continued_env_lines():
    dockerfile = "FROM x AS a\nENV A_1=1 \\\n    A_2=two\nFROM y AS b\nENV B=3\n"
    assert stage_env(dockerfile, "a") == {"A_1": "1", "A_2": "two"}
    assert stage_env(dockerfile, "b") == {"B": "3"}


# --- Compose itself ----------------------------------------------------------------------------------------

def compose_v2() -> list[str] | None:
    """The argv prefix of a Compose v2 binary: the docker CLI plugin or a standalone docker-compose 2.x."""
    candidates = [["docker", "compose"]] if shutil.which("docker") else []
    candidates += [["docker-compose"]] if shutil.which("docker-compose") else []
    for argv in candidates:
        run = subprocess.run([*argv, "version", "--short"], capture_output=True, text=True, timeout=30)
        if run.returncode == 0 and run.stdout.strip().lstrip("v").startswith("2."):
            return argv
    return None


def test_docker_compose_config_validates_the_file():
    argv = compose_v2()
    if argv is None:
        pytest.skip("no Compose v2 binary: the docker CLI here has no compose plugin, Debian's docker-compose "
                    "is 1.29 (v1) and no PyPI wheel on this machine's index ships Compose v2; "
                    "tests/ops/test_compose.py checks the file against the Compose specification instead")
    run = subprocess.run([*argv, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True,
                         cwd=REPO, env={"GRAFANA_ADMIN_PASSWORD": "test", "PATH": os.environ["PATH"]},
                         timeout=60)
    assert run.returncode == 0, run.stderr
