"""The stack through the `popscore` command as a user runs it: up (Ctrl-C), up --detach, status --json, down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from popscore.tools.stack.process import group_alive
from tests.conftest import MODEL_REPO

pytestmark = pytest.mark.integration


def popscore(run_dir, *args: str) -> list[str]:
    return [sys.executable, "-m", "popscore.tools.cli", "--run-dir", str(run_dir), "--model-repo", str(MODEL_REPO), *args]


def stack_pids(run_dir) -> list[int]:
    state = json.loads((run_dir / "stack.json").read_text())
    return [int(p["pid"]) for p in state["processes"].values()]


def test_up_stops_everything_on_ctrl_c(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(popscore(run_dir, "up"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "press Ctrl-C" in line or not line:
            break
    assert any("press Ctrl-C" in line for line in lines), "".join(lines)
    pids = stack_pids(run_dir)
    assert len(pids) == 4 and all(group_alive(pid) for pid in pids)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=90) == 0
    assert [pid for pid in pids if group_alive(pid)] == []


def test_detach_status_and_down(tmp_path):
    run_dir = tmp_path / "run"
    up = subprocess.run(popscore(run_dir, "up", "--detach"), capture_output=True, text=True, timeout=240)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        status = subprocess.run(popscore(run_dir, "status", "--json"), capture_output=True, text=True, timeout=60)
        assert status.returncode == 0
        report = json.loads(status.stdout)
        assert report["running"] and set(report["components"]) == {"broker", "redis", "triton", "worker"}
        assert all(c["healthy"] for c in report["components"].values())
        assert report["endpoints"]["broker_bootstrap"].startswith("127.0.0.1:")
        assert report["endpoints"]["redis_url"].startswith("redis://127.0.0.1:")
        pids = stack_pids(run_dir)
    finally:
        down = subprocess.run(popscore(run_dir, "down"), capture_output=True, text=True, timeout=120)
    assert down.returncode == 0
    assert [pid for pid in pids if group_alive(pid)] == []
    after = subprocess.run(popscore(run_dir, "status", "--json"), capture_output=True, text=True, timeout=60)
    assert after.returncode == 1 and not json.loads(after.stdout)["running"]


def test_schema_command_writes_one_json_schema_per_event(tmp_path):
    out = tmp_path / "schemas"
    done = subprocess.run(popscore(tmp_path / "run", "schema", "--out", str(out)), capture_output=True, text=True,
                          timeout=60, env={**os.environ})
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{s}.schema.json" for s in ("post.v1", "snapshot.v1", "snapshot-batch.v1",
                                                          "prediction.v1", "deadletter.v1"))
    assert json.loads((out / "snapshot.v1.schema.json").read_text())["additionalProperties"] is False
