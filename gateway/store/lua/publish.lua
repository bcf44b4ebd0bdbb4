-- Atomic publish of one event or a batch to a session's log, with the run lifecycle rules.
-- KEYS: 1 meta hash, 2 log stream, 3 approvals hash, 4 run lease, 5 producers hash,
--       6 runs hash (run_id -> "running" | "completed" | "failed" | "cancelled")
-- ARGV: 1 epoch candidate, 2 maxlen, 3 live channel,
--       4 guard: "0" none; "interrupt" only if the batch's run is the active run and has no
--         live lease (the reaper); "orphan" only if it has no live lease or only the
--         gateway's "queued" one (a cancel that no worker will see),
--       5 publish command (PUBLISH or SPUBLISH), 6 event count,
--       7 producer id ('' = not idempotent), 8 producer sequence of this batch,
--       9 fencing token ('' = unfenced: gateways, reapers, plain publishers),
--       10 pickup ms: TTL of the "queued" lease a run.started takes (and that events of a
--          run nobody leased renew), 11 the run's command JSON to keep with it ('' none),
--       12 the producer's low-water mark: its oldest batch sequence still unanswered ('' =
--          unknown), then 5 per event from ARGV[13]: type, run_id, data (JSON), aux1, aux2
-- Returns {"ok", epoch, first_seq, last_seq, ts_ms} or {error_code}.
--
-- Run lifecycle (docs/security.md, "Fencing"), enforced here and not by callers' care:
-- * a run starts at most once, and only while no run is active (run_active, run_exists);
--   its run.started takes the "queued" lease (TTL = pickup) and a new fencing token, and
--   keeps the command, in this same script: there is no started run without a lease;
-- * exactly one terminal per run, nothing after it: any event of an ended run is refused
--   (run_ended), checked for the whole batch before anything is written;
-- * fencing (M. Kleppmann, "How to do distributed locking", 2016): a worker publishes with
--   the token its lease acquisition returned; once the token is not the session's current
--   one, or its run is no longer active, the batch is refused (lease_lost).
--
-- Idempotent producers (as Kafka's producer id + sequence): the producers hash keeps, per
-- producer id, the results of its recent batches as "pseq epoch first last ts;...".
-- A batch whose sequence is listed was already appended: its stored result is returned and
-- nothing is written or announced, so a retry after a lost reply never duplicates events.
-- What is kept: every batch at or above the producer's low-water mark, whose sequence its
-- publisher may still send again (up to CAP); without a mark, the newest WINDOW. A count
-- alone was not enough: while one caller's call waited out a Redis restart, the producer's
-- other callers published more than WINDOW batches to the session, its result was
-- forgotten, and the retry appended the batch a second time.
local meta, log, approvals, lease, producers, runs = KEYS[1], KEYS[2], KEYS[3], KEYS[4],
  KEYS[5], KEYS[6]
local n = tonumber(ARGV[6])
local pid, pseq = ARGV[7], tonumber(ARGV[8])
local fence, pickup, command = ARGV[9], ARGV[10], ARGV[11]
local low = tonumber(ARGV[12])
local FIRST = 13
local WINDOW = 32
local CAP = 4096
local TERMINAL = {}  -- @terminal (filled from gateway.core.events by the loader)
local window = pid ~= '' and redis.call('HGET', producers, pid) or false
if window then
  -- Membership by a plain substring search: the window is "pseq epoch first last ts;...".
  local at = string.find(';' .. window, ';' .. pseq .. ' ', 1, true)
  if at then
    local e, f, l, ts = string.match(window, '^%d+ (%S+) (%d+) (%d+) (%d+)', at)
    return {'ok', e, tonumber(f), tonumber(l), tonumber(ts)}
  end
  -- Not listed: a batch that never ran (concurrent publishes of one producer reach Redis
  -- in any order), appended as new. A retry finds its first result while its sequence is
  -- at or above the low-water mark the window is kept from (see below).
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  -- A new log: anything left under the log key belongs to a previous epoch.
  epoch = ARGV[1]
  redis.call('DEL', log, approvals, runs, lease)
  redis.call('HSET', meta, 'epoch', epoch, 'seq', 0, 'status', 'idle', 'created_ms', now)
end

local m = {}
do
  local flat = redis.call('HMGET', meta, 'status', 'run_id', 'fence', 'run_holder')
  m.status, m.run, m.fence, m.holder = flat[1] or 'idle', flat[2] or '', flat[3] or '0', flat[4]
end

local guard = ARGV[4]
if guard == 'interrupt' or guard == 'orphan' then
  local run = ARGV[FIRST + 1]
  if m.status ~= 'running' or m.run ~= run then return {'guard_failed'} end
  local holder = redis.call('GET', lease)
  if holder and not (guard == 'orphan' and holder == 'queued') then return {'guard_failed'} end
end

-- Validate the whole batch before writing anything, so a refused batch stores nothing.
-- The run states are simulated event by event: [completed r1, started r2] is fine,
-- [completed r1, delta r1] is not.
local status, current = m.status, m.run
local state = {}
local function run_state(run)
  if state[run] == nil then state[run] = redis.call('HGET', runs, run) or false end
  return state[run]
end
if fence ~= '' and (m.status ~= 'running' or m.fence ~= fence) then
  -- The token was superseded (a reaper ended the run, it was handed back, another run
  -- started): this worker has lost the run. An ended run says so more precisely below.
  local run = ARGV[FIRST + 1]
  local st = run ~= '' and run_state(run)
  if st and st ~= 'running' then return {'run_ended'} end
  return {'lease_lost'}
end
for i = 0, n - 1 do
  local b = FIRST + i * 5
  local typ, run = ARGV[b], ARGV[b + 1]
  if typ == 'approval.resolved' then
    local cur = redis.call('HGET', approvals, ARGV[b + 3])
    if not cur then return {'approval_not_found'} end
    if cur ~= 'pending' then return {'approval_already_resolved'} end
  end
  if run ~= '' then
    local st = run_state(run)
    if st and st ~= 'running' then return {'run_ended'} end
    if fence ~= '' and run ~= current then return {'lease_lost'} end
    if typ == 'run.started' then
      if st then return {'run_exists'} end
      if status == 'running' then return {'run_active'} end
      state[run], status, current = 'running', 'running', run
    elseif TERMINAL[typ] then
      state[run] = TERMINAL[typ]
      if run == current then status = 'idle' end
    end
  end
end

local seq = tonumber(redis.call('HGET', meta, 'seq'))
local first = seq + 1
local lines = {'E\t' .. epoch}
local touched = false -- an event of a run nobody leased: it is alive while it publishes
for i = 0, n - 1 do
  local b = FIRST + i * 5
  local typ, run, data, aux1, aux2 = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  seq = seq + 1
  redis.call('XADD', log, 'MAXLEN', '~', ARGV[2], seq .. '-0',
    't', typ, 'r', run, 'd', data, 'ts', now)
  if typ == 'run.started' then
    local token = redis.call('HINCRBY', meta, 'fence', 1)
    redis.call('HSET', meta, 'status', 'running', 'run_id', run, 'run_first_seq', seq,
      'run_holder', 'queued', 'queued_ms', now)
    redis.call('HDEL', meta, 'cancel_requested', 'run_command', 'requeued_ms')
    if command ~= '' then redis.call('HSET', meta, 'run_command', command) end
    redis.call('HSET', runs, run, 'running')
    redis.call('SET', lease, 'queued', 'PX', pickup)
    m.run, m.holder, touched = run, 'queued', false
  elseif TERMINAL[typ] then
    if run ~= '' then redis.call('HSET', runs, run, TERMINAL[typ]) end
    -- A terminal of a run that is not the active one (a lazily created run) ends only it.
    if redis.call('HGET', meta, 'run_id') == run then
      redis.call('HSET', meta, 'status', 'idle', 'last_run_status', TERMINAL[typ])
      redis.call('HDEL', meta, 'run_holder', 'run_command', 'queued_ms', 'requeued_ms')
      redis.call('DEL', lease)
      m.run, touched = '', false
    end
  else
    if typ == 'session.title' then
      redis.call('HSET', meta, 'title', aux1)
    elseif typ == 'approval.requested' then
      redis.call('HSET', approvals, aux1, 'pending', aux1 .. ':run', run)
    elseif typ == 'approval.resolved' then
      redis.call('HSET', approvals, aux1, aux2)
    end
    if fence == '' and run ~= '' and run == m.run and m.holder == 'queued' then
      touched = true
    end
  end
  lines[#lines + 1] = seq .. '\t' .. now .. '\t' .. typ .. '\t' .. run .. '\t' .. data
end
if touched then redis.call('SET', lease, 'queued', 'PX', pickup) end
redis.call('HSET', meta, 'seq', seq, 'updated_ms', now)
if pid ~= '' then
  -- Keep the window ordered by producer sequence. A new sequence almost always goes last
  -- (appended without parsing the window); concurrent batches that arrived out of order are
  -- inserted in place.
  local entry = pseq .. ' ' .. epoch .. ' ' .. first .. ' ' .. seq .. ' ' .. now
  local out
  if not window then
    out = entry
  else
    local semi = string.find(window, ';[^;]*$')
    local lastq = tonumber(string.match(window, '^%d+', semi and semi + 1 or 1))
    if lastq < pseq then
      out = window .. ';' .. entry
    else
      local seen, seqs = {}, {}
      for e in string.gmatch(window, '[^;]+') do
        seen[#seen + 1], seqs[#seqs + 1] = e, tonumber(string.match(e, '^%d+'))
      end
      local at = #seen + 1
      while at > 1 and seqs[at - 1] > pseq do at = at - 1 end
      table.insert(seen, at, entry)
      out = table.concat(seen, ';')
    end
    -- Forget batches below the low-water mark (answered, never sent again), or all but the
    -- newest WINDOW without one; never more than CAP. The window is in sequence order.
    local _, semis = string.gsub(out, ';', ';')
    local count, limit = semis + 1, low and CAP or WINDOW
    while count > 1 do
      local q = tonumber(string.match(out, '^%d+'))
      if count <= limit and not (low and q < low) then break end
      out = string.sub(out, string.find(out, ';', 1, true) + 1)
      count = count - 1
    end
  end
  redis.call('HSET', producers, pid, out)
end
redis.call(ARGV[5], ARGV[3], table.concat(lines, '\n'))
return {'ok', epoch, first, seq, now}
