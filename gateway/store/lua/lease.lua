-- Run leases with fencing tokens. KEYS: 1 meta hash, 2 lease key.
-- ARGV: 1 op, 2 run_id, 3 holder, 4 ttl ms, 5 fencing token (renew, release, handback).
--
-- acquire: only while the run is the session's active run and no worker holds it (the
--   gateway's "queued" lease is taken over; a holder may re-acquire its own). Increments
--   the session's fencing token and returns it (0: refused). The publish script refuses
--   a worker's events once its token is no longer the current one.
-- renew: only while the token is current, the run active and the holder unchanged. The lease
--   key is set again even if it expired meanwhile (Redis was unreachable): nobody else can
--   hold the run while the token is current, and a reaper that ended it first made the
--   token useless. Returns 1, or 0 when the lease is lost.
-- release: deletes the lease if the token is still current (the run stays active and is
--   ended by a reaper unless its terminal was published). Returns 1 or 0.
-- handback: a draining worker gives the run back: a new token (the old one is dead), holder
--   "queued" with a lease of ttl ms (the pickup timeout), so another worker takes it over.
--   Returns the new token, or 0 when the worker had already lost the run.
local op, run, holder = ARGV[1], ARGV[2], ARGV[3]
local meta, lease = KEYS[1], KEYS[2]
local flat = redis.call('HMGET', meta, 'status', 'run_id', 'fence', 'run_holder')
local status, current, fence, cur = flat[1], flat[2], flat[3] or '0', flat[4]
if status ~= 'running' or current ~= run then return 0 end
if op == 'acquire' then
  if cur and cur ~= 'queued' and cur ~= holder then return 0 end
  local token = redis.call('HINCRBY', meta, 'fence', 1)
  redis.call('SET', lease, holder, 'PX', ARGV[4])
  redis.call('HSET', meta, 'run_holder', holder)
  redis.call('HDEL', meta, 'queued_ms', 'requeued_ms')
  return token
end
if fence ~= ARGV[5] or cur ~= holder then return 0 end
if op == 'renew' then
  redis.call('SET', lease, holder, 'PX', ARGV[4])
  return 1
end
if op == 'release' then
  redis.call('DEL', lease)
  return 1
end
if op == 'handback' then
  local token = redis.call('HINCRBY', meta, 'fence', 1)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('SET', lease, 'queued', 'PX', ARGV[4])
  redis.call('HSET', meta, 'run_holder', 'queued', 'queued_ms', now)
  redis.call('HDEL', meta, 'requeued_ms')
  return token
end
return redis.error_reply('unknown lease op ' .. op)
