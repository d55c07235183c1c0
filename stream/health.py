"""What ``/readyz`` reports: one named check per thing the worker needs, each with why it fails.

A check is set by whoever learns the truth: the probe timer (Redis and broker round trips), the agents
(running, or retrying a failed batch), the consumer (commits). The worker is ready only while every check
passes; the failing ones are listed with their reason and since when, so the person on call sees what broke.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient

from popscore.stream.redis_client import ping_every_primary


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


class Probes:
    """Round trips to Redis (every primary of a cluster) and the broker, and the consumer's last commit: a
    connection that is open but does not answer (a paused or partitioned service) fails its check too."""

    def __init__(self, health: Health, bootstrap_servers: str, timeout_s: float) -> None:
        self.health = health
        self.bootstrap_servers = bootstrap_servers
        self.timeout_s = timeout_s
        self.admin: AIOKafkaAdminClient | None = None  # created in the running loop, by the first probe

    async def run(self, redis, consumer) -> None:
        timeout = self.timeout_s
        try:
            await asyncio.wait_for(ping_every_primary(redis), timeout)
            self.health.set("redis", True, "answers PING (a cluster: every primary)")
        except Exception as exc:
            self.health.set("redis", False, f"no answer to PING within {timeout:g}s: {exc!r}")
        try:
            if self.admin is None:
                admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers,
                                            request_timeout_ms=int(timeout * 1000))
                try:
                    await asyncio.wait_for(admin.start(), timeout)
                except BaseException:
                    await admin.close()
                    raise
                self.admin = admin
            await asyncio.wait_for(self.admin.list_topics(), timeout)
            self.health.set("broker", True, "answers metadata requests")
        except Exception as exc:
            self.health.set("broker", False, f"no metadata answer within {timeout:g}s: {exc!r}")
        self.health.set("commits", *consumer.commit_health())

    async def close(self) -> None:
        if self.admin is not None:
            await self.admin.close()
