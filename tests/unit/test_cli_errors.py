"""The `popscore` command answers a user's mistake with one line on stderr, never a traceback (issue 21, item 7).

Each mistake runs the real command as a subprocess, as a user would type it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from popscore.settings import Settings, settings_reference
from popscore.tools.cli import STACK_COMMANDS, build_parser, user_error
from popscore.tools.stack.process import free_port


def popscore(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "popscore.tools.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={**os.environ, **(env or {})})


def assert_one_line_error(result: subprocess.CompletedProcess, *expected: str) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_missing_file(tmp_path):
    missing = tmp_path / "no-such-events.jsonl"
    for command in ("inspect", "replay"):
        line = assert_one_line_error(popscore(command, str(missing), cwd=tmp_path), str(missing),
                                     "No such file or directory")
        assert line.startswith(f"popscore {command}: error:")
    # the demo reads its data before it starts a stack: nothing is started for a missing file
    assert_one_line_error(popscore("demo", "--data", str(missing), "--run-dir", str(tmp_path / "run"), cwd=tmp_path),
                          str(missing))
    assert not (tmp_path / "run").exists()


def test_unreadable_file(tmp_path):
    """A folder where a file is expected (permissions cannot make a file unreadable for root)."""
    assert_one_line_error(popscore("inspect", str(tmp_path), cwd=tmp_path), str(tmp_path), "Is a directory")


def test_unwritable_output_folder(tmp_path):
    target = tmp_path / "a-file"
    target.write_text("")
    assert_one_line_error(popscore("schema", "--out", str(target / "schemas"), cwd=tmp_path), str(target))


def test_unreachable_broker_names_the_service_and_address(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"schema": "snapshot.v1", "post_id": "p1", "observed_at": "2024-05-01T10:00:00Z",
                                  "counts": {"likes": 1}}) + "\n")
    address = f"127.0.0.1:{free_port()}"
    assert_one_line_error(popscore("replay", str(events), "--bootstrap", address, "--quiet", cwd=tmp_path),
                          "Kafka broker unreachable", address)


def test_unreachable_redis_is_one_line_naming_the_address():
    """No subcommand talks to Redis outside a stack; the translation of redis-py's error is checked directly."""
    import redis

    port = free_port()
    with pytest.raises(redis.exceptions.ConnectionError) as caught:
        redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=2).ping()
    message = user_error(caught.value)
    assert message.startswith("Redis unreachable") and f"127.0.0.1:{port}" in message


@pytest.mark.parametrize("variable, value, command", [
    ("POPSCORE_KAFKA__TOPICS__PARTITIONS", "many", "config"),
    ("POPSCORE_STACK__WORKERS", "0", "status"),
])
def test_invalid_setting_names_the_variable(tmp_path, variable, value, command):
    assert_one_line_error(popscore(command, cwd=tmp_path, env={variable: value}), "invalid setting", variable)


def test_a_bug_keeps_its_traceback():
    assert user_error(ZeroDivisionError("division by zero")) is None


@pytest.mark.parametrize("argv", [["--run-dir", "X", "--model-repo", "M", "up"],
                                  ["up", "--run-dir", "X", "--model-repo", "M"]])
def test_stack_options_before_or_after_the_subcommand(argv):
    args = build_parser().parse_args(argv)
    assert (args.run_dir, args.model_repo) == ("X", "M")


def test_stack_options_after_the_subcommand_reach_the_command(tmp_path):
    run_dir = tmp_path / "elsewhere"
    result = popscore("status", "--run-dir", str(run_dir), cwd=tmp_path)
    assert result.returncode == 1 and f"no stack running from {run_dir}" in result.stdout, result.stdout


def test_down_with_nothing_running_says_so(tmp_path):
    result = popscore("down", "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 0 and "nothing to stop" in result.stdout, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_status_after_down_prints_no_stale_endpoints(tmp_path):
    """`down` leaves stack.json with its endpoints and no processes; status must not show those endpoints."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    state = {"run_dir": str(run_dir), "models": [], "processes": {},
             "endpoints": {"host": "127.0.0.1", "broker_port": 19092, "redis_port": 16379, "triton_http_port": 18000,
                           "triton_grpc_port": 18001, "triton_metrics_port": 18002, "worker_web_port": 16066,
                           "worker_metrics_port": 19464}}
    (run_dir / "stack.json").write_text(json.dumps(state))
    text = popscore("status", "--run-dir", str(run_dir), cwd=tmp_path)
    assert text.returncode == 1 and "no stack running" in text.stdout
    assert "19092" not in text.stdout and "16379" not in text.stdout, text.stdout
    as_json = json.loads(popscore("status", "--json", "--run-dir", str(run_dir), cwd=tmp_path).stdout)
    assert not as_json["running"] and "endpoints" not in as_json


def test_every_setting_has_a_description():
    missing = [env for env, _, description in settings_reference(Settings()) if not description.strip()]
    assert missing == []


def test_every_option_of_every_subcommand_has_a_help_text():
    def undocumented(parser: argparse.ArgumentParser, path: str) -> list[str]:
        found = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {choice.dest for choice in action._choices_actions if choice.help}
                found += [f"{path} {name} (the subcommand)" for name in action.choices if name not in helped]
                for name, subparser in action.choices.items():
                    found += undocumented(subparser, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction) and not (action.help and action.help.strip()):
                found.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
        return found

    assert undocumented(build_parser(), "popscore") == []


def test_every_stack_starting_command_is_guarded_against_sigterm():
    """up, bench and demo start a stack; main() stops it on SIGTERM only for the commands listed here."""
    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"up", "bench", "demo"} <= STACK_COMMANDS <= set(subcommands)


def test_worker_with_an_unusable_run_dir_is_one_line(tmp_path):
    """The run directory is created when missing; one that cannot be (under a file) is one line, not Faust's
    traceback."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_one_line_error(popscore("worker", "--run-dir", str(blocker / "run"), cwd=tmp_path), str(blocker))
