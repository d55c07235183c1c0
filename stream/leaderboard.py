"""What a batch of predictions leaves in Redis, in one script call: leaderboards, the latest prediction
per post, and the predictions kept for online accuracy.

Leaderboards are sorted sets: top-K by predicted score (overall, per platform, per category) and
"rising fastest" (realised score growth over the last hour, in log units per hour). Each board is
trimmed to ``size`` members after every batch so it stays small however many posts are live; a post
leaving the top returns when it rises again.

The script builds its key names from the prefix (it does not declare them), which is fine on one Redis
and needs a hash tag per post on Redis Cluster; one call per batch instead of five commands per
prediction is what keeps Redis off the worker's profile.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import redis.asyncio as redis

from popscore.stream.redis_script import PipelinedScript

# ARGV: prefix, ttl, board size, model kind, then the predictions as one JSON array of rows
# [post_id, score, rising, platform, category ('' for none), latest view (JSON text), maturity time,
#  [[kept field, value], ...]]. One argument instead of eight or more per prediction: redis-py's command
# packing of those was ~6 % of the worker on single records.
RECORD_SCRIPT = """
local prefix, ttl, size, kind = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local touched = {}
for _, row in ipairs(cjson.decode(ARGV[5])) do
  local post, score, rising, platform, category, latest, due, kept = unpack(row)
  local post_key = prefix .. 'post:' .. post
  if kind == 'temporal' then
    local boards = {'top', 'top:platform:' .. platform}
    if category ~= '' then boards[3] = 'top:category:' .. category end
    for _, board in ipairs(boards) do
      redis.call('ZADD', prefix .. 'lb:' .. board, score, post)
      touched[board] = true
    end
    redis.call('ZADD', prefix .. 'lb:rising', rising, post)
    touched['rising'] = true
  end
  redis.call('HSET', post_key, 'prediction:' .. kind, latest)
  for _, pair in ipairs(kept) do
    redis.call('HSETNX', post_key, pair[1], pair[2])
  end
  redis.call('EXPIRE', post_key, ttl)
  redis.call('ZADD', prefix .. 'maturity', 'NX', due, post)
end
for board, _ in pairs(touched) do
  redis.call('ZREMRANGEBYRANK', prefix .. 'lb:' .. board, 0, -(size + 1))
end
return 0
"""


@dataclass(frozen=True)
class RecordedPrediction:
    post_id: str
    score: float
    rising: float
    platform: str
    category: str | None
    latest_view: str  # JSON text
    matures_at: float
    kept_for_evaluation: tuple[tuple[str, float], ...] = ()


class Leaderboards:
    def __init__(self, client: redis.Redis, key_prefix: str, size: int, ttl_s: int) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self.size = size
        self.ttl_s = ttl_s
        self._record = PipelinedScript(client, RECORD_SCRIPT)

    def key(self, board: str) -> str:
        return f"{self.key_prefix}lb:{board}"

    async def record(self, kind: str, predictions: list[RecordedPrediction], per_call: int = 512) -> None:
        if not predictions:
            return

        def queue_calls(pipe) -> None:
            for start in range(0, len(predictions), per_call):
                rows = [[p.post_id, p.score, p.rising, p.platform, p.category or "", p.latest_view, p.matures_at,
                         [[name, repr(value)] for name, value in p.kept_for_evaluation]]
                        for p in predictions[start:start + per_call]]
                self._record.call(pipe, [], [self.key_prefix, self.ttl_s, self.size, kind, orjson.dumps(rows)])

        await self._record.run(queue_calls)

    async def top(self, board: str = "top", k: int = 10) -> list[tuple[str, float]]:
        rows = await self.client.zrevrange(self.key(board), 0, k - 1, withscores=True)
        return [(member.decode() if isinstance(member, bytes) else member, score) for member, score in rows]
