"""A Lua script run by EVALSHA inside pipelines, without redis-py's ``SCRIPT EXISTS`` before each one.

redis-py's ``Script``, called on a pipeline, makes the pipeline send ``SCRIPT EXISTS`` and wait for the
answer before every ``execute``: one more round trip per merge and per leaderboard write, the merge's on the
worker's critical path. Here a pipeline only queues ``EVALSHA``. The script is loaded when Redis answers
NOSCRIPT (first use, a restarted Redis, ``SCRIPT FLUSH``); every call in such a pipeline failed and none
ran, so the pipeline is built and run once more. On a Redis Cluster the script is loaded on every primary (a
replica promoted by a failover may not have it: its calls answer NOSCRIPT and the pipeline runs again; the calls
that did run on other nodes run again too, which the scripts' idempotence allows).
"""

from __future__ import annotations

import hashlib
from typing import Callable

from redis.exceptions import NoScriptError


class PipelinedScript:
    def __init__(self, client, source: str) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def call(self, pipe, keys: list, args: list) -> None:
        """Queue one call of the script on ``pipe`` (as a command: redis-py's cluster pipeline refuses its
        ``evalsha`` method, though it routes the command by its KEYS)."""
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)

    async def run(self, queue_calls: Callable[[object], None]) -> list:
        """A pipeline of this script's calls, queued by ``queue_calls(pipe)``; the calls' results."""
        try:
            return await self._execute(queue_calls)
        except NoScriptError:
            await self.client.script_load(self.source)
            return await self._execute(queue_calls)

    async def _execute(self, queue_calls: Callable[[object], None]) -> list:
        async with self.client.pipeline(transaction=False) as pipe:
            queue_calls(pipe)
            return await pipe.execute()
