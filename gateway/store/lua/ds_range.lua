-- Durable Streams: messages of one log in a number range, for reading a fork's inherited
-- part from an ancestor (kept alive by the fork's reference, and immutable below the fork).
-- KEYS: 1 log stream
-- ARGV: 1 read after this message number, 2 up to and including this number,
--       3 at most this many messages, 4 stop once this many bytes were collected
-- Returns {n, b, data, ...}.
-- @include ds_common.lua
local entries = redis.call('XRANGE', KEYS[1], (tonumber(ARGV[1]) + 1) .. '-0', ARGV[2] .. '-0',
  'COUNT', tonumber(ARGV[3]))
return collect(entries, tonumber(ARGV[4]))
