"""docker-compose.yml, Dockerfile and .dockerignore: structure, mounts, pinned images, and agreement with
popscore.settings and the Prometheus config. No Docker engine is needed (the file is read with PyYAML)."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from urllib.parse import urlparse

import pytest
import yaml

from popscore import features as F
from popscore.serving.model_repository import list_models
from popscore.serving.model_sets import discover, repository_problem
from popscore.settings import Settings, TopicSettings, WorkerSettings, settings_reference
from tests.ops.promql import PROMETHEUS_CONFIG, REPO

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
REQUIRED_SERVICES = {"kafka", "kafka-init", "redis", "triton", "worker", "trainer", "prometheus", "grafana"}
LONG_RUNNING = REQUIRED_SERVICES - {"kafka-init", "trainer"}
# Host paths a project command creates rather than git: `popscore train` writes the model repository.
GENERATED_PATHS = {"model_repo"}

_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?-)([^}]*)|(:?\?)([^}]*))?\}|\$(\w+)")


def interpolate(value: str) -> str:
    """Compose interpolation with an empty environment: ``${X:-default}`` gives the default, ``$$`` a ``$``."""
    parts = value.split("$$")
    return "$".join(_VARIABLE.sub(lambda m: m.group(3) or "", part) for part in parts)


def load() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def env(service: dict) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {k: interpolate(str(v)) for k, v in environment.items()}


def bind_mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(host path, container path, read only) of the service's bind mounts; named volumes excluded."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append((interpolate(volume["source"]), volume["target"], bool(volume.get("read_only"))))
            continue
        source, target, *mode = interpolate(volume).split(":")
        if source.startswith((".", "/", "~")):
            mounts.append((source, target, "ro" in (mode[0].split(",") if mode else [])))
    return mounts


def named_volumes(service: dict) -> list[str]:
    names = []
    for volume in service.get("volumes", []):
        source = volume.get("source") if isinstance(volume, dict) else interpolate(volume).split(":")[0]
        if source and not source.startswith((".", "/", "~")):
            names.append(source)
    return names


def problems(compose: dict) -> list[str]:
    """Every structural problem of a compose document (an empty list for a good one)."""
    found = []
    services = compose.get("services", {})
    missing = REQUIRED_SERVICES - set(services)
    if missing:
        found.append(f"missing services {sorted(missing)}")
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        image = service.get("image")
        if not image:
            found.append(f"{name}: no image name")
        else:
            ref = image.rsplit("/", 1)[-1]
            tag = ref.split(":", 1)[1] if ":" in ref else None
            if "@sha256:" not in image and (tag is None or tag == "latest" or "$" in image):
                found.append(f"{name}: image {image!r} is not pinned")
        for source, target, _ in bind_mounts(service):
            relative = source.removeprefix("./").rstrip("/")
            if source.startswith(("/", "~")):
                found.append(f"{name}: absolute host path {source} (use a path in the repository)")
            elif source.startswith("../"):
                if not re.search(r"\$\{\w+:-", _raw_source(service, target)):
                    found.append(f"{name}: {source} lies outside the repository and cannot be overridden")
            elif relative not in GENERATED_PATHS and not (REPO / relative).exists():
                found.append(f"{name}: bind mount {source} does not exist in the repository")
        for volume in named_volumes(service):
            if volume not in declared_volumes:
                found.append(f"{name}: named volume {volume} not declared")
        if name in LONG_RUNNING and "healthcheck" not in service:
            found.append(f"{name}: no healthcheck")
    return found


def _raw_source(service: dict, target: str) -> str:
    for volume in service.get("volumes", []):
        if isinstance(volume, str) and f":{target}" in volume:
            return volume
    return ""


def host_port(url: str) -> tuple[str, int]:
    parsed = urlparse(url if "://" in url else f"x://{url}")
    return parsed.hostname, parsed.port


# --- structure --------------------------------------------------------------------------------------------

def test_compose_file_has_no_structural_problems():
    assert problems(load()) == []


@pytest.mark.parametrize("mutation, expected", [
    (lambda c: c["services"]["redis"].update(image="redis:latest"), "redis: image 'redis:latest' is not pinned"),
    (lambda c: c["services"]["grafana"].update(image="grafana/grafana"), "grafana: image 'grafana/grafana' is not pinned"),
    (lambda c: c["services"]["prometheus"]["volumes"].append("./deploy/nope:/etc/nope:ro"),
     "prometheus: bind mount ./deploy/nope does not exist in the repository"),
    (lambda c: c["services"].pop("triton"), "missing services ['triton']"),
    (lambda c: c["services"]["redis"].pop("healthcheck"), "redis: no healthcheck"),
    (lambda c: c["services"]["worker"]["volumes"].append("cache:/cache"), "worker: named volume cache not declared"),
])
def test_structural_check_catches_a_broken_file(mutation, expected):
    compose = copy.deepcopy(load())
    mutation(compose)
    assert expected in problems(compose)


def test_bind_mounts_outside_generated_paths_exist():
    """Spelled out for the reader: what the containers see from the repository."""
    mounts = {(name, source, target) for name, service in load()["services"].items()
              for source, target, _ in bind_mounts(service)}
    assert ("prometheus", "./deploy/prometheus", "/etc/prometheus") in mounts
    assert ("grafana", "./deploy/grafana/provisioning", "/etc/grafana/provisioning") in mounts
    assert ("grafana", "./deploy/grafana/dashboards", "/var/lib/grafana/dashboards") in mounts
    assert ("triton", "./model_repo", "/models") in mounts


# --- agreement with popscore.settings ---------------------------------------------------------------------

def test_every_popscore_variable_is_a_real_setting():
    known = {row[0] for row in settings_reference(Settings())} | {"POPSCORE_SHARED_DATA"}
    for name, service in load()["services"].items():
        unknown = {k for k in env(service) if k.startswith("POPSCORE_")} - known
        assert not unknown, f"{name}: unknown settings {sorted(unknown)}"


def test_worker_environment_loads_into_settings_and_points_at_the_services(monkeypatch):
    services = load()["services"]
    for key, value in env(services["worker"]).items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # extra="forbid": a misspelt nested field fails here
    assert settings.worker.metrics_port == WorkerSettings().metrics_port
    assert settings.worker.web_port == WorkerSettings().web_port
    assert settings.kafka.topics == TopicSettings()
    assert host_port(settings.kafka.bootstrap_servers) == ("kafka", 9092)
    assert host_port(settings.redis.url) == ("redis", 6379)
    assert host_port(settings.triton.grpc_url) == ("triton", 8001)
    assert host_port(settings.triton.http_url) == ("triton", 8000)
    assert str(settings.stack.model_repo) == "/models"
    assert settings.worker.bind_host == "0.0.0.0", "the worker must listen beyond loopback to be scraped"


def test_kafka_is_kraft_and_advertises_the_bootstrap_port():
    kafka = env(load()["services"]["kafka"])
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"] and "broker" in kafka["KAFKA_PROCESS_ROLES"]
    assert not any("ZOOKEEPER" in key for key in kafka)
    assert "INTERNAL://kafka:9092" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert int(kafka["KAFKA_NUM_PARTITIONS"]) == TopicSettings().partitions


def test_topic_init_creates_every_topic_with_the_configured_partitions():
    services = load()["services"]
    init = services["kafka-init"]
    script = interpolate(" ".join(init["command"]))
    variables = env(init)
    topics = TopicSettings()
    for field in ("posts", "snapshots", "predictions", "deadletter"):
        variable = f"POPSCORE_KAFKA__TOPICS__{field.upper()}"
        assert variables[variable] == getattr(topics, field)
        assert f"${variable}" in script, f"topic {field} is not created"
    assert variables["POPSCORE_KAFKA__TOPICS__PARTITIONS"] == str(topics.partitions)
    assert "--partitions \"$POPSCORE_KAFKA__TOPICS__PARTITIONS\"" in script
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"


def test_prometheus_scrapes_the_worker_metrics_port():
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "popscore-worker")
    port = int(env(load()["services"]["worker"])["POPSCORE_WORKER__METRICS_PORT"])
    assert port == WorkerSettings().metrics_port
    sd = job["dns_sd_configs"][0]
    assert sd["names"] == ["worker"] and sd["type"] == "A" and sd["port"] == port
    # every replica's port is on the compose network, none is published to the host (replicas would clash)
    worker = load()["services"]["worker"]
    assert str(port) in worker["expose"] and "ports" not in worker
    triton = next(j for j in config["scrape_configs"] if j["job_name"] == "triton")
    assert triton["static_configs"][0]["targets"] == ["triton:8002"]


def test_worker_healthcheck_uses_the_web_port():
    worker = load()["services"]["worker"]
    port = env(worker)["POPSCORE_WORKER__WEB_PORT"]
    assert f"127.0.0.1:{port}/healthz" in " ".join(worker["healthcheck"]["test"])


# --- Triton, worker, trainer, monitoring ------------------------------------------------------------------

def test_triton_uses_explicit_model_control_a_gpu_and_a_read_only_repository():
    triton = load()["services"]["triton"]
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:") and triton["image"].endswith("-py3")
    command = triton["command"]
    assert "--model-control-mode=explicit" in command and "--model-repository=/models" in command
    assert not any("poll" in arg for arg in command)
    # Every model of the repository is loaded at start, whatever platforms the trainer exported: `*` must be
    # the only --load-model (Triton refuses it beside others).
    assert [arg for arg in command if arg.startswith("--load-model")] == ["--load-model=*"]
    assert ("./model_repo", "/models", True) in bind_mounts(triton)
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    # reachable on the compose network only (tests/ops/test_network_defaults.py: never on the host)
    assert {"8000", "8001", "8002"} <= {str(p) for p in triton["expose"]}


def test_worker_runs_the_worker_command_and_scales_within_the_partitions():
    compose_text = COMPOSE.read_text()
    worker = load()["services"]["worker"]
    assert worker["command"] == ["worker"]
    assert worker["build"]["target"] == "worker"
    assert 1 <= worker["deploy"]["replicas"] <= int(env(worker)["POPSCORE_KAFKA__TOPICS__PARTITIONS"])
    assert "up to the partition count" in compose_text
    assert ("./model_repo", "/models", True) in bind_mounts(worker)


def test_trainer_is_a_one_shot_profile_whose_command_popscore_accepts():
    from popscore.tools.cli import build_parser

    trainer = load()["services"]["trainer"]
    assert trainer["profiles"] == ["train"]
    assert trainer["build"]["target"] == "trainer"
    assert trainer.get("restart") == "no"
    args = build_parser().parse_args(trainer["command"])  # exits (SystemExit) on an unknown option
    assert args.command == "train"
    # the train subcommand's own --model-repo (dest train_model_repo), else the global option
    repository = getattr(args, "train_model_repo", None) or getattr(args, "model_repo", None)
    assert str(repository) == "/models"
    assert ("./model_repo", "/models", False) in bind_mounts(trainer)
    assert env(trainer)["POPSCORE_SHARED_DATA"] == "/data"


def test_grafana_and_prometheus_mounts_match_their_provisioning():
    services = load()["services"]
    prometheus = services["prometheus"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    grafana = services["grafana"]
    provider = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/popscore.yml").read_text())
    assert provider["providers"][0]["options"]["path"] in {t for _, t, _ in bind_mounts(grafana)}
    assert "GRAFANA_ADMIN_PASSWORD" in COMPOSE.read_text(), "no default admin password in production"


# --- Dockerfile -------------------------------------------------------------------------------------------

def test_dockerfile_targets_and_pinned_base():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, re.M | re.I)
    assert {"worker", "trainer"} <= {name for _, name in stages}
    assert stages[-1][1] == "worker", "the default (last) stage must be the worker"
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M).group(1)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base  # pyproject: requires-python 3.11
    assert 'ENTRYPOINT ["popscore"]' in text and 'CMD ["worker"]' in text
    assert "USER popscore" in text
    # everything the installed package maps (pyproject package-dir) is copied into the image
    package_dir = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for folder in package_dir.values():
        assert f"COPY {folder}/ {folder}/" in text


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".popscore", "model_repo"} <= ignored
    assert "README.md" not in ignored and "pyproject.toml" not in ignored  # the build needs them


# --- the Compose specification ----------------------------------------------------------------------------

def interpolated(compose: dict):
    """The document as Compose sees it with an empty environment (defaults used, required values dummied)."""
    if isinstance(compose, dict):
        return {k: interpolated(v) for k, v in compose.items()}
    if isinstance(compose, list):
        return [interpolated(v) for v in compose]
    if isinstance(compose, str):
        parts = compose.split("$$")
        return "$".join(_VARIABLE.sub(lambda m: m.group(3) or ("required" if m.group(4) else ""), p) for p in parts)
    return compose


def parse_spec(compose: dict):
    """Parse with `compose-spec` (Rust bindings of the Compose specification; strict about unknown keys,
    enum values, units and durations). YAML anchors and merge keys are resolved by PyYAML first."""
    compose_spec = pytest.importorskip("compose_spec", reason="compose-spec not installed (pip install compose-spec)")
    return compose_spec.PyCompose.from_json(json.dumps(interpolated(compose)))


def test_compose_file_follows_the_compose_specification():
    parsed = parse_spec(load())
    assert set(parsed.service_names()) == set(load()["services"])


@pytest.mark.parametrize("service, key, value", [
    ("redis", "healthchek", {"test": ["CMD", "redis-cli", "ping"]}),   # misspelt key
    ("worker", "stop_grace_period", "thirty seconds"),                  # not a duration
    ("triton", "shm_size", "lots"),                                      # not a size
])
def test_the_specification_check_rejects_a_broken_file(service, key, value):
    compose = copy.deepcopy(load())
    compose["services"][service][key] = value
    with pytest.raises(ValueError):
        parse_spec(compose)


def test_the_repository_triton_loads_holds_what_the_workers_ask_for():
    """`--load-model=*` loads each model under its directory's name (Triton requires config name = directory):
    the names the workers ask for (features.model_name per platform's set, the text encoder) must be those."""
    models = list_models(REPO / "model_repo")
    assert models, "model_repo/ holds no model"
    for model in models:
        assert model.name == model.path.name, f"{model.path}: config name {model.name!r} is not its directory"
        assert model.versions, f"{model.name} has no version"
    sets = discover(REPO / "model_repo")
    assert "hackernews" in sets
    for platform, found in sets.items():
        assert {m.name for m in found.values()} == {F.model_name(kind, platform) for kind in F.MODEL_KINDS}
        assert repository_problem(platform, found) is None, platform
