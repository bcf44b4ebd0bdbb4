-- Record a session status change in the global activity feed and notify live readers.
-- KEYS: 1 sessions index (sorted set), 2 activity stream, 3 running sessions (sorted set).
-- ARGV: 1 session id, 2 payload JSON, 3 channel, 4 maxlen, 5 publish command,
--       6 "running" / "idle" / "" (status unchanged): keeps the running index for the reaper.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
if ARGV[6] == 'running' then
  redis.call('ZADD', KEYS[3], now, ARGV[1])
elseif ARGV[6] == 'idle' then
  redis.call('ZREM', KEYS[3], ARGV[1])
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'p', ARGV[2])
redis.call(ARGV[5], ARGV[3], id .. '\t' .. ARGV[2])
return id
