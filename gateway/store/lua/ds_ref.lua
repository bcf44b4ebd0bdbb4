-- Durable Streams: take a fork's reference on its source stream (PUT with Stream-Forked-From).
-- KEYS: 1 meta hash, 2 log stream, 3 producers hash, 4 forks set (of the source)
-- ARGV: 1 the fork's path, 2 the fork's normalized content type ('' = inherit),
--       3 fork point message number ('' = the source's tail), 4 fork point byte position
-- Returns {status, {meta field, value, ...}, fork n, fork b (-1: the message is inherited,
-- look it up in the ancestors)}. Statuses: "ok", "notfound", "gone" (soft-deleted),
-- "ct_mismatch", "bad_offset" (beyond the tail). Nothing is changed unless "ok"; then the
-- fork is a member of the forks set (the reference count) and the source's keys no longer
-- expire: its expiry is enforced lazily, and re-armed when its last fork goes.
local meta, log, producers, forks = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local flat = redis.call('HGETALL', meta)
local m = {}
for i = 1, #flat, 2 do m[flat[i]] = flat[i + 1] end
if not m.gen then return {'notfound', {}, 0, 0} end
if m.sd == '1' then return {'gone', {}, 0, 0} end
local expired = (m.eam and now >= tonumber(m.eam))
  or (m.ttl and m.la and now >= tonumber(m.la) + tonumber(m.ttl) * 1000)
if expired then
  if redis.call('SCARD', forks) > 0 then
    redis.call('HSET', meta, 'sd', '1')
    return {'gone', {}, 0, 0}
  end
  redis.call('DEL', meta, log, producers)
  return {'notfound', {}, 0, 0}
end
if ARGV[2] ~= '' and ARGV[2] ~= m.nct then return {'ct_mismatch', {}, 0, 0} end

local tail_n, tail_b = tonumber(m.n), tonumber(m.b)
local n, b
if ARGV[3] == '' then
  n, b = tail_n, tail_b
else
  n = tonumber(ARGV[3])
  if n > tail_n or (n == tail_n and tonumber(ARGV[4]) > tail_b) then
    return {'bad_offset', {}, 0, 0}
  end
  if n == tail_n then
    b = tail_b
  elseif n == 0 then
    b = 0
  elseif n > tonumber(m.fo_n) then
    local e = redis.call('XRANGE', log, n .. '-0', n .. '-0')
    local f = e[1][2]
    for i = 1, #f, 2 do
      if f[i] == 'b' then b = tonumber(f[i + 1]) end
    end
  elseif n == tonumber(m.fo_n) then
    b = tonumber(string.match(m.fo, '_0*(%d+)$'))
  else
    b = -1
  end
end
redis.call('SADD', forks, ARGV[1])
redis.call('PERSIST', meta)
redis.call('PERSIST', log)
redis.call('PERSIST', producers)
return {'ok', flat, n, b}
