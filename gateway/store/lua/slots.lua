-- Open or close one of a token subject's stream slots. KEYS: 1 the subject's slots zset.
-- ARGV: 1 "open" | "close", 2 slot id, 3 limit (open streams kept), 4 max age ms (entries
-- of streams that ended without closing, e.g. a crashed replica, are dropped after it),
-- 5 control channel, 6 publish command (PUBLISH or SPUBLISH).
-- "open" registers the slot and evicts the oldest beyond the limit: each gets an "X\t<slot>"
-- frame on the channel, which ends its stream wherever it runs. Returns the evicted count.
local key = KEYS[1]
if ARGV[1] == 'close' then
  redis.call('ZREM', key, ARGV[2])
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - tonumber(ARGV[4]))
redis.call('ZADD', key, now, ARGV[2])
redis.call('PEXPIRE', key, ARGV[4])
local n = redis.call('ZCARD', key)
if n <= limit then return 0 end
local victims = redis.call('ZRANGE', key, 0, n - limit - 1)
for _, v in ipairs(victims) do
  redis.call('ZREM', key, v)
  redis.call(ARGV[6], ARGV[5], 'X\t' .. v)
end
return #victims
