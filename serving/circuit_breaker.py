"""A circuit breaker: stop calling a failing Triton for a while, then let one trial call through.

Closed -> (``failure_threshold`` consecutive failures, or one ``trip``) -> open for ``reset_after_s`` ->
half-open: one trial call; success closes the circuit, failure opens it again. Pure logic with an
injectable clock.

A trial call that ends with neither a success nor a failure recorded (it was cancelled) must give its
slot back, or no further trial is ever allowed and the circuit stays open for good: callers that can be
cancelled use ``with breaker.call() as allowed:`` rather than ``allow()``.
"""

from __future__ import annotations

import contextlib
import time
from enum import StrEnum
from typing import Callable, Iterator


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, failure_threshold: int, reset_after_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._trial: object | None = None  # the token of the trial call in flight, if any

    @property
    def state(self) -> BreakerState:
        if self.opened_at is None:
            return BreakerState.CLOSED
        if self.clock() - self.opened_at >= self.reset_after_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    @property
    def trial_in_flight(self) -> bool:
        return self._trial is not None

    def allow(self) -> bool:
        """May a call go through now? In half-open state only one trial call is allowed at a time."""
        return self._admit() is not None

    def _admit(self) -> object | None:
        """None if the call may not go through; else a token, which is the trial's own for a trial call."""
        state = self.state
        if state is BreakerState.CLOSED:
            return _NOT_A_TRIAL
        if state is BreakerState.HALF_OPEN and self._trial is None:
            self._trial = object()
            return self._trial
        return None

    @contextlib.contextmanager
    def call(self) -> Iterator[bool]:
        """``allow()`` for one call, as a context: yields whether the call may go through. If it was the
        trial and leaves the block without ``record_success``/``record_failure`` (cancelled, or an error
        not counted against Triton), the trial slot is released so that the next call gets a trial."""
        token = self._admit()
        try:
            yield token is not None
        finally:
            if token is not None and token is self._trial:
                self._trial = None

    def release(self) -> None:
        """Give the trial slot back without recording an outcome (for callers of ``allow()``)."""
        self._trial = None

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self._trial = None

    def record_failure(self) -> None:
        self._trial = None
        self.failures += 1
        if self.opened_at is not None or self.failures >= self.failure_threshold:
            self.opened_at = self.clock()

    def trip(self) -> None:
        """Open the circuit now, whatever the count: for failures that will surely repeat (a deadline
        missed by a server that does not answer), where waiting for ``failure_threshold`` of them costs
        a full deadline each."""
        self._trial = None
        self.failures = max(self.failures + 1, self.failure_threshold)
        self.opened_at = self.clock()


_NOT_A_TRIAL = object()
