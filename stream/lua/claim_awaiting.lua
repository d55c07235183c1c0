-- Lease the posts whose snapshots waited long enough for their post event, atomically: the due members are
-- moved to the lease end, so one worker scores each while it holds the lease, and a worker that dies before it
-- removed one (SnapshotSequenceStore.done_waiting) leaves it to be taken again when the lease ends.
--
-- Caller: SnapshotSequenceStore.claim_overdue (stream/sequence_store.py), through
-- redis_schema.claim_awaiting_call, which builds KEYS and ARGV.
--
-- KEYS:
--   KEYS[1]  <prefix>{<shard>}:awaiting, one shard's sorted set: member post_id, score the wall time from which
--            it may be scored without its post
-- ARGV:
--   ARGV[1]  now, epoch seconds: members scored up to it are due
--   ARGV[2]  the lease end, epoch seconds: the due members' new score
--   ARGV[3]  the most members to take
-- Returns the post_ids taken.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, post in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], post) end
return due
