-- wrk script for scripts/bench_node.py: POST one JSON point per request.
--
--   wrk -t2 -c64 -d10s --latency -s scripts/insert.lua http://127.0.0.1:8080/insert -- TAG
--
-- Each thread writes its own series ("wrk.TAG.tN.sK", K < series_per_thread)
-- with increasing timestamps. Every response whose status is not 201 is
-- counted, and so is every response carrying "Connection: close" (server
-- refused keep-alive). done() prints one line for the benchmark to parse:
--   BENCH_RESULT {"requests":..,"duration_us":..,"p50_us":..,...}

local series_per_thread = 100
local first_timestamp_ms = 1640995200000
local timestamp_step_ms = 1000

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_id", #threads)
end

function init(args)
   tag = args[1] or "run"
   sent = 0
   non_201 = 0
   closed = 0
end

function request()
   sent = sent + 1
   local body = string.format(
      '{"series":"wrk.%s.t%d.s%d","timestamp":%d,"value":%d.25}',
      tag, thread_id, sent % series_per_thread,
      first_timestamp_ms + sent * timestamp_step_ms, sent % 1000)
   return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
   if status ~= 201 then
      non_201 = non_201 + 1
   end
   local connection = headers["Connection"] or headers["connection"]
   if connection and string.lower(connection) == "close" then
      closed = closed + 1
   end
end

function done(summary, latency, requests)
   local non_201_total, closed_total = 0, 0
   for _, thread in ipairs(threads) do
      non_201_total = non_201_total + thread:get("non_201")
      closed_total = closed_total + thread:get("closed")
   end
   local errors = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,' ..
      '"max_us":%d,"non_201":%d,"connection_close":%d,"errors_connect":%d,' ..
      '"errors_read":%d,"errors_write":%d,"errors_timeout":%d}\n',
      summary.requests, summary.duration,
      latency:percentile(50.0), latency:percentile(99.0), latency.max,
      non_201_total, closed_total, errors.connect, errors.read,
      errors.write, errors.timeout))
end
