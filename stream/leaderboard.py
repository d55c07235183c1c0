"""What a batch of predictions leaves in Redis, in one call of record_predictions.lua: leaderboards, the latest
prediction per post, and the predictions kept for online accuracy.

Leaderboards are sorted sets: top-K by predicted score (overall, per platform, per category) and
"rising fastest" (realised score growth over the last hour, in log units per hour). Each board is
trimmed to ``size`` members after every batch so it stays small however many posts are live; a post
leaving the top returns when it rises again. The boards are bounded in number too (``BoardLimits``: boards of
known platforms, of a few others, of an allow-list or a few categories) and expire when no prediction has
entered them for a while, since producers choose the platform and category strings. One script call per batch
instead of five commands per prediction is what keeps Redis off the worker's profile.
"""

from __future__ import annotations

import time

import redis.asyncio as redis

from popscore.stream.redis_schema import RECORD_PREDICTIONS, TOP_BOARD, BoardLimits, RecordedPrediction, RedisKeys, \
    lua_source, record_predictions_call
from popscore.stream.redis_script import PipelinedScript


class Leaderboards:
    def __init__(self, client: redis.Redis, key_prefix: str, size: int, ttl_s: int,
                 limits: BoardLimits = BoardLimits()) -> None:
        self.client = client
        self.keys = RedisKeys(key_prefix)
        self.size = size
        self.ttl_s = ttl_s
        self.limits = limits
        self._record = PipelinedScript(client, lua_source(RECORD_PREDICTIONS))

    async def record(self, kind: str, predictions: list[RecordedPrediction], per_call: int = 512) -> None:
        """``per_call`` must stay under the script's limit (its header: ZADD's arguments from Lua)."""
        if not predictions:
            return

        now = time.time()

        def queue_calls(pipe) -> None:
            for start in range(0, len(predictions), per_call):
                self._record.call(pipe, *record_predictions_call(self.keys, self.ttl_s, self.size, kind,
                                                                 predictions[start:start + per_call],
                                                                 self.limits, now))

        await self._record.run(queue_calls)

    async def top(self, board: str = TOP_BOARD, k: int = 10) -> list[tuple[str, float]]:
        rows = await self.client.zrevrange(self.keys.board(board), 0, k - 1, withscores=True)
        return [(member.decode() if isinstance(member, bytes) else member, score) for member, score in rows]
