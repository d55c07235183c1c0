"""The same stack from the images docker-compose.yml runs (testcontainers): Apache Kafka in KRaft mode, Redis and
the NVIDIA Triton image serving ``model_repo/`` as it is, with the worker as a local process, as in the embedded
stack. ``stack.backend`` (popscore/settings.py) chooses it for the test fixtures.

Kafka is a plain ``DockerContainer``: testcontainers' ``KafkaContainer.with_kraft()`` accepts only Confluent
images (it compares the tag with 7.0.0) and its start script runs Confluent's ``/etc/confluent/docker`` files,
which apache/kafka does not have. The KRaft environment below is compose's, with the client listener advertised
at the loopback port the container is published on (Kafka clients connect to the advertised address, so that
port is chosen before the container starts rather than left to Docker).

Every published port is bound to 127.0.0.1 on a port chosen up front, so a container restarted after a fault
(``start_component``) comes back on the same address. This assumes a local Docker engine (not a remote
DOCKER_HOST). No Docker engine exists on the development machines: the configuration is unit-tested
(tests/unit/test_container_stack.py), the containers themselves have not been run here.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from popscore.settings import Settings
from popscore.tools.stack import components as c
from popscore.tools.stack.process import StackError
from popscore.tools.stack.stack import INFRASTRUCTURE, EmbeddedStack, StackState, allocate_endpoints

KAFKA_IMAGE = "apache/kafka:3.9.0"
REDIS_IMAGE = "redis:7.4.2-bookworm"
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
LOOPBACK = "127.0.0.1"
KAFKA_CLUSTER_ID = "CnatVMQLQpOc_Ku9TIiScQ"  # any 22-character base64 UUID; compose uses the same one
# Inside the container: the client listener the host reaches, the broker's own listener and the controller's.
KAFKA_CLIENT_PORT, KAFKA_INTERNAL_PORT, KAFKA_CONTROLLER_PORT = 9094, 9092, 9093
TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT = 8000, 8001, 8002


@dataclass(frozen=True)
class ContainerSpec:
    """What one container runs: kept apart from testcontainers so it can be checked without a Docker engine."""

    image: str
    env: dict[str, str] = field(default_factory=dict)
    command: list[str] | None = None
    ports: dict[int, int] = field(default_factory=dict)  # container port -> host port on LOOPBACK
    volumes: list[tuple[str, str, str]] = field(default_factory=list)  # (host path, container path, mode)
    shm_size: str | None = None


def kafka_spec(host_port: int) -> ContainerSpec:
    """Single-node KRaft (broker and controller), docker-compose.yml's environment; clients on ``host_port``."""
    return ContainerSpec(
        image=KAFKA_IMAGE,
        env={
            "KAFKA_NODE_ID": "1",
            "KAFKA_PROCESS_ROLES": "broker,controller",
            "KAFKA_CONTROLLER_QUORUM_VOTERS": f"1@localhost:{KAFKA_CONTROLLER_PORT}",
            "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
            "KAFKA_LISTENERS": f"INTERNAL://:{KAFKA_INTERNAL_PORT},CONTROLLER://:{KAFKA_CONTROLLER_PORT},"
                               f"EXTERNAL://:{KAFKA_CLIENT_PORT}",
            "KAFKA_ADVERTISED_LISTENERS": f"INTERNAL://localhost:{KAFKA_INTERNAL_PORT},"
                                          f"EXTERNAL://{LOOPBACK}:{host_port}",
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT,EXTERNAL:PLAINTEXT",
            "KAFKA_INTER_BROKER_LISTENER_NAME": "INTERNAL",
            "CLUSTER_ID": KAFKA_CLUSTER_ID,
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
            "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",  # tests: no wait for more group members
        },
        ports={KAFKA_CLIENT_PORT: host_port},
    )


def redis_spec(host_port: int) -> ContainerSpec:
    """Compose's persistence flags: the append-only file survives a killed container restarted by
    ``start_component`` (the data stays in the container's own layer)."""
    return ContainerSpec(
        image=REDIS_IMAGE,
        command=["redis-server", "--appendonly", "yes", "--appendfsync", "everysec",
                 "--maxmemory-policy", "noeviction"],
        ports={6379: host_port},
    )


def triton_spec(model_repo: Path, http_port: int, grpc_port: int, metrics_port: int) -> ContainerSpec:
    """Compose's Triton: explicit model control, every model of the repository loaded at start, read-only."""
    return ContainerSpec(
        image=TRITON_IMAGE,
        command=["tritonserver", "--model-repository=/models", "--model-control-mode=explicit",
                 "--load-model=*", "--exit-on-error=false"],
        ports={TRITON_HTTP_PORT: http_port, TRITON_GRPC_PORT: grpc_port, TRITON_METRICS_PORT: metrics_port},
        volumes=[(str(model_repo.resolve()), "/models", "ro")],
        shm_size="1g",
    )


def specs_for(settings: Settings, endpoints: c.Endpoints) -> dict[str, ContainerSpec]:
    """The infrastructure containers of a stack, by component name, on ``endpoints``' host ports."""
    if endpoints.host != LOOPBACK:
        raise StackError(f"the container stack publishes on {LOOPBACK}, not {endpoints.host}")
    return {
        "broker": kafka_spec(endpoints.broker_port),
        "redis": redis_spec(endpoints.redis_port),
        "triton": triton_spec(settings.stack.model_repo, endpoints.triton_http_port, endpoints.triton_grpc_port,
                              endpoints.triton_metrics_port),
    }


def to_container(spec: ContainerSpec, docker_client_kw: dict | None = None):
    """A testcontainers ``DockerContainer`` for ``spec`` (not started)."""
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(spec.image, docker_client_kw=docker_client_kw)
    container.with_envs(**spec.env)
    if spec.command is not None:
        container.with_command(spec.command)
    for inside, outside in spec.ports.items():
        container.with_bind_ports(inside, outside)
        # docker-py's (address, port) form: published on loopback only, never on every host interface.
        container.ports[str(inside)] = (LOOPBACK, outside)
    for host_path, container_path, mode in spec.volumes:
        container.with_volume_mapping(host_path, container_path, mode)
    if spec.shm_size:
        container.with_kwargs(shm_size=spec.shm_size)
    return container


def docker_available() -> bool:
    """A Docker engine answers and testcontainers is installed."""
    try:
        import docker
        import testcontainers  # noqa: F401

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


def select_stack_class(backend: str, docker_check: Callable[[], bool] = docker_available) -> type[EmbeddedStack]:
    """The stack class ``stack.backend`` names; ``auto`` asks ``docker_check`` (only then)."""
    if backend == "embedded":
        return EmbeddedStack
    if backend == "containers":
        return ContainerStack
    if backend == "auto":
        return ContainerStack if docker_check() else EmbeddedStack
    raise StackError(f"stack.backend is embedded, containers or auto, not {backend!r}")


HEALTH: dict[str, Callable[[c.Endpoints], bool]] = {
    "broker": c.broker_healthy, "redis": c.redis_healthy, "triton": c.triton_healthy}


class ContainerStack(EmbeddedStack):
    """``EmbeddedStack``'s interface over containers; worker handling (spawn, restart, stop) is inherited.
    Infrastructure has no process id here: faults act on the containers (kill, pause, start)."""

    kind = "containers"

    def __init__(self, settings: Settings, fixed_ports: dict[str, int] | None = None, log=lambda _: None) -> None:
        super().__init__(settings, fixed_ports=fixed_ports, log=log)
        self.containers: dict[str, object] = {}

    def start(self, with_worker: bool = True) -> StackState:
        if self.settings.redis.mode == "cluster":
            raise StackError("redis.mode cluster: the embedded stack starts a Redis Cluster, the containers do "
                             "not; set POPSCORE_STACK__BACKEND=embedded")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        endpoints = allocate_endpoints(LOOPBACK, self.fixed_ports)
        models = sorted(p.parent.name for p in self.settings.stack.model_repo.resolve().glob("*/config.pbtxt"))
        self.state = StackState(run_dir=str(self.run_dir), endpoints=asdict(endpoints), models=models)
        try:
            for name, spec in specs_for(self.settings, endpoints).items():
                self.log(f"{name}: starting {spec.image}")
                self.containers[name] = to_container(spec).start()
            for name in INFRASTRUCTURE:
                self._wait_container(name, endpoints)
            self._create_topics(endpoints)
            if with_worker:
                self._start_workers(endpoints)
        except BaseException:
            self.stop()
            raise
        return self.state

    def _start_workers(self, endpoints: c.Endpoints, adapt_env=None) -> None:
        super()._start_workers(endpoints, _without_mirror)

    def _wait_container(self, name: str, endpoints: c.Endpoints) -> None:
        deadline = time.monotonic() + self.settings.stack.start_timeout_s
        while not HEALTH[name](endpoints):
            if time.monotonic() > deadline:
                logs = b"\n".join(self.containers[name].get_logs()).decode(errors="replace")[-2000:]
                raise StackError(f"{name} container not healthy after {self.settings.stack.start_timeout_s:.0f}s;"
                                 f" last output:\n{logs}")
            time.sleep(0.5)
        self.log(f"{name} healthy (container)")

    def _container(self, name: str):
        container = self.containers.get(name)
        if container is None:
            raise StackError(f"no container {name!r} in this stack")
        return container.get_wrapped_container()

    def stop_component(self, name: str) -> None:
        if name in self.containers:
            self._container(name).stop(timeout=int(self.settings.stack.stop_timeout_s))
        else:
            super().stop_component(name)

    def kill_component(self, name: str) -> None:
        if name not in self.containers:
            return super().kill_component(name)
        wrapped = self._container(name)
        wrapped.kill()
        wrapped.wait(timeout=self.settings.stack.stop_timeout_s)

    def pause_component(self, name: str) -> None:
        if name not in self.containers:
            return super().pause_component(name)
        self._container(name).pause()

    def resume_component(self, name: str) -> None:
        if name not in self.containers:
            return super().resume_component(name)
        self._container(name).unpause()

    def start_component(self, name: str) -> None:
        """Start a stopped or killed container again: the same container, so the same ports and data."""
        if name not in INFRASTRUCTURE:
            raise StackError(f"start_component starts {', '.join(INFRASTRUCTURE)}, not {name!r}; "
                             f"workers start with start_worker()")
        wrapped = self._container(name)
        wrapped.reload()
        if wrapped.status == "running":
            raise StackError(f"{name} is still running (container {wrapped.short_id}); stop or kill it first")
        wrapped.start()
        endpoints = self.state.endpoints_obj()
        self._wait_container(name, endpoints)
        if name == "broker":
            self._create_topics(endpoints)

    def stop(self) -> None:
        if self.state is not None:
            super().stop()  # the workers (local processes)
        for name in list(self.containers):
            self.containers.pop(name).stop()

    def status(self) -> dict:
        status = super().status() if self.state else {"running": False, "components": {}}
        for name, container in self.containers.items():
            wrapped = container.get_wrapped_container()
            wrapped.reload()
            alive = wrapped.status == "running"
            status["components"][name] = {"container": wrapped.short_id, "alive": alive,
                                          "healthy": alive and HEALTH[name](self.state.endpoints_obj())}
        status["running"] = bool(status["components"]) and all(v["alive"] for v in status["components"].values())
        return status


def _without_mirror(env: dict) -> dict:
    env.pop("POPSCORE_SERVING__PYTHON_BACKEND_MIRROR", None)  # Triton reads model_repo/ itself
    return env
