"""Starting and stopping the stack: health, fail-fast on a taken port, nothing left behind."""

from __future__ import annotations

import socket

import pytest

from popscore.settings import Settings
from popscore.tools.stack.process import StackError, group_alive
from popscore.tools.stack.stack import COMPONENTS, EmbeddedStack
from tests.conftest import MODEL_REPO

pytestmark = pytest.mark.integration


def settings_in(tmp_path) -> Settings:
    settings = Settings()
    settings.stack.run_dir = tmp_path / "run"
    settings.stack.model_repo = MODEL_REPO
    return settings


def test_stack_reports_health_and_leaves_no_process_after_stop(tmp_path):
    stack = EmbeddedStack(settings_in(tmp_path))
    state = stack.start(with_worker=True)
    pids = {name: int(info["pid"]) for name, info in state.processes.items()}
    try:
        status = stack.status()
        assert set(pids) == set(COMPONENTS)
        assert status["running"] and all(c["healthy"] for c in status["components"].values())
        assert set(status["endpoints"]) >= {"broker_bootstrap", "redis_url", "triton_http", "triton_grpc",
                                            "worker_web", "worker_metrics"}
    finally:
        stack.stop()
    assert [name for name, pid in pids.items() if group_alive(pid)] == []
    assert not EmbeddedStack(settings_in(tmp_path)).status()["running"]


def test_a_taken_port_fails_fast_with_a_clear_message(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StackError, match=f"port 127.0.0.1:{port} is already taken"):
            EmbeddedStack(settings_in(tmp_path), fixed_ports={"broker_port": port}).start()


def test_two_workers_share_the_partitions_and_score_every_snapshot_once(tmp_path):
    import asyncio
    import urllib.request

    from popscore.tools.bench import Workload
    from tests.integration.kafka_io import consume_until, produce

    settings = settings_in(tmp_path)
    settings.stack.workers = 2
    stack = EmbeddedStack(settings)
    state = stack.start(with_worker=True)
    try:
        assert set(state.processes) == set(COMPONENTS) | {"worker-2"}
        status = stack.status()
        assert status["running"] and all(c["healthy"] for c in status["components"].values())
        assert status["components"]["worker-2"]["metrics_port"] == state.processes["worker-2"]["metrics_port"]

        workload, topics = Workload(200), settings.kafka.topics
        bootstrap = state.endpoints_obj().broker_bootstrap
        asyncio.run(produce(bootstrap, topics.posts,
                            [(p.encode(), workload.post(i)) for i, p in enumerate(workload.ids)]))
        asyncio.run(produce(bootstrap, topics.snapshots,
                            [(p.encode(), workload.snapshot(i, 1)) for i, p in enumerate(workload.ids)]))

        def temporal(records) -> set:
            return {r.key for r in records if b'"temporal"' in r.value}

        predictions = asyncio.run(consume_until(bootstrap, topics.predictions, lambda rs: len(temporal(rs)) == 200,
                                                timeout_s=120))
        assert len(temporal(predictions)) == 200
        from tests.integration.outcomes import wait_processed

        wait_processed(settings, bootstrap)  # every record acknowledged: a second count would be in by now

        def accepted(port: int) -> float:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            return sum(float(line.split()[-1]) for line in text.splitlines()
                       if line.startswith("popscore_snapshots_accepted_total"))

        per_worker = [accepted(state.endpoints_obj().worker_metrics_port),
                      accepted(int(stack.state.processes["worker-2"]["metrics_port"]))]
        assert all(n > 0 for n in per_worker) and sum(per_worker) == 200  # shared out, none counted twice
        stack.restart_worker()  # both stop and start again
        assert set(stack.state.processes) == set(COMPONENTS) | {"worker-2"}
        pids = {name: int(info["pid"]) for name, info in stack.state.processes.items()}
    finally:
        stack.stop()
    assert [name for name, pid in pids.items() if group_alive(pid)] == []


# --- component faults: kill, restart, pause ---------------------------------------------------------------

@pytest.fixture(scope="module")
def infrastructure(tmp_path_factory):
    """Broker, Redis and Triton without a worker: enough to break and restart components."""
    stack = EmbeddedStack(settings_in(tmp_path_factory.mktemp("faults")))
    stack.start(with_worker=False)
    yield stack
    stack.stop()


def redis_client(stack: EmbeddedStack, timeout_s: float = 5.0):
    import redis

    return redis.Redis.from_url(stack.state.endpoints_obj().redis_url, socket_timeout=timeout_s,
                                socket_connect_timeout=timeout_s)


def test_a_killed_redis_restarts_on_its_port_with_its_data(infrastructure):
    client = redis_client(infrastructure)
    try:
        client.set("fault:kept", "acknowledged before the kill")
    finally:
        client.close()
    old_pid = int(infrastructure.state.processes["redis"]["pid"])

    infrastructure.kill_component("redis")
    assert not group_alive(old_pid)
    infrastructure.start_component("redis")

    assert int(infrastructure.state.processes["redis"]["pid"]) != old_pid
    assert infrastructure.status()["components"]["redis"]["healthy"]
    client = redis_client(infrastructure)  # the same URL: the same port
    try:
        assert client.get("fault:kept") == b"acknowledged before the kill"  # reloaded from the AOF
    finally:
        client.close()


def test_a_paused_redis_does_not_answer_until_resumed(infrastructure):
    import redis

    infrastructure.pause_component("redis")
    try:
        paused = redis_client(infrastructure, timeout_s=0.5)
        with pytest.raises((redis.TimeoutError, redis.ConnectionError)):
            paused.ping()
        paused.close()
    finally:
        infrastructure.resume_component("redis")
    client = redis_client(infrastructure)
    try:
        assert client.ping()
    finally:
        client.close()


def test_start_component_refuses_a_running_component_and_a_worker(infrastructure):
    with pytest.raises(StackError, match="still running"):
        infrastructure.start_component("redis")
    with pytest.raises(StackError, match="start_worker"):
        infrastructure.start_component("worker")
