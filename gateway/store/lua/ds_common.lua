-- Durable Streams: helpers shared by the ds_*.lua scripts. Not a script of its own: the
-- loader (gateway/store/base.py) puts it where a script says "-- @include ds_common.lua",
-- after the script's "local meta, log, producers, forks = KEYS[...]" line.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A hash as a Lua table (and the flat HGETALL reply it came from).
local function load(key)
  local flat = redis.call('HGETALL', key)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t, flat
end

-- "none", "gone" or "ok"; an expired stream is deleted, or soft-deleted while it has forks.
local function state(m, now)
  if not m.gen then return 'none' end
  if m.sd == '1' then return 'gone' end
  local expired = (m.eam and now >= tonumber(m.eam))
    or (m.ttl and m.la and now >= tonumber(m.la) + tonumber(m.ttl) * 1000)
  if not expired then return 'ok' end
  if redis.call('SCARD', forks) > 0 then
    redis.call('HSET', meta, 'sd', '1')
    return 'gone'
  end
  redis.call('DEL', meta, log, producers)
  return 'none'
end

-- Messages of XRANGE entries as a flat {n, b, data, ...}, stopping before the one that
-- would pass the byte budget (always at least one).
local function collect(entries, budget)
  local out = {}
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
end
