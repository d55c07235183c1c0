-- Release the posts the overdue timer leased (claim_awaiting.lua) and scored, atomically: a post is removed only
-- if its score is still the lease end, i.e. no snapshot of it was merged while it was being scored. Such a
-- snapshot registers the post again with an earlier due time (SnapshotSequenceStore.await_posts: ZADD LT lowers
-- the lease end), and removing it then would leave that newest observation unscored until the post or another
-- snapshot comes; kept, it is scored when due.
--
-- Caller: SnapshotSequenceStore.release_overdue (stream/sequence_store.py), through
-- redis_schema.release_awaiting_call, which builds KEYS and ARGV.
--
-- KEYS:
--   KEYS[1]  <prefix>{<shard>}:awaiting, one shard's sorted set (claim_awaiting.lua's)
-- ARGV:
--   ARGV[1]  the lease end the posts were claimed with, epoch seconds (the same number claim_awaiting.lua set)
--   ARGV[1+i]  the i-th post_id (i = 1..n), all of that shard
-- Returns the number of posts removed.
local lease_end, removed = tonumber(ARGV[1]), 0
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == lease_end then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
