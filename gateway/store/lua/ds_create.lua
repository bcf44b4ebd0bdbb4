-- Durable Streams: create a stream (PUT), or compare an existing one's configuration.
-- KEYS: 1 meta hash, 2 log stream, 3 producers hash, 4 forks set
-- ARGV: 1 mode ("probe": only compare, "create"), 2 generation id, 3 content type as given,
--       4 normalized content type to compare ('' = inherit, not compared),
--       5 requested TTL ('' none), 6 requested Expires-At text ('' none),
--       7 effective TTL seconds ('' none), 8 effective Expires-At ms ('' none),
--       9 effective Expires-At text, 10 closed "1"/"0", 11 forked-from path ('' = not a fork),
--       12 requested fork offset ('' = not given), 13 sub-offset ("0" = none),
--       14 base message number, 15 base byte position, 16 resolved fork offset text,
--       17 ancestry JSON, 18 sub-offset prefix data ('' none), 19 initial data ('' none)
-- Returns {status, n, b, closed, content type}; status: "absent" (probe), "created",
-- "exists" (same configuration), "conflict" (another configuration), "gone" (soft-deleted).
local meta, log, producers, forks = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
-- @include ds_common.lua

local now = now_ms()
local m = load(meta)
local st = state(m, now)
if st == 'gone' then return {'gone', 0, 0, '0', ''} end
if st == 'ok' then
  local same = (ARGV[4] == '' or ARGV[4] == m.nct)
    and (m.rttl or '') == ARGV[5] and (m.rea or '') == ARGV[6]
    and (m.cl or '0') == ARGV[10] and (m.src or '') == ARGV[11]
    and (ARGV[12] == '' or ARGV[12] == m.fo) and (m.fso or '0') == ARGV[13]
  return {same and 'exists' or 'conflict', tonumber(m.n), tonumber(m.b), m.cl or '0', m.ct}
end
if ARGV[1] == 'probe' then return {'absent', 0, 0, '0', ''} end

local n, b = tonumber(ARGV[14]), tonumber(ARGV[15])
local fields = {'gen', ARGV[2], 'ct', ARGV[3], 'nct', ARGV[4], 'cl', ARGV[10], 'la', now,
  'fo_n', n, 'fo', ARGV[16], 'fso', ARGV[13]}
local function opt(name, value)
  if value ~= '' then
    fields[#fields + 1] = name
    fields[#fields + 1] = value
  end
end
opt('rttl', ARGV[5])
opt('rea', ARGV[6])
opt('ttl', ARGV[7])
opt('eam', ARGV[8])
opt('ea', ARGV[9])
opt('src', ARGV[11])
opt('anc', ARGV[17])
redis.call('DEL', log, producers, forks)
for _, data in ipairs({ARGV[18], ARGV[19]}) do
  if data ~= '' then
    n = n + 1
    b = b + #data
    redis.call('XADD', log, n .. '-0', 'd', data, 'b', b)
  end
end
fields[#fields + 1] = 'n'
fields[#fields + 1] = n
fields[#fields + 1] = 'b'
fields[#fields + 1] = b
redis.call('HSET', meta, unpack(fields))
if ARGV[7] ~= '' then
  local ms = tonumber(ARGV[7]) * 1000
  redis.call('PEXPIRE', meta, ms)
  redis.call('PEXPIRE', log, ms)
elseif ARGV[8] ~= '' then
  redis.call('PEXPIREAT', meta, ARGV[8])
  redis.call('PEXPIREAT', log, ARGV[8])
end
return {'created', n, b, ARGV[10], ARGV[3]}
