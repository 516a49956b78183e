-- wrk script for bench/alerts: every request POSTs one generic webhook alert whose marker names
-- a distinct seeded run (tcn-b000000000 ...), so each alert is new and matches exactly one run.
-- Threads take disjoint marker ranges; MARKER_SPAN is set by the bench script.
local counter = 0
thread_base = 0  -- a global: setup() sets it per thread with thread:set()
local next_id = 0
local span = tonumber(os.getenv("MARKER_SPAN") or "1000000")
local threads = tonumber(os.getenv("WRK_THREADS") or "2")
local token = os.getenv("HOOK_TOKEN") or ""
local base = tonumber(os.getenv("MARKER_BASE") or "0")  -- another slice on a reused database
local batch = tonumber(os.getenv("BATCH") or "1")  -- alerts per request (a JSON array if > 1)

function setup(thread)
  thread:set("thread_base", base + next_id * math.floor(span / threads))
  next_id = next_id + 1
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-Tocsin-Token"] = token
end

local function alert(id)
  return string.format(
    '{"host":"bench-host-%d","rule":"Bench lateral movement","technique":"T1021",' ..
    '"message":"connection from tcn-b%09d","severity":"high"}', id % 1000, id)
end

function request()
  local body
  if batch == 1 then
    body = alert(thread_base + counter)
    counter = counter + 1
  else
    local parts = {}
    for i = 1, batch do
      parts[i] = alert(thread_base + counter)
      counter = counter + 1
    end
    body = "[" .. table.concat(parts, ",") .. "]"
  end
  return wrk.format(nil, nil, nil, body)
end
