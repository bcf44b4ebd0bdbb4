-- Durable Streams: delete a stream (DELETE).
-- KEYS: 1 meta hash, 2 log stream, 3 producers hash, 4 forks set
-- ARGV: 1 live channel, 2 publish command
-- Returns {status, forked-from path}. Statuses: "notfound", "gone" (already soft-deleted),
-- "soft" (forks still read its log: it answers 410 until the last fork goes), "deleted"
-- (the caller then drops the reference this stream held on its source, if it is a fork).
-- Live readers get an "x" frame and end.
local meta, log, producers, forks = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

local flat = redis.call('HGETALL', meta)
local m = {}
for i = 1, #flat, 2 do m[flat[i]] = flat[i + 1] end
if not m.gen then return {'notfound', ''} end
if m.sd == '1' then return {'gone', ''} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = (m.eam and now >= tonumber(m.eam))
  or (m.ttl and m.la and now >= tonumber(m.la) + tonumber(m.ttl) * 1000)
local frame = 'D\t' .. m.gen .. '\t0\t0\t0\t0\tx\n'
if redis.call('SCARD', forks) > 0 then
  redis.call('HSET', meta, 'sd', '1')
  redis.call(ARGV[2], ARGV[1], frame)
  if expired then return {'gone', ''} end
  return {'soft', ''}
end
redis.call('DEL', meta, log, producers)
redis.call(ARGV[2], ARGV[1], frame)
if expired then return {'notfound', m.src or ''} end
return {'deleted', m.src or ''}
