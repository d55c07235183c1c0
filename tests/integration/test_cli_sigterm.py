"""A `popscore` command that started a stack and gets SIGTERM (CI's or `timeout`'s kill) stops that stack
(issue 21, item 10): no broker, Redis, Triton or worker process is left behind, whether the signal comes while
the stack starts or once it runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from popscore.tools.stack.process import _group_members, group_alive, kill_group
from tests.conftest import MODEL_REPO

pytestmark = pytest.mark.integration


def popscore_up(run_dir: Path, *args: str, command: str = "up") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "popscore.tools.cli", command, "--run-dir", str(run_dir),
                             "--model-repo", str(MODEL_REPO), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def recorded_groups(run_dir: Path) -> dict[str, int]:
    """Component name -> process group id, as the stack recorded them (empty while stack.json is absent)."""
    try:
        state = json.loads((run_dir / "stack.json").read_text())
    except (OSError, ValueError):
        return {}
    return {name: int(info["pid"]) for name, info in state["processes"].items()}


def every_process_of(groups: dict[str, int]) -> dict[int, str]:
    """pid -> component, for every member of the components' process groups (Triton's backend stubs too)."""
    return {int(pid): name for name, pgid in groups.items() for pid in _group_members(pgid)}


def kill_leftovers(run_dir: Path, proc: subprocess.Popen) -> None:
    """After the assertions: a failing run must not leave its orphans running on the shared machine."""
    if proc.poll() is None:
        proc.kill()
    for pgid in recorded_groups(run_dir).values():
        kill_group(pgid)


def wait_gone(pids: dict[int, str], deadline_s: float) -> list[str]:
    """Poll until none of ``pids`` runs; returns those still running at the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        left = [f"{name} (pid {pid})" for pid, name in pids.items() if Path(f"/proc/{pid}").exists()
                and _not_zombie(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_sigterm_while_the_stack_starts_stops_what_was_started(tmp_path):
    run_dir = tmp_path / "run"
    proc = popscore_up(run_dir)
    try:
        deadline = time.monotonic() + 120
        groups: dict[str, int] = {}
        while time.monotonic() < deadline and proc.poll() is None:  # broker and Redis spawned, Triton not ready
            groups = recorded_groups(run_dir)
            if {"broker", "redis", "triton"} <= set(groups):
                break
            time.sleep(0.05)
        assert {"broker", "redis", "triton"} <= set(groups), f"the stack did not start: {proc.poll()}"
        processes = every_process_of(groups)
        assert processes, "no process of the stack found before the signal"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signal.SIGTERM, output
        assert "stopped by SIGTERM" in output, output
        processes.update(every_process_of(groups))
        assert wait_gone(processes, deadline_s=30) == [], output
        assert not any(group_alive(pgid) for pgid in groups.values())
    finally:
        kill_leftovers(run_dir, proc)


def test_sigterm_to_a_running_up_stops_every_component(tmp_path):
    run_dir = tmp_path / "run"
    proc = popscore_up(run_dir)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "press Ctrl-C" in line or not line:
                break
        assert any("press Ctrl-C" in line for line in lines), "".join(lines)
        groups = recorded_groups(run_dir)
        assert {"broker", "redis", "triton", "worker"} <= set(groups)
        processes = every_process_of(groups)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, "".join(lines) + output
        assert wait_gone(processes, deadline_s=30) == [], "".join(lines) + output
        assert recorded_groups(run_dir) == {}, "stack.json still lists processes after the stop"
    finally:
        kill_leftovers(run_dir, proc)


def test_sigterm_to_the_demo_while_it_replays_stops_its_stack(tmp_path):
    """The demo's replay runs in asyncio: the signal must unwind through asyncio.run to the stack's stop."""
    run_dir = tmp_path / "run"
    proc = popscore_up(run_dir, "--seconds", "120", command="demo")
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("[popscore] prediction ") or not line:
                break
        assert any(line.startswith("[popscore] prediction ") for line in lines), "".join(lines)
        groups = recorded_groups(run_dir)
        assert {"broker", "redis", "triton", "worker"} <= set(groups)
        processes = every_process_of(groups)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signal.SIGTERM, "".join(lines) + output
        assert wait_gone(processes, deadline_s=30) == [], "".join(lines) + output
    finally:
        kill_leftovers(run_dir, proc)
