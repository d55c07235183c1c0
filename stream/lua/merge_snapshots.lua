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
--   ARGV[2]      the record width in bytes; a record starts with observed_at as a big-endian uint32, which the
--                script decodes (struct.unpack '>I4') and compares as a number: Lua compares strings with strcoll,
--                whose order under a locale other than C need not be byte order
--   ARGV[3]      the sequence's TTL, seconds
--   ARGV[4]      the hash fields to read back (META_FIELDS), a JSON list
--   ARGV[5]      the post hash's TTL, seconds
--   ARGV[6]      one byte per post, what to do with its hash: '0' nothing (KEEP_META), '1' read ARGV[4]'s
--                fields and refresh its TTL (READ_META), '2' refresh its TTL (REFRESH_TTL)
--   ARGV[7]      the look-back, seconds: the features read the records after the last one at or before the latest
--                observation minus this (popscore.features.lookback_s)
--   ARGV[7+i]    post i's new records, concatenated (one argument per post: redis-py's packing costs per argument)
-- Returns 5 items per post: the status of each of its records (0 DUPLICATE: already stored, a no-op; 1 APPENDED;
-- 2 CORRECTED: replaced a different record of the same time; 3 OUT_OF_ORDER: inserted before a later one); the
-- tail of the merged sequence the features need, as stored (no header): from the last record at or before the
-- latest observation minus ARGV[7], and from the record before the earliest one that changed (so a counter's
-- decrease shows), or the whole sequence when READ_META finds no created_at (its first observation stands in for
-- the upload time); the number of stored records before the tail; the values of ARGV[4]'s fields on READ_META or
-- nil; and the hash's predicted_to or nil. predicted_to (written by record_predictions.lua) is read only when no
-- record changed the sequence, i.e. on redelivery, so that a post whose prediction was lost in a crash is scored
-- again.
-- Cost: no command here copies the whole sequence on the usual path (newer records: APPEND; the reply: GETRANGE
-- of the last records), so it does not grow with the number stored. An older record is found by a binary search
-- of 4-byte GETRANGEs; a correction is a SETRANGE in place, an insertion rewrites only the records after it.
local header, width, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local meta_fields = cjson.decode(ARGV[4])
local meta_ttl, meta_actions, lookback = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local hlen = #header
local first_read = 32  -- records read for the tail at first; four times as many until the look-back is covered
local out = {}
local a = 8

local function time_of(bytes, at)  -- the big-endian uint32 at position `at` (default 1) of `bytes`, a number
  return (struct.unpack('>I4', bytes, at))
end

local function time_at(key, index)  -- a stored record's observed_at
  local off = hlen + index * width
  return time_of(redis.call('GETRANGE', key, off, off + 3))
end

-- The index of the last stored record at or before the time `cutoff` (epoch seconds), 0 if none; and the last
-- records read to find it, from index `from`.
local function last_at_or_before(key, n, cutoff)
  local k = first_read
  while true do
    local from = math.max(0, n - k)
    local block = redis.call('GETRANGE', key, hlen + from * width, -1)
    local lo, hi = 0, n - from  -- the first record of the block later than cutoff
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if time_of(block, mid * width + 1) <= cutoff then lo = mid + 1 else hi = mid end
    end
    if lo > 0 or from == 0 then return from + math.max(lo - 1, 0), block, from end
    k = k * 4
  end
end

for p = 1, #KEYS, 2 do
  local key, meta_key = KEYS[p], KEYS[p + 1]
  local len = redis.call('STRLEN', key)  -- 0: no sequence yet
  local n = (len > 0) and (len - hlen) / width or 0
  local last = (n > 0) and time_at(key, n - 1) or nil  -- the latest observed_at, stored or pending
  local pending = {}  -- newer records, APPENDed together
  local statuses = {}
  local changed, earliest = false, nil  -- earliest: the index of the earliest record that changed
  local function flush()
    if #pending == 0 then return end
    redis.call('APPEND', key, ((len == 0 and n == 0) and header or '') .. table.concat(pending))
    n = n + #pending
    pending = {}
  end
  local records = ARGV[a]
  for start = 1, #records, width do
    local rec = string.sub(records, start, start + width - 1)
    local t = time_of(rec)
    if last == nil or last < t then
      pending[#pending + 1] = rec  -- the usual case, a newer snapshot
      earliest = earliest or (n + #pending - 1)
      last = t
      statuses[#statuses + 1] = 1
      changed = true
    else
      flush()
      local lo, hi = 0, n
      while lo < hi do
        local mid = math.floor((lo + hi) / 2)
        if time_at(key, mid) < t then lo = mid + 1 else hi = mid end
      end
      local off = hlen + lo * width  -- lo < n: t is at or before the latest stored
      local found = redis.call('GETRANGE', key, off, off + width - 1)
      if time_of(found) == t then
        if found == rec then
          statuses[#statuses + 1] = 0
        else
          redis.call('SETRANGE', key, off, rec)
          statuses[#statuses + 1] = 2
          changed = true
          earliest = math.min(earliest or lo, lo)
        end
      else
        redis.call('SETRANGE', key, off, rec .. redis.call('GETRANGE', key, off, -1))
        n = n + 1
        statuses[#statuses + 1] = 3
        changed = true
        earliest = math.min(earliest or lo, lo)  -- the records from lo on moved one up
      end
    end
  end
  flush()
  a = a + 1
  if changed then redis.call('EXPIRE', key, ttl) end
  local action = string.byte(meta_actions, (p + 1) / 2)  -- 48 KEEP_META, 49 READ_META, 50 REFRESH_TTL
  if action ~= 48 then redis.call('EXPIRE', meta_key, meta_ttl) end
  local meta = (action == 49) and redis.call('HMGET', meta_key, unpack(meta_fields)) or false
  local tail, start = '', 0
  if n > 0 then
    local from, block
    start, block, from = last_at_or_before(key, n, math.max(last - lookback, 0))
    if earliest then start = math.min(start, math.max(earliest - 1, 0)) end
    if meta and not meta[1] then start = 0 end  -- no post event: its first observation stands in for the upload
    if start >= from then
      tail = string.sub(block, (start - from) * width + 1)
    else
      tail = redis.call('GETRANGE', key, hlen + start * width, -1)
    end
  end
  out[#out + 1] = statuses
  out[#out + 1] = tail
  out[#out + 1] = start
  out[#out + 1] = meta
  out[#out + 1] = (not changed) and redis.call('HGET', meta_key, 'predicted_to') or false
end
return out
