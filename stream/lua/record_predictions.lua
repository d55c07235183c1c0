-- What a batch of predictions of one shard's posts leaves in Redis, in one call: the shard's leaderboards, each
-- post's latest prediction and predicted_to mark, the predictions kept for online accuracy, and the posts'
-- maturity times.
--
-- Caller: Leaderboards.record (stream/leaderboard.py), through redis_schema.record_predictions_call, which builds
-- KEYS and ARGV. The worker calls it only once the predictions are in Kafka, so a predicted_to mark never claims a
-- lost prediction. Every key it touches is in KEYS, all under the shard's hash tag (one Redis Cluster slot).
--
-- KEYS, for a call of n predictions (i = 1..n) that may enter m platform and category boards (j = 1..m):
--   KEYS[1]      <tag>maturity, the shard's maturity set
--   KEYS[2]      <tag>boards, the shard's registry of the boards written: board name -> last write
--   KEYS[3]      <tag>boards:categories, the shard's category boards: category -> last write
--   KEYS[4]      <tag>boards:platforms, the shard's boards of unknown platforms: platform -> last write
--   KEYS[5]      <tag>lb:top, the shard's overall board
--   KEYS[6]      <tag>lb:rising, the shard's "rising fastest" board
--   KEYS[7]      <tag>lb:top:platform:other, where unknown platforms beyond ARGV[7] are ranked
--   KEYS[7+i]    <tag>post:<post_id> of prediction i (ARGV[4]'s row i)
--   KEYS[7+n+j]  <tag>lb:<name> for the j-th name of ARGV[9]
-- ARGV:
--   ARGV[1]  the TTL, seconds, of a post hash this call creates (the merge or the post event gives the others
--            theirs)
--   ARGV[2]  the board size: each board keeps its best ARGV[2] members
--   ARGV[3]  the model kind, 'static' or 'temporal'; only temporal predictions enter the boards and set
--            predicted_to
--   ARGV[4]  the predictions, one JSON array of rows [post_id, score, rising, platform, category ('' for none),
--            latest view (JSON text), maturity time, [[kept eval field, value], ...], as_of, known (1: the
--            platform is one the deployment knows, its board is not counted)] (one argument,
--            not eight or more per prediction: redis-py's packing costs per argument)
--   ARGV[5]  the boards' TTL, seconds: every board written (and KEYS[3], KEYS[4]) expires this long after
--   ARGV[6]  category boards at most: a category not in KEYS[3] enters it only while it has fewer members (the
--            caller has already blanked the categories outside its allow-list)
--   ARGV[7]  boards of unknown platforms at most (rows whose "known" flag is 0), likewise with KEYS[4]; a
--            prediction of an unknown platform beyond them enters KEYS[7]
--   ARGV[8]  now, epoch seconds: the registries' scores; entries older than ARGV[5] are dropped (their board
--            expired)
--   ARGV[9]  the names (top:platform:<p>, top:category:<c>) of the boards KEYS[7+n+1..] are, a JSON array: the
--            board of every platform and category among the rows, whether or not the call admits it
-- Writes: the boards top, top:platform:<platform>, top:category:<category> (score) and rising (rising), each
-- given the TTL ARGV[5]; KEYS[3] (category -> now) and KEYS[4] (unknown platform -> now) for each such board
-- written; KEYS[2] (board name -> now for every board written, the entries older than the boards' TTL dropped,
-- the same TTL: the boards that exist, listed by GET /boards); post hash fields prediction:<kind> (the latest
-- view), predicted_to (as_of, temporal only) and each kept eval field once (HSETNX: the first prediction at that
-- age); ZADD NX of each post at its maturity time in KEYS[1].
-- Returns the number of rows not recorded as their post's latest (temporal only; 0 for static).
--
-- Latest means latest observation, not latest call: a temporal row whose as_of (ARGV[4]'s 9th item) is earlier
-- than its post's predicted_to was made from an older sequence than a prediction already recorded (a re-score,
-- such as a media retry, read the sequence, then a newer snapshot was scored and recorded first). Such a row is
-- left out of the boards and does not replace prediction:temporal or predicted_to; its kept eval fields and
-- maturity are still written (both first-write-wins, so nothing recorded is replaced). A row of the same as_of
-- replaces the recorded one (a re-score of the same observation: the media retry's, the without_post one's). The
-- prediction itself is already in Kafka (the caller records after delivery), with its as_of: consumers keeping a
-- post's latest order by as_of, then produced_at.
--
-- A board is written per call, not per prediction: its members among the call's posts are updated (one
-- ZMSCORE, one ZADD), then newcomers are added only if they reach the board's floor, the ARGV[2]-th best score
-- after those updates; a newcomer below it would be trimmed at once. The board ends exactly as "add every
-- prediction, keep the best ARGV[2]" would leave it, without inserting and trimming the predictions that never
-- make a board. ZADD takes at most ~7,900 arguments from Lua (its C stack): a call must carry fewer than 3,900
-- predictions.
local ttl, size, kind = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local rows = cjson.decode(ARGV[4])
local board_ttl, max_categories, max_platforms, now = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]),
  tonumber(ARGV[8])
local maturity, written, category_names, platform_names = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local board_keys = {top = KEYS[5], rising = KEYS[6], ['top:platform:other'] = KEYS[7]}
local n = #rows
for j, name in ipairs(cjson.decode(ARGV[9])) do board_keys[name] = KEYS[7 + n + j] end

local function write_board(board, posts, scores)
  local key = board_keys[board]
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

-- Rows older than their post's recorded latest (see above): neither boards nor latest view.
local stale, n_stale = {}, 0
if kind == 'temporal' then
  for i, row in ipairs(rows) do
    local recorded = redis.call('HGET', KEYS[7 + i], 'predicted_to')
    if recorded and tonumber(recorded) > tonumber(row[9]) then
      stale[i] = true
      n_stale = n_stale + 1
    end
  end
end

if kind == 'temporal' and n_stale < n then
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
  -- Which categories and unknown platforms have a board: those in their registry whose board has not expired,
  -- then newcomers while there is room. Producers choose these strings, so their number is bounded here.
  local function registry(key, limit)
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - board_ttl)
    local self = {key = key, admitted = {}, count = redis.call('ZCARD', key), touched = false}
    function self.has_board(value)
      local known = self.admitted[value]
      if known == nil then
        known = redis.call('ZSCORE', key, value) ~= false
        if not known and self.count < limit then
          known, self.count = true, self.count + 1
        end
        self.admitted[value] = known
        if known then
          redis.call('ZADD', key, now, value)
          self.touched = true
        end
      end
      return known
    end
    return self
  end
  local categories, platforms = registry(category_names, max_categories), registry(platform_names, max_platforms)
  for i, row in ipairs(rows) do
    local post, score, rising, platform, category, known = row[1], row[2], row[3], row[4], row[5], row[10]
    if not stale[i] then
      enter('top', post, score)
      if known == 1 or platforms.has_board(platform) then
        enter('top:platform:' .. platform, post, score)
      else
        enter('top:platform:other', post, score)
      end
      if category ~= '' and categories.has_board(category) then enter('top:category:' .. category, post, score) end
      enter('rising', post, rising)
    end
  end
  for _, board in ipairs(order) do
    write_board(board, boards[board].posts, boards[board].scores)
    redis.call('EXPIRE', board_keys[board], board_ttl)
  end
  for _, names in ipairs({categories, platforms}) do
    if names.touched then redis.call('EXPIRE', names.key, board_ttl) end
  end
  redis.call('ZREMRANGEBYSCORE', written, '-inf', now - board_ttl)
  for _, board in ipairs(order) do redis.call('ZADD', written, now, board) end
  redis.call('EXPIRE', written, board_ttl)
end

local due = {}
for i, row in ipairs(rows) do
  local post, latest, kept = row[1], row[6], row[8]
  local post_key = KEYS[7 + i]
  -- The hash has its TTL from the merge or the post event just before; a hash this creates needs one.
  -- A stale row's hash exists (it holds the newer predicted_to), and its latest view is not replaced.
  local created = false
  if kind == 'temporal' and not stale[i] then
    created = redis.call('HSET', post_key, 'prediction:temporal', latest, 'predicted_to', row[9]) == 2
  elseif kind ~= 'temporal' then
    created = redis.call('HSET', post_key, 'prediction:' .. kind, latest) == 1
  end
  if created then redis.call('EXPIRE', post_key, ttl) end
  for _, pair in ipairs(kept) do
    redis.call('HSETNX', post_key, pair[1], pair[2])
  end
  due[#due + 1] = row[7]
  due[#due + 1] = post
end
redis.call('ZADD', maturity, 'NX', unpack(due))
return n_stale
