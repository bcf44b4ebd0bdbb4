-- Store a folded snapshot only if it is newer than the stored one. KEYS: 1 snapshot hash,
-- 2 meta hash. ARGV: 1 offset "<epoch>_<seq>", 2 state JSON.
-- A slow reader that folded from an old position must not overwrite a newer snapshot
-- (compaction may already have trimmed the events that one summarises), and a snapshot of
-- a log that was since re-created (another epoch) is not stored at all.
-- Returns 1 when stored, 0 when the stored one is as new or newer, or the epoch is stale.
local epoch, seq = string.match(ARGV[1], '^(%x+)_(%d+)$')
if redis.call('HGET', KEYS[2], 'epoch') ~= epoch then return 0 end
local stored = redis.call('HGET', KEYS[1], 'offset')
if stored then
  local e, s = string.match(stored, '^(%x+)_(%d+)$')
  if e == epoch and tonumber(s) >= tonumber(seq) then return 0 end
end
redis.call('HSET', KEYS[1], 'offset', ARGV[1], 'state', ARGV[2])
return 1
