-- Durable Streams: drop a fork's reference on its source (the fork was deleted, expired, or
-- its creation failed after the reference was taken).
-- KEYS: 1 meta hash, 2 log stream, 3 producers hash, 4 forks set (of the source)
-- ARGV: 1 the fork's path, 2 live channel, 3 publish command
-- Returns {"kept"} or {"deleted", forked-from path ('' = not a fork)}: a soft-deleted source
-- whose last fork went is deleted now (the caller then drops its reference on its own source,
-- cascading up the chain); an expired one too; otherwise its expiry is armed again.
local meta, log, producers, forks = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

redis.call('SREM', forks, ARGV[1])
if redis.call('SCARD', forks) > 0 then return {'kept'} end
local flat = redis.call('HGETALL', meta)
local m = {}
for i = 1, #flat, 2 do m[flat[i]] = flat[i + 1] end
if not m.gen then return {'kept'} end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local left
if m.ttl and m.la then
  left = tonumber(m.la) + tonumber(m.ttl) * 1000 - now
elseif m.eam then
  left = tonumber(m.eam) - now
end
if m.sd == '1' or (left and left <= 0) then
  redis.call('DEL', meta, log, producers, forks)
  redis.call(ARGV[3], ARGV[2], 'D\t' .. m.gen .. '\t0\t0\t0\t0\tx\n')
  return {'deleted', m.src or ''}
end
if left then
  redis.call('PEXPIRE', meta, left)
  redis.call('PEXPIRE', log, left)
  redis.call('PEXPIRE', producers, left)
end
return {'kept'}
