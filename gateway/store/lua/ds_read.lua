-- Durable Streams: a stream's metadata and, for reads, its own messages after a position.
-- KEYS: 1 meta hash, 2 log stream, 3 producers hash, 4 forks set
-- ARGV: 1 mode ("head": metadata only, the TTL is not renewed; "tail": metadata, renews the
--       TTL; "read": also messages), 2 read after this message number, 3 at most this many
--       messages, 4 stop once this many bytes were collected (always at least one message)
-- Returns {status, {meta field, value, ...}, {n, b, data, ...}}; status "ok", "notfound" or
-- "gone" (soft-deleted). Messages come from this stream's own log only (numbers above its
-- fork base "fo_n"); a fork's inherited messages are read from its ancestors' logs.
local meta, log, producers, forks = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local flat = redis.call('HGETALL', meta)
local m = {}
for i = 1, #flat, 2 do m[flat[i]] = flat[i + 1] end
if not m.gen then return {'notfound', {}, {}} end
if m.sd == '1' then return {'gone', {}, {}} end
local now = now_ms()
local expired = (m.eam and now >= tonumber(m.eam))
  or (m.ttl and m.la and now >= tonumber(m.la) + tonumber(m.ttl) * 1000)
local has_forks = redis.call('EXISTS', forks) == 1
if expired then
  if has_forks then
    redis.call('HSET', meta, 'sd', '1')
    return {'gone', {}, {}}
  end
  redis.call('DEL', meta, log, producers)
  return {'notfound', {}, {}}
end

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
    local budget = tonumber(ARGV[4])
    local entries = redis.call('XRANGE', log, (after + 1) .. '-0', '+', 'COUNT', tonumber(ARGV[3]))
    for _, e in ipairs(entries) do
      local f = e[2]
      local d, eb
      for i = 1, #f, 2 do
        if f[i] == 'd' then d = f[i + 1] elseif f[i] == 'b' then eb = f[i + 1] end
      end
      if #out > 0 and budget < #d then break end
      out[#out + 1] = string.match(e[1], '^(%d+)')
      out[#out + 1] = eb
      out[#out + 1] = d
      budget = budget - #d
    end
  end
end
return {'ok', flat, out}
