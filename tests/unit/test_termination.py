"""The signal handling of commands that own a stack (tools/stack/process.py): real signals sent to this process."""

from __future__ import annotations

import os
import signal
import time

import pytest

from popscore.tools.stack.process import Terminated, stop_on_termination, termination_deferred


def deliver(sig: signal.Signals) -> None:
    """Send ``sig`` to this process and give the interpreter the bytecode boundary where its handler runs."""
    os.kill(os.getpid(), sig)
    for _ in range(100):
        time.sleep(0.001)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_stopping_signal_raises_terminated(sig):
    with pytest.raises(Terminated) as caught, stop_on_termination():
        deliver(sig)
    assert caught.value.signum == sig and sig.name in str(caught.value)


def test_the_previous_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_termination():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_signal_inside_a_deferred_section_is_raised_at_its_end():
    steps = []
    with pytest.raises(Terminated), stop_on_termination():
        with termination_deferred():
            deliver(signal.SIGTERM)
            steps.append("the section ran to its end")
        steps.append("after the section")
    assert steps == ["the section ran to its end"]


def test_signals_after_the_first_are_ignored_while_the_stack_stops():
    stopped = []
    with pytest.raises(Terminated), stop_on_termination():
        try:
            deliver(signal.SIGTERM)
        finally:
            deliver(signal.SIGTERM)  # an impatient second kill must not interrupt the stop
            stopped.append(True)
    assert stopped == [True]


def test_deferral_without_a_guard_is_a_no_op():
    with termination_deferred():
        pass


def test_up_stops_its_stack_when_the_signal_comes_just_as_it_says_it_runs(monkeypatch, tmp_path):
    """`popscore up` prints "press Ctrl-C" once the stack runs; a SIGTERM sent as soon as a reader sees that line
    (test_cli_sigterm does exactly that) may be handled before the wait loop starts: the stack is stopped all the
    same and the command ends as a stopped foreground stack does (0)."""
    from popscore.tools import cli
    from popscore.tools.stack import stack as stack_module

    events = []

    class FakeStack:
        def __init__(self, settings, fixed_ports=None, log=None) -> None:
            pass

        def start(self, with_worker=True):
            events.append("started")
            return stack_module.StackState(run_dir=str(tmp_path), endpoints={})

        def stop(self):
            events.append("stopped")
            return []

    def printed(message: str) -> None:
        if message.startswith("press Ctrl-C"):
            deliver(signal.SIGTERM)  # handled right here, before the wait loop

    monkeypatch.setattr(stack_module, "EmbeddedStack", FakeStack)
    monkeypatch.setattr(cli, "_print", printed)
    monkeypatch.setattr(stack_module.StackState, "endpoints_obj", lambda self: type("E", (), {
        "as_dict": lambda _: {"broker": "127.0.0.1:1"}})())
    assert cli.main(["up", "--run-dir", str(tmp_path)]) == 0
    assert events == ["started", "stopped"]
