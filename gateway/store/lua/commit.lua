-- Move a consumer's stored offset. KEYS: 1 connection hash.
-- ARGV: 1 offset, 2 ttl ms, 3 mode: "forward" (only if newer within the same epoch)
-- or "set" (unconditional, used for Last-Event-ID), 4 attach token ("" = keep),
-- 5 owner: the token subject that must own the connection ("*" = do not check).
-- Returns the stored offset, or false when the connection does not exist (or, to a caller
-- that does not own it, looks as if it did not).
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if ARGV[5] ~= '*' and (redis.call('HGET', KEYS[1], 'sub') or '') ~= ARGV[5] then
  return false
end
local cur = redis.call('HGET', KEYS[1], 'offset')
local new = ARGV[1]
if ARGV[3] == 'forward' and cur and string.sub(cur, 1, 8) == string.sub(new, 1, 8)
    and cur >= new then
  new = cur
end
redis.call('HSET', KEYS[1], 'offset', new)
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'token', ARGV[4]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return new
