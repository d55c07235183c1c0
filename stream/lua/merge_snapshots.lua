-- Merge new snapshot records into their posts' sequences, atomically, many posts per call.
--
-- Caller: SnapshotSequenceStore.merge_records (stream/sequence_store.py), through
-- redis_schema.merge_snapshots_call, which builds KEYS and ARGV. The stored formats are in stream/redis_schema.py.
--
-- KEYS, for post i of the call (i = 1..n), all posts of one shard (one hash tag, one Redis Cluster slot):
--   KEYS[2*i-1]  <prefix>{<shard>}:seq:<post_id>, the sequence (string): the header, then fixed-width records
--                sorted by time
--   KEYS[2*i]    <prefix>{<shard>}:post:<post_id>, the post hash
-- ARGV:
--   ARGV[1]      the sequence header, FORMAT_VERSION (one byte)
--   ARGV[2]      the record width in bytes; a record starts with observed_at as a big-endian uint32, so byte
--                order is time order
--   ARGV[3]      the sequence's TTL, seconds
--   ARGV[4]      the hash fields to read back (META_FIELDS), a JSON list
--   ARGV[5]      the post hash's TTL, seconds
--   ARGV[6]      one byte per post, what to do with its hash: '0' nothing (KEEP_META), '1' read ARGV[4]'s
--                fields and refresh its TTL (READ_META), '2' refresh its TTL (REFRESH_TTL)
--   ARGV[6+i]    post i's new records, concatenated (one argument per post: redis-py's packing costs per argument)
-- Returns 4 items per post: the status of each of its records (0 DUPLICATE: already stored, a no-op; 1 APPENDED;
-- 2 CORRECTED: replaced a different record of the same time; 3 OUT_OF_ORDER: inserted before a later one), the
-- merged sequence (so features are computed from exactly what is stored, in the same round trip), the values
-- of ARGV[4]'s fields on READ_META or nil, and the hash's predicted_to or nil. predicted_to (written by
-- record_predictions.lua) is read only when no record changed the sequence, i.e. on redelivery, so that a post
-- whose prediction was lost in a crash is scored again.
local header, width, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local meta_fields = cjson.decode(ARGV[4])
local meta_ttl, meta_actions = tonumber(ARGV[5]), ARGV[6]
local hlen = #header
local out = {}
local a = 7
for p = 1, #KEYS, 2 do
  local key, meta_key = KEYS[p], KEYS[p + 1]
  local stored = redis.call('GET', key)
  local seq = stored or header
  local statuses = {}
  local changed, rewrite = false, not stored  -- rewrite: more than records appended at the end
  local records = ARGV[a]
  for start = 1, #records, width do
    local rec = string.sub(records, start, start + width - 1)
    local t = string.sub(rec, 1, 4)
    local n = (#seq - hlen) / width
    if n == 0 or string.sub(seq, -width, -width + 3) < t then
      seq = seq .. rec  -- the usual case, a newer snapshot: no search (Lua interns every substring it makes)
      statuses[#statuses + 1] = 1
      changed = true
    else
      local lo, hi = 0, n
      while lo < hi do
        local mid = math.floor((lo + hi) / 2)
        local off = hlen + mid * width
        if string.sub(seq, off + 1, off + 4) < t then lo = mid + 1 else hi = mid end
      end
      local off = hlen + lo * width
      if lo < n and string.sub(seq, off + 1, off + 4) == t then
        if string.sub(seq, off + 1, off + width) == rec then
          statuses[#statuses + 1] = 0
        else
          seq = string.sub(seq, 1, off) .. rec .. string.sub(seq, off + width + 1)
          statuses[#statuses + 1] = 2
          changed, rewrite = true, true
        end
      else
        seq = string.sub(seq, 1, off) .. rec .. string.sub(seq, off + 1)
        statuses[#statuses + 1] = (lo < n) and 3 or 1
        changed, rewrite = true, true
      end
    end
  end
  a = a + 1
  if rewrite then
    redis.call('SET', key, seq, 'EX', ttl)
  elseif changed then
    -- Only newer records: APPEND them, so the append-only file (and a replica) gets tens of bytes, not the
    -- whole sequence again.
    redis.call('APPEND', key, string.sub(seq, #stored + 1))
    redis.call('EXPIRE', key, ttl)
  end
  local action = string.byte(meta_actions, (p + 1) / 2)  -- 48 KEEP_META, 49 READ_META, 50 REFRESH_TTL
  if action ~= 48 then redis.call('EXPIRE', meta_key, meta_ttl) end
  out[#out + 1] = statuses
  out[#out + 1] = seq
  if action == 49 then
    out[#out + 1] = redis.call('HMGET', meta_key, unpack(meta_fields))
  else
    out[#out + 1] = false
  end
  out[#out + 1] = (not changed) and redis.call('HGET', meta_key, 'predicted_to') or false
end
return out
