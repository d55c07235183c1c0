"""What ``/readyz`` reports: one named check per thing the worker needs, each with why it fails.

A check is set by whoever learns the truth: the probe timer (Redis and broker round trips), the agents
(running, or retrying a failed batch), the consumer (commits). The worker is ready only while every check
passes; the failing ones are listed with their reason and since when, so the person on call sees what broke.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Check:
    ok: bool
    detail: str
    since: float  # wall time of the last change of ``ok``


class Health:
    def __init__(self, required: tuple[str, ...]) -> None:
        now = time.time()
        self.checks: dict[str, Check] = {name: Check(False, "not checked yet", now) for name in required}

    def set(self, name: str, ok: bool, detail: str = "") -> None:
        check = self.checks.get(name)
        if check is None or check.ok != ok:
            self.checks[name] = Check(ok, detail, time.time())
        else:
            check.detail = detail

    def ok(self, name: str) -> bool:
        check = self.checks.get(name)
        return check is not None and check.ok

    @property
    def ready(self) -> bool:
        return all(check.ok for check in self.checks.values())

    def failing(self) -> dict[str, dict]:
        return {name: {"detail": c.detail, "since": c.since} for name, c in self.checks.items() if not c.ok}

    def report(self) -> dict[str, dict]:
        return {name: {"ok": c.ok, "detail": c.detail, "since": c.since} for name, c in self.checks.items()}
