"""Starting and stopping the stack: health, fail-fast on a taken port, nothing left behind."""

from __future__ import annotations

import socket

import pytest

from popscore.settings import Settings
from popscore.stack.process import StackError, group_alive
from popscore.stack.stack import COMPONENTS, EmbeddedStack
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
