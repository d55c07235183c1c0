-- Lease the posts due for another read of their picture (it was unavailable: the object store failed), and return
-- what the retry needs, atomically: the due members are moved to the lease end, so one worker reads each while it
-- holds the lease, and a worker that dies before it rescheduled or removed one (MediaRetries.reschedule, .done)
-- leaves it to be taken again when the lease ends.
--
-- Caller: MediaRetries.claim (stream/media_retry.py), through redis_schema.claim_media_retries_call, which builds
-- KEYS and ARGV.
--
-- KEYS:
--   KEYS[1]  <prefix>{<shard>}:media_retry, one shard's sorted set: member post_id, score the wall time (epoch s)
--            its next read is due
--   KEYS[2]  <prefix>{<shard>}:media_retry_posts, the shard's hash: post_id -> its retry record (JSON: the
--            retries made, the post event)
-- ARGV:
--   ARGV[1]  now, epoch seconds: members scored up to it are due
--   ARGV[2]  the lease end, epoch seconds: the due members' new score
--   ARGV[3]  the most members to take
-- Returns post_id, record, post_id, record, ... of the posts taken; a due member without a record (a write that
-- was cut half-way) is removed, not taken.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local taken = {}
for _, post in ipairs(due) do
  local record = redis.call('HGET', KEYS[2], post)
  if record then
    redis.call('ZADD', KEYS[1], ARGV[2], post)
    taken[#taken + 1] = post
    taken[#taken + 1] = record
  else
    redis.call('ZREM', KEYS[1], post)
  end
end
return taken
