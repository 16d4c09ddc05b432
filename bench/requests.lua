-- wrk script: sends the pre-signed requests of a bench/gen.py file, each at most once.
--
--   WRK_THREADS=1 WRK_RESULT=out.txt wrk -t1 -c32 -d8s -s bench/requests.lua URL -- FILE MODE
--
-- FILE: lines of tab-separated `Name: value` headers, then the escaped body (see gen.py).
-- MODE: `once` (hookguard: a request sent twice would be a replay, 409) or `wrap` (plain
--       proxies and the upstream: cycle through the file).
-- WRK_THREADS: must equal -t (each thread takes its own share of the lines).
-- WRK_RESULT: a file for one line of `key=value` results (it is also printed as `RESULT ...`).
--
-- Requests are built when the thread starts, so the measured loop only hands out prebuilt
-- strings. In `once` mode, running out of requests stops the thread and the result is marked
-- `exhausted=1` (wrk divides by the full duration, so such a run's rps would be too low); the
-- few requests sent meanwhile go to /__bench_exhausted__ (404), never a signed one again.
-- With several threads, thread k of n takes the lines k, k+n, k+2n, ...

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

local unescape_map = { ["\\"] = "\\", t = "\t", r = "\r", n = "\n" }

local function unescape(s)
  return (s:gsub("\\(.)", unescape_map))
end

function init(args)
  local file, mode = args[1], args[2] or "once"
  assert(file, "usage: -- FILE [once|wrap]")
  wrap = (mode == "wrap")
  local stride = tonumber(os.getenv("WRK_THREADS") or "1")
  local n, kept = 0, 0
  reqs = {}
  for line in io.lines(file) do
    if n % stride == id then
      local fields = {}
      for f in (line .. "\t"):gmatch("([^\t]*)\t") do
        fields[#fields + 1] = f
      end
      local body = unescape(fields[#fields])
      local headers = {}
      for i = 1, #fields - 1 do
        local name, value = fields[i]:match("^([^:]+):%s*(.*)$")
        headers[name] = value
      end
      kept = kept + 1
      reqs[kept] = wrk.format("POST", nil, headers, body)
    end
    n = n + 1
  end
  total = kept
  assert(total > 0, "no requests in " .. file)
  idx = 0
  exhausted = 0
end

function request()
  idx = idx + 1
  if idx > total then
    if wrap then
      idx = 1
    else
      exhausted = 1
      wrk.thread:stop()
      -- Something must be returned, and it must not be a copy of a signed request (that would
      -- be a replay, 409): a GET for a path no route has, answered 404 `no_route`.
      idx = total
      return wrk.format("GET", "/__bench_exhausted__")
    end
  end
  return reqs[idx]
end

function done(summary, latency, requests)
  local ex = 0
  local sent = 0
  for _, t in ipairs(threads) do
    if t:get("exhausted") == 1 then ex = 1 end
    sent = sent + (t:get("idx") or 0)
  end
  local e = summary.errors
  local secs = summary.duration / 1e6
  local line = string.format(
    "requests=%d duration_s=%.3f rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f " ..
    "non2xx=%d connect_err=%d read_err=%d write_err=%d timeout=%d exhausted=%d handed_out=%d",
    summary.requests, secs, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    e.status, e.connect, e.read, e.write, e.timeout, ex, sent)
  io.write("RESULT " .. line .. "\n")
  local out = os.getenv("WRK_RESULT")
  if out and out ~= "" then
    local f = assert(io.open(out, "w"))
    f:write(line .. "\n")
    f:close()
  end
end
