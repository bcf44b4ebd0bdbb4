-- Durable Streams: a stream's metadata and, for reads, its own messages after a position.
-- KEYS: 1 meta hash, 2 log stream, 3 producers hash, 4 forks set
-- ARGV: 1 mode ("head": metadata only, the TTL is not renewed; "tail": metadata, renews the
--       TTL; "read": also messages), 2 read after this message number, 3 at most this many
--       messages, 4 stop once this many bytes were collected (always at least one message)
-- Returns {status, {meta field, value, ...}, {n, b, data, ...}}; status "ok", "notfound" or
-- "gone" (soft-deleted). Messages come from this stream's own log only (numbers above its
-- fork base "fo_n"); a fork's inherited messages are read from its ancestors' logs.
local meta, log, producers, forks = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
-- @include ds_common.lua

local m, flat = load(meta)
local now = now_ms()
local st = state(m, now)
if st == 'none' then return {'notfound', {}, {}} end
if st == 'gone' then return {'gone', {}, {}} end
local has_forks = redis.call('EXISTS', forks) == 1

local mode = ARGV[1]
if mode ~= 'head' and m.ttl then
  -- A read renews the sliding TTL (HEAD does not).
  redis.call('HSET', meta, 'la', now)
  if not has_forks then
    local ms = tonumber(m.ttl) * 1000
    redis.call('PEXPIRE', meta, ms)
    redis.call('PEXPIRE', log, ms)
    redis.call('PEXPIRE', producers, ms)
  end
end

local out = {}
if mode == 'read' then
  local after = math.max(tonumber(ARGV[2]), tonumber(m.fo_n))
  if after < tonumber(m.n) then
    local entries = redis.call('XRANGE', log, (after + 1) .. '-0', '+', 'COUNT', tonumber(ARGV[3]))
    out = collect(entries, tonumber(ARGV[4]))
  end
end
return {'ok', flat, out}
