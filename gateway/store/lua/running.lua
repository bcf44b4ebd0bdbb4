-- The index of sessions that may have an active run, read by the lease reapers.
-- KEYS: 1 running sorted set, 2 its counter. ARGV: 1 op ("mark" | "forget"), 2 session id,
-- 3 (forget) the score the reaper read.
-- mark: before a run.started is published; the score is a counter, unique per mark.
-- forget: drop the session only if nobody marked it again since the reaper read its score
--   (a run that started meanwhile keeps its entry). Returns 1 when removed.
-- The index is a superset: a session is marked before its run starts and forgotten only by a
-- reaper that saw it idle, so no running session is ever missing from it.
if ARGV[1] == 'mark' then
  local n = redis.call('INCR', KEYS[2])
  redis.call('ZADD', KEYS[1], n, ARGV[2])
  return n
end
if redis.call('ZSCORE', KEYS[1], ARGV[2]) == ARGV[3] then
  redis.call('ZREM', KEYS[1], ARGV[2])
  return 1
end
return 0
