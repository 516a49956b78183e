-- wrk script for bench/alerts: every request POSTs one generic webhook alert whose marker names
-- a distinct seeded run (fdr-b000000000 ...), so each alert is new and matches exactly one run.
-- Threads take disjoint marker ranges; MARKER_SPAN is set by the bench script.
local counter = 0
local thread_base = 0
local next_id = 0
local span = tonumber(os.getenv("MARKER_SPAN") or "1000000")
local threads = tonumber(os.getenv("WRK_THREADS") or "2")
local token = os.getenv("HOOK_TOKEN") or ""

function setup(thread)
  thread:set("thread_base", next_id * math.floor(span / threads))
  next_id = next_id + 1
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-FireDrill-Token"] = token
end

function request()
  local id = thread_base + counter
  counter = counter + 1
  local body = string.format(
    '{"host":"bench-host-%d","rule":"Bench lateral movement","technique":"T1021",' ..
    '"message":"connection from fdr-b%09d","severity":"high"}', id % 1000, id)
  return wrk.format(nil, nil, nil, body)
end
