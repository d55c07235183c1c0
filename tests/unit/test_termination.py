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
