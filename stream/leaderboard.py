"""What a batch of predictions leaves in Redis, in one call of record_predictions.lua: leaderboards, the latest
prediction per post, and the predictions kept for online accuracy.

Leaderboards are sorted sets: top-K by predicted score (overall, per platform, per category) and
"rising fastest" (realised score growth over the last hour, in log units per hour). Each board is
trimmed to ``size`` members after every batch so it stays small however many posts are live; a post
leaving the top returns when it rises again. The boards are bounded in number too (``BoardLimits``: boards of
known platforms, of a few others, of an allow-list or a few categories) and expire when no prediction has
entered them for a while, since producers choose the platform and category strings. One script call per shard
of a batch instead of five commands per prediction is what keeps Redis off the worker's profile. The boards are
kept per shard (the posts' hash tag, ``redis_schema``), so a call touches one Redis Cluster slot; a board is read
as the merge of its shards' best.
"""

from __future__ import annotations

import time

from popscore.stream.redis_client import AsyncClient
from popscore.stream.redis_schema import RECORD_PREDICTIONS, TOP_BOARD, BoardLimits, RecordedPrediction, RedisKeys, \
    lua_source, merge_rankings, record_predictions_call
from popscore.stream.redis_script import PipelinedScript


class Leaderboards:
    def __init__(self, client: AsyncClient, keys: RedisKeys, size: int, ttl_s: int,
                 limits: BoardLimits = BoardLimits()) -> None:
        self.client = client
        self.keys = keys
        self.size = size
        self.ttl_s = ttl_s
        self.limits = limits
        self._record = PipelinedScript(client, lua_source(RECORD_PREDICTIONS))

    async def record(self, kind: str, predictions: list[RecordedPrediction], per_call: int = 512) -> int:
        """One script call per shard of the posts (per ``per_call`` of them), all in one pipeline. ``per_call``
        must stay under the script's limit (its header: ZADD's arguments from Lua). The number of temporal
        predictions not recorded as their post's latest: older (``as_of``) than the one recorded (the script's
        header says why that happens)."""
        if not predictions:
            return 0

        now = time.time()
        by_shard: dict[int, list[RecordedPrediction]] = {}
        shard = self.keys.shard
        for prediction in predictions:
            by_shard.setdefault(shard(prediction.post_id), []).append(prediction)

        def queue_calls(pipe) -> None:
            for shard_id, rows in by_shard.items():
                for start in range(0, len(rows), per_call):
                    self._record.call(pipe, *record_predictions_call(self.keys, shard_id, self.ttl_s, self.size,
                                                                     kind, rows[start:start + per_call],
                                                                     self.limits, now))

        return sum(await self._record.run(queue_calls))

    async def top(self, board: str = TOP_BOARD, k: int = 10) -> list[tuple[str, float]]:
        """The board's best ``k``: the merge of its shards' best ``k``."""
        async with self.client.pipeline(transaction=False) as pipe:
            for shard_id in self.keys.all_shards:
                pipe.zrevrange(self.keys.board(board, shard_id), 0, k - 1, withscores=True)
            return merge_rankings(await pipe.execute(), k)
