"""The same stack from containers (testcontainers): Apache Kafka, Redis and the NVIDIA Triton image serving
``model_repo/`` as it is (ONNX Runtime backend), with the worker as a local process, as in the embedded
stack. The test fixtures use it when a Docker engine is reachable and the embedded stack otherwise, with
the same test bodies. No Docker engine exists on the development machines: this path has not been run
here (the test report header says which stack ran).
"""

from __future__ import annotations

import time
from dataclasses import asdict

from popscore.settings import Settings
from popscore.tools.stack import components as c
from popscore.tools.stack.process import StackError, free_port
from popscore.tools.stack.stack import EmbeddedStack, StackState

KAFKA_IMAGE = "apache/kafka:3.9.0"
REDIS_IMAGE = "redis:7.4.2-bookworm"
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"


def docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


class ContainerStack(EmbeddedStack):
    """``EmbeddedStack``'s interface over containers; worker handling (spawn, restart, stop) is inherited."""

    kind = "testcontainers"

    def __init__(self, settings: Settings, log=lambda _: None) -> None:
        super().__init__(settings, log=log)
        self.containers: dict[str, object] = {}

    def start(self, with_worker: bool = True) -> StackState:
        from testcontainers.core.container import DockerContainer
        from testcontainers.kafka import KafkaContainer
        from testcontainers.redis import RedisContainer

        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            kafka = KafkaContainer(KAFKA_IMAGE).with_kraft()
            kafka.start()
            self.containers["broker"] = kafka
            redis = RedisContainer(REDIS_IMAGE)
            redis.start()
            self.containers["redis"] = redis
            models = [p.parent.name for p in self.settings.stack.model_repo.resolve().glob("*/config.pbtxt")]
            command = "tritonserver --model-repository=/models --model-control-mode=explicit " + \
                " ".join(f"--load-model={m}" for m in models)
            triton = (DockerContainer(TRITON_IMAGE).with_command(command).with_exposed_ports(8000, 8001, 8002)
                      .with_volume_mapping(str(self.settings.stack.model_repo.resolve()), "/models", "ro"))
            triton.start()
            self.containers["triton"] = triton
            host = kafka.get_container_host_ip()
            bootstrap_port = int(kafka.get_bootstrap_server().rsplit(":", 1)[1])
            endpoints = c.Endpoints(
                host=host, broker_port=bootstrap_port, redis_port=int(redis.get_exposed_port(6379)),
                triton_http_port=int(triton.get_exposed_port(8000)),
                triton_grpc_port=int(triton.get_exposed_port(8001)),
                triton_metrics_port=int(triton.get_exposed_port(8002)),
                worker_web_port=free_port(), worker_metrics_port=free_port())
            self.state = StackState(run_dir=str(self.run_dir), endpoints=asdict(endpoints), models=models)
            self._wait_for("triton", lambda: c.triton_healthy(endpoints))
            topics = self.settings.kafka.topics
            c.create_topics(endpoints, [topics.posts, topics.snapshots, topics.predictions, topics.deadletter],
                            topics.partitions)
            if with_worker:
                def without_mirror(env: dict) -> dict:
                    env.pop("POPSCORE_SERVING__PYTHON_BACKEND_MIRROR")  # Triton reads model_repo/ itself
                    return env

                self._start_workers(endpoints, without_mirror)
        except BaseException:
            self.stop()
            raise
        return self.state

    def _wait_for(self, name: str, healthy) -> None:
        deadline = time.monotonic() + self.settings.stack.start_timeout_s
        while not healthy():
            if time.monotonic() > deadline:
                raise StackError(f"{name} container not healthy after {self.settings.stack.start_timeout_s:.0f}s")
            time.sleep(0.5)

    def stop_component(self, name: str) -> None:
        container = self.containers.pop(name, None)
        if container is not None:
            container.stop()
        else:
            super().stop_component(name)

    def stop(self) -> None:
        super().stop()
        for name in list(self.containers):
            self.containers.pop(name).stop()
