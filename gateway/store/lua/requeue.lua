-- Repair a run start whose command never reached the workers (the gateway died between the
-- start script and the command XADD, or the XADD failed). KEYS: 1 meta hash.
-- ARGV: 1 grace ms a "queued" run may wait before its command is sent again.
-- Returns the run's command JSON once per queued period (the caller XADDs it), else false.
-- A duplicate command is harmless: only one worker can take the run from "queued".
local flat = redis.call('HMGET', KEYS[1], 'status', 'run_holder', 'queued_ms', 'requeued_ms',
  'run_command')
local status, holder, queued, requeued, command = flat[1], flat[2], flat[3], flat[4], flat[5]
if status ~= 'running' or holder ~= 'queued' or not queued or not command then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now - tonumber(queued) < tonumber(ARGV[1]) then return false end
if requeued and tonumber(requeued) >= tonumber(queued) then return false end
redis.call('HSET', KEYS[1], 'requeued_ms', now)
return command
