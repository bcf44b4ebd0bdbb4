-- Record a session status change in the global activity feed and notify live readers with
-- an "A\t<stream id>\t<payload>" frame (gateway/core/frames.py).
-- KEYS: 1 sessions index (sorted set), 2 activity stream.
-- ARGV: 1 session id, 2 payload JSON, 3 channel, 4 maxlen, 5 publish command.
-- (The reapers' index of running sessions is kept apart, by running.lua: this feed is
-- written after the publish, so its order across two publishers is not the log's order.)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'p', ARGV[2])
redis.call(ARGV[5], ARGV[3], 'A\t' .. id .. '\t' .. ARGV[2])
return id
