-- Durable Streams: messages of one log in a number range, for reading a fork's inherited
-- part from an ancestor (kept alive by the fork's reference, and immutable below the fork).
-- KEYS: 1 log stream
-- ARGV: 1 read after this message number, 2 up to and including this number,
--       3 at most this many messages, 4 stop once this many bytes were collected
-- Returns {n, b, data, ...}.
local budget = tonumber(ARGV[4])
local out = {}
local entries = redis.call('XRANGE', KEYS[1], (tonumber(ARGV[1]) + 1) .. '-0', ARGV[2] .. '-0',
  'COUNT', tonumber(ARGV[3]))
for _, e in ipairs(entries) do
  local f = e[2]
  local d, eb
  for i = 1, #f, 2 do
    if f[i] == 'd' then d = f[i + 1] elseif f[i] == 'b' then eb = f[i + 1] end
  end
  if #out > 0 and budget < #d then break end
  out[#out + 1] = string.match(e[1], '^(%d+)')
  out[#out + 1] = eb
  out[#out + 1] = d
  budget = budget - #d
end
return out
