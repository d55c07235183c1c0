"""The circuit breaker's state machine, with a fake clock."""

import asyncio

import pytest

from popscore.serving.circuit_breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_and_half_opens_after_the_reset_time():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, reset_after_s=5, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.now = 5.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()          # one trial call ...
    assert not breaker.allow()      # ... and only one
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN  # a failed trial opens it again at once
    clock.now = 10.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


def test_a_success_resets_the_failure_count():
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=1, clock=Clock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED


def test_trip_opens_the_circuit_at_once():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, reset_after_s=5, clock=clock)
    breaker.trip()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.now = 5.0
    assert breaker.allow()  # the trial after the reset time, as after counted failures


def half_open_breaker() -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=5, clock=clock)
    breaker.record_failure()
    clock.now = 5.0
    assert breaker.state is BreakerState.HALF_OPEN
    return breaker, clock


def test_a_trial_that_leaves_without_an_outcome_gives_its_slot_back():
    breaker, _ = half_open_breaker()
    with pytest.raises(asyncio.CancelledError):
        with breaker.call() as allowed:
            assert allowed and breaker.trial_in_flight
            with breaker.call() as second:
                assert not second  # only one trial at a time ...
            raise asyncio.CancelledError  # ... and this one ends with neither success nor failure
    assert not breaker.trial_in_flight
    with breaker.call() as allowed:
        assert allowed  # the next call gets a trial
        breaker.record_success()
    assert breaker.state is BreakerState.CLOSED


def test_a_call_only_releases_its_own_trial():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, reset_after_s=5, clock=clock)
    ordinary = breaker.call()
    assert ordinary.__enter__()          # admitted while closed: not a trial
    breaker.trip()
    clock.now = 5.0
    with breaker.call() as trial:
        assert trial and breaker.trial_in_flight
        ordinary.__exit__(None, None, None)  # the ordinary call ends without an outcome ...
        assert breaker.trial_in_flight       # ... and leaves the trial's slot alone


def test_release_frees_the_trial_of_allow():
    breaker, _ = half_open_breaker()
    assert breaker.allow() and not breaker.allow()
    breaker.release()
    assert breaker.allow()
