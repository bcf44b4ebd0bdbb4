-- Run leases. KEYS: 1 meta hash, 2 lease key.
-- ARGV: 1 op ("acquire", "renew", "release"), 2 run_id, 3 holder, 4 ttl ms.
-- acquire: only while the run is the session's active run and no other worker has held it
--   (the gateway's "queued" lease may be taken over); records the holder, so the reaper may
--   end the run once the lease expires and no other worker replays it.
-- renew/release: only by the current holder.
-- Returns 1 on success, 0 otherwise.
local op, run, holder = ARGV[1], ARGV[2], ARGV[3]
if op == 'acquire' then
  if redis.call('HGET', KEYS[1], 'status') ~= 'running'
      or redis.call('HGET', KEYS[1], 'run_id') ~= run then
    return 0
  end
  local cur = redis.call('HGET', KEYS[1], 'run_holder')
  if cur and cur ~= 'queued' and cur ~= holder then return 0 end
  redis.call('SET', KEYS[2], holder, 'PX', ARGV[4])
  redis.call('HSET', KEYS[1], 'run_holder', holder)
  return 1
end
if redis.call('GET', KEYS[2]) ~= holder then return 0 end
if op == 'renew' then
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
else
  redis.call('DEL', KEYS[2])
end
return 1
