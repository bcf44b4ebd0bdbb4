-- Durable Streams: append a message and/or close the stream (POST), atomically.
-- KEYS: 1 meta hash, 2 log stream, 3 producers hash, 4 forks set
-- ARGV: 1 op ("append" | "close": close-only, no data), 2 data, 3 normalized content type
--       of the request ('' = not checked), 4 close "1"/"0", 5 Stream-Seq ('' none),
--       6 producer id ('' none), 7 producer epoch, 8 producer seq,
--       9 deferred body error ('' | "invalid_json" | "empty_array"), reported after the
--       checks that come first in the protocol (closed, content type, producer, Stream-Seq),
--       10 live channel, 11 publish command (PUBLISH | SPUBLISH),
--       12 live payload kind ("t": the data is UTF-8 text, "b": ARGV[13] is its base64,
--       "-": readers fetch it), 13 base64 payload
-- Returns {status, n, b, closed, x, y}. Statuses: "ok" (x = stream was already closed by
-- this close-only request), "notfound", "gone", "closed" (409), "dup_closed" (y = seq),
-- "ct_mismatch", "stale_epoch" (x = current epoch), "bad_epoch_seq", "seq_gap"
-- (x = expected, y = received), "dup" (y = highest accepted seq), "seq_conflict",
-- "invalid_json", "empty_array".
--
-- Producer state (Kafka-style idempotent producer): producers[id] = "epoch seq updated_ms",
-- forgotten after 7 days of silence. A live frame "D\t<gen>\t<prev n>\t<n>\t<b>\t<closed>\t
-- <kind>\n<payload>" announces every change to the readers subscribed to the channel.
local meta, log, producers, forks = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
-- @include ds_common.lua
local PRODUCER_TTL_MS = 7 * 24 * 3600 * 1000

-- Byte-wise a <= b (Lua's own comparison follows the server's locale).
local function bytes_le(a, b)
  local la, lb = #a, #b
  for i = 1, math.min(la, lb) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return la <= lb
end

local now = now_ms()
local m = load(meta)
local st = state(m, now)
if st == 'none' then return {'notfound', 0, 0, '0', 0, 0} end
if st == 'gone' then return {'gone', 0, 0, '0', 0, 0} end
local n, b = tonumber(m.n), tonumber(m.b)
local op, data, close = ARGV[1], ARGV[2], ARGV[4] == '1'
local pid, epoch, pseq = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])

if m.cl == '1' then
  if pid ~= '' and m.cb == pid .. '\n' .. ARGV[7] .. '\n' .. ARGV[8] then
    return {'dup_closed', n, b, '1', 0, pseq}
  end
  if op == 'close' and pid == '' then return {'ok', n, b, '1', 1, 0} end
  return {'closed', n, b, '1', 0, 0}
end
if op == 'append' and ARGV[3] ~= '' and ARGV[3] ~= m.nct then
  return {'ct_mismatch', n, b, '0', 0, 0}
end

if pid ~= '' then
  local raw = redis.call('HGET', producers, pid)
  local cur_epoch, last, updated
  if raw then
    local e, s, u = string.match(raw, '^(%d+) (%d+) (%d+)$')
    cur_epoch, last, updated = tonumber(e), tonumber(s), tonumber(u)
    if now - updated > PRODUCER_TTL_MS then raw = nil end
  end
  if not raw then
    if pseq ~= 0 then return {'seq_gap', n, b, '0', 0, pseq} end
  elseif epoch < cur_epoch then
    return {'stale_epoch', n, b, '0', cur_epoch, 0}
  elseif epoch > cur_epoch then
    if pseq ~= 0 then return {'bad_epoch_seq', n, b, '0', 0, 0} end
  elseif pseq <= last then
    return {'dup', n, b, '0', 0, last}
  elseif pseq ~= last + 1 then
    return {'seq_gap', n, b, '0', last + 1, pseq}
  end
end

local sseq = ARGV[5]
if op == 'append' and sseq ~= '' and m.ss and bytes_le(sseq, m.ss) then
  return {'seq_conflict', n, b, '0', 0, 0}
end
if ARGV[9] ~= '' then return {ARGV[9], n, b, '0', 0, 0} end

-- Every check passed: write.
local prev = n
local fields = {'la', now}
if op == 'append' then
  n = n + 1
  b = b + #data
  redis.call('XADD', log, n .. '-0', 'd', data, 'b', b)
  fields[#fields + 1] = 'n'
  fields[#fields + 1] = n
  fields[#fields + 1] = 'b'
  fields[#fields + 1] = b
  if sseq ~= '' then
    fields[#fields + 1] = 'ss'
    fields[#fields + 1] = sseq
  end
end
if pid ~= '' then
  redis.call('HSET', producers, pid, ARGV[7] .. ' ' .. ARGV[8] .. ' ' .. now)
end
if close then
  fields[#fields + 1] = 'cl'
  fields[#fields + 1] = '1'
  if pid ~= '' then
    fields[#fields + 1] = 'cb'
    fields[#fields + 1] = pid .. '\n' .. ARGV[7] .. '\n' .. ARGV[8]
  end
end
redis.call('HSET', meta, unpack(fields))

-- Expiry: a sliding TTL restarts on every write; nothing expires while forks read this log.
if redis.call('EXISTS', forks) == 0 then
  if m.ttl then
    local ms = tonumber(m.ttl) * 1000
    redis.call('PEXPIRE', meta, ms)
    redis.call('PEXPIRE', log, ms)
    redis.call('PEXPIRE', producers, ms)
  elseif m.eam then
    redis.call('PEXPIREAT', meta, m.eam)
    redis.call('PEXPIREAT', log, m.eam)
    redis.call('PEXPIREAT', producers, m.eam)
  end
end

local closed = close and '1' or '0'
local head = 'D\t' .. m.gen .. '\t' .. prev .. '\t' .. n .. '\t' .. b .. '\t' .. closed .. '\t'
if op == 'close' then
  redis.call(ARGV[11], ARGV[10], head .. 'c\n')
elseif ARGV[12] == 't' then
  redis.call(ARGV[11], ARGV[10], head .. 't\n' .. data)
elseif ARGV[12] == 'b' then
  redis.call(ARGV[11], ARGV[10], head .. 'b\n' .. ARGV[13])
else
  redis.call(ARGV[11], ARGV[10], head .. '-\n')
end
return {'ok', n, b, closed, 0, 0}
