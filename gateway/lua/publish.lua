-- Atomic publish of one event or a batch to a session's log.
-- KEYS: 1 meta hash, 2 log stream, 3 approvals hash, 4 run lease, 5 producers hash
-- ARGV: 1 epoch candidate, 2 maxlen, 3 live channel,
--       4 guard: "0" none, "1" refuse a run.started while a run is active, "interrupt" only
--         if the batch's run is active, had a holder, and its lease has expired (the reaper),
--       5 publish command (PUBLISH or SPUBLISH), 6 event count,
--       7 producer id ('' = not idempotent), 8 producer sequence of this batch,
--       then 5 per event: type, run_id, data (JSON text), aux1, aux2
-- Returns {"ok", epoch, first_seq, last_seq, ts_ms} or {error_code}.
--
-- Idempotent producers (as Kafka's producer id + sequence): the producers hash keeps, per
-- producer id, the results of its last WINDOW batches as "pseq epoch first last ts;...".
-- A batch whose sequence is listed was already appended: its stored result is returned and
-- nothing is written or announced, so a retry after a lost reply never duplicates events
-- (as long as the producer published fewer than WINDOW other batches to the session meanwhile).
local meta, log, approvals, lease, producers = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local n = tonumber(ARGV[6])
local pid, pseq = ARGV[7], tonumber(ARGV[8])
local WINDOW = 32
local seen = {}
if pid ~= '' then
  local raw = redis.call('HGET', producers, pid)
  if raw then
    for entry in string.gmatch(raw, '[^;]+') do
      local q, e, f, l, ts = string.match(entry, '^(%d+) (%S+) (%d+) (%d+) (%d+)$')
      if tonumber(q) == pseq then
        return {'ok', e, tonumber(f), tonumber(l), tonumber(ts)}
      end
      seen[#seen + 1] = entry
    end
    -- A sequence older than the window is appended as new: concurrent publishes of one
    -- producer can wait for a pooled connection in any order, so an old sequence is far more
    -- likely a batch that never ran than a retry of one that did (retries are immediate).
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  -- A new log: anything left under the log key belongs to a previous epoch.
  epoch = ARGV[1]
  redis.call('DEL', log, approvals)
  redis.call('HSET', meta, 'epoch', epoch, 'seq', 0, 'status', 'idle', 'created_ms', now)
end

if ARGV[4] == 'interrupt' then
  local run = ARGV[10]
  if redis.call('HGET', meta, 'status') ~= 'running' or redis.call('HGET', meta, 'run_id') ~= run
      or not redis.call('HGET', meta, 'run_holder') or redis.call('EXISTS', lease) == 1 then
    return {'guard_failed'}
  end
end

-- Validate the whole batch before writing anything, so a rejected batch stores nothing.
for i = 0, n - 1 do
  local b = 9 + i * 5
  local typ = ARGV[b]
  if typ == 'approval.resolved' then
    local cur = redis.call('HGET', approvals, ARGV[b + 3])
    if not cur then return {'approval_not_found'} end
    if cur ~= 'pending' then return {'approval_already_resolved'} end
  elseif typ == 'run.started' and ARGV[4] == '1' then
    if redis.call('HGET', meta, 'status') == 'running' then return {'run_active'} end
  end
end

local seq = tonumber(redis.call('HGET', meta, 'seq'))
local first = seq + 1
local lines = {'E\t' .. epoch}
for i = 0, n - 1 do
  local b = 9 + i * 5
  local typ, run, data, aux1, aux2 = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  seq = seq + 1
  redis.call('XADD', log, 'MAXLEN', '~', ARGV[2], seq .. '-0',
    't', typ, 'r', run, 'd', data, 'ts', now)
  if typ == 'run.started' then
    redis.call('HSET', meta, 'status', 'running', 'run_id', run, 'run_first_seq', seq)
    redis.call('HDEL', meta, 'cancel_requested', 'run_holder')
  elseif typ == 'run.completed' or typ == 'run.failed' or typ == 'run.cancelled' then
    -- A late terminal of an older run must not end the run that is running now.
    if redis.call('HGET', meta, 'run_id') == run then
      redis.call('HSET', meta, 'status', 'idle', 'last_run_status', string.sub(typ, 5))
      redis.call('HDEL', meta, 'run_holder')
      redis.call('DEL', lease)
    end
  elseif typ == 'session.title' then
    redis.call('HSET', meta, 'title', aux1)
  elseif typ == 'approval.requested' then
    redis.call('HSET', approvals, aux1, 'pending', aux1 .. ':run', run)
  elseif typ == 'approval.resolved' then
    redis.call('HSET', approvals, aux1, aux2)
  end
  lines[#lines + 1] = seq .. '\t' .. now .. '\t' .. typ .. '\t' .. run .. '\t' .. data
end
redis.call('HSET', meta, 'seq', seq, 'updated_ms', now)
if pid ~= '' then
  -- Keep the window ordered by producer sequence (concurrent batches may arrive out of order).
  seen[#seen + 1] = pseq .. ' ' .. epoch .. ' ' .. first .. ' ' .. seq .. ' ' .. now
  table.sort(seen, function(a, b)
    return tonumber(string.match(a, '^%d+')) < tonumber(string.match(b, '^%d+'))
  end)
  while #seen > WINDOW do table.remove(seen, 1) end
  redis.call('HSET', producers, pid, table.concat(seen, ';'))
end
redis.call(ARGV[5], ARGV[3], table.concat(lines, '\n'))
return {'ok', epoch, first, seq, now}
