-- Create a session's log metadata if absent. KEYS: 1 meta, 2 log, 3 approvals.
-- ARGV: 1 epoch candidate. Returns {epoch, seq, created (1/0)}.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch then
  return {epoch, redis.call('HGET', KEYS[1], 'seq'), 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'seq', 0, 'status', 'idle',
  'created_ms', now, 'updated_ms', now)
return {ARGV[1], '0', 1}
