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
#  [[kept field, value], ...], as_of]. A temporal prediction also sets the post's ``predicted_to`` mark to its
#  as_of (the observation time it is as of): the merge script reads it on redelivery (sequence_store.py). The
#  worker calls this only once the predictions are in Kafka, so the mark never claims a lost prediction.
# One argument instead of eight or more per prediction: redis-py's command
# packing of those was ~6 % of the worker on single records.
#
# A board is written per call, not per prediction: its members among the call's posts are updated (one
# ZMSCORE, one ZADD), then newcomers are added only if they reach the board's floor, the ``size``-th best
# score after those updates; a newcomer below it would be trimmed at once. The board ends exactly as
# "add every prediction, keep the best ``size``" would leave it, without inserting and trimming the ~99 % of
# predictions that never make a board (those were ~4 ZADDs per prediction, a quarter of Redis's time).
# ZADD takes at most ~7,900 arguments from Lua (its C stack): ``record``'s ``per_call`` must stay under 3,900.
RECORD_SCRIPT = """
local prefix, ttl, size, kind = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local rows = cjson.decode(ARGV[5])

local function write_board(board, posts, scores)
  local key = prefix .. 'lb:' .. board
  local current = redis.call('ZMSCORE', key, unpack(posts))
  local members, newcomers = {}, {}
  for i, post in ipairs(posts) do
    local pair = current[i] and members or newcomers
    pair[#pair + 1] = scores[i]
    pair[#pair + 1] = post
  end
  if #members > 0 then redis.call('ZADD', key, unpack(members)) end
  if #newcomers == 0 then return end
  local floor = redis.call('ZREVRANGE', key, size - 1, size - 1, 'WITHSCORES')[2]
  if floor then
    floor = tonumber(floor)
    local kept = {}
    for i = 1, #newcomers, 2 do
      if newcomers[i] >= floor then
        kept[#kept + 1] = newcomers[i]
        kept[#kept + 1] = newcomers[i + 1]
      end
    end
    newcomers = kept
  end
  if #newcomers == 0 then return end
  redis.call('ZADD', key, unpack(newcomers))
  redis.call('ZREMRANGEBYRANK', key, 0, -(size + 1))
end

if kind == 'temporal' then
  local boards, order = {}, {}
  local function enter(board, post, score)
    local entry = boards[board]
    if not entry then
      entry = {posts = {}, scores = {}}
      boards[board] = entry
      order[#order + 1] = board
    end
    entry.posts[#entry.posts + 1] = post
    entry.scores[#entry.scores + 1] = score
  end
  for _, row in ipairs(rows) do
    local post, score, rising, platform, category = row[1], row[2], row[3], row[4], row[5]
    enter('top', post, score)
    enter('top:platform:' .. platform, post, score)
    if category ~= '' then enter('top:category:' .. category, post, score) end
    enter('rising', post, rising)
  end
  for _, board in ipairs(order) do
    write_board(board, boards[board].posts, boards[board].scores)
  end
end

local due = {}
for _, row in ipairs(rows) do
  local post, latest, kept = row[1], row[6], row[8]
  local post_key = prefix .. 'post:' .. post
  -- The hash has its TTL from the merge or the post event just before; a hash this creates needs one.
  local created
  if kind == 'temporal' then
    created = redis.call('HSET', post_key, 'prediction:temporal', latest, 'predicted_to', row[9]) == 2
  else
    created = redis.call('HSET', post_key, 'prediction:' .. kind, latest) == 1
  end
  if created then redis.call('EXPIRE', post_key, ttl) end
  for _, pair in ipairs(kept) do
    redis.call('HSETNX', post_key, pair[1], pair[2])
  end
  due[#due + 1] = row[7]
  due[#due + 1] = post
end
redis.call('ZADD', prefix .. 'maturity', 'NX', unpack(due))
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
    as_of: int = 0  # observation time (epoch s) the prediction is as of


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
                         [[name, repr(value)] for name, value in p.kept_for_evaluation], p.as_of]
                        for p in predictions[start:start + per_call]]
                self._record.call(pipe, [], [self.key_prefix, self.ttl_s, self.size, kind, orjson.dumps(rows)])

        await self._record.run(queue_calls)

    async def top(self, board: str = "top", k: int = 10) -> list[tuple[str, float]]:
        rows = await self.client.zrevrange(self.key(board), 0, k - 1, withscores=True)
        return [(member.decode() if isinstance(member, bytes) else member, score) for member, score in rows]
