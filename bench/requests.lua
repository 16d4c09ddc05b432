-- wrk script: sends the pre-signed requests of a bench/gen.py file, each at most once.
--
--   WRK_THREADS=1 WRK_RESULT=out.txt wrk -t1 -c32 -d8s -s bench/requests.lua URL -- FILE MODE
--
-- FILE: complete HTTP/1.1 requests as they go on the wire, each followed by a NUL byte (see
--       gen.py). Their path must be the URL's (checked here); their Host is gen.py's.
-- MODE: `once` (hookguard: a request sent twice would be a replay, answered 200 "duplicate"
--       without reaching the upstream) or `wrap` (plain proxies and the upstream: cycle).
-- WRK_THREADS: must equal -t. Thread k of n takes the requests that start in the k-th n-th of
--       the file's bytes (a contiguous region of its own), so no request goes out twice.
-- WRK_RESULT: a file for one line of `key=value` results (it is also printed as `RESULT ...`).
--
-- Each thread reads its region once, in `init` (before wrk starts its clock), in blocks of up
-- to 64 MiB that each end with a whole request (one string for a whole file would hit LuaJIT's
-- 2 GiB string limit and need twice the memory while it is read). `request()` only finds the
-- next NUL (string.find, plain: memchr) and cuts the request out (string.sub): no formatting,
-- no I/O. In `wrap` mode a thread reads at most WRAP_BYTES of its region: the same ~30,000
-- requests over and over are as good as any for a server that keeps no state.
-- In `once` mode, running out of requests stops the thread and the result is marked
-- `exhausted=1` (wrk divides by the full duration, so such a run's rps would be too low); the
-- few requests sent meanwhile go to /__bench_exhausted__ (404), never a signed one again.
-- wrk calls request() once before the run to check what it returns; that first request of
-- thread 0 is never sent (and counts in handed_out).

local BLOCK = 64 * 1024 * 1024
local WRAP_BYTES = 32 * 1024 * 1024
local SEP = "\0"
local find, sub = string.find, string.sub

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

-- File offset of the first NUL at or after `at`, or the file's size if there is none.
local function next_sep(f, at, size)
  f:seek("set", at)
  while at < size do
    local piece = f:read(65536)
    if not piece then break end
    local e = find(piece, SEP, 1, true)
    if e then return at + e - 1 end
    at = at + #piece
  end
  return size
end

-- Index of the last NUL in s, or nil.
local function last_sep(s)
  local window = 65536
  while true do
    local from = math.max(1, #s - window + 1)
    local last, i = nil, from
    while true do
      local e = find(s, SEP, i, true)
      if not e then break end
      last, i = e, e + 1
    end
    if last or from == 1 then return last end
    window = window * 16
  end
end

function init(args)
  local file, mode = args[1], args[2] or "once"
  assert(file, "usage: -- FILE [once|wrap]")
  assert(mode == "once" or mode == "wrap", "MODE is once or wrap, not " .. mode)
  wrap = (mode == "wrap")
  local n = tonumber(os.getenv("WRK_THREADS") or "1")
  assert(id < n, "WRK_THREADS must equal wrk's -t")
  local f = assert(io.open(file, "rb"))
  local size = f:seek("end")
  -- This thread's requests are those that start at a byte offset in [lo, hi): bytes
  -- [first, stop) of the file, from the first such request through the NUL after the last.
  local lo = math.floor(size * id / n)
  local hi = math.floor(size * (id + 1) / n)
  if wrap then hi = math.min(hi, lo + WRAP_BYTES) end
  local first = 0
  if lo > 0 then first = next_sep(f, lo - 1, size) + 1 end -- a request starts after a NUL
  local stop = first
  if first < hi then stop = math.min(next_sep(f, hi - 1, size) + 1, size) end
  blocks = {}
  local at = first
  f:seek("set", at)
  while at < stop do
    local s = assert(f:read(math.min(BLOCK, stop - at)), "short read in " .. file)
    local e = #s
    if at + #s < stop then
      -- Keep whole requests; the cut one is read again at the start of the next block.
      e = assert(last_sep(s), "a request longer than a block in " .. file)
      f:seek("set", at + e)
    end
    blocks[#blocks + 1] = s
    at = at + e
  end
  f:close()
  assert(#blocks > 0, "no requests for thread " .. id .. " in " .. file)
  local head = blocks[1]
  assert(sub(blocks[#blocks], -1) == SEP, file .. " does not end with a NUL: not a gen.py file?")
  local path = head:match("^%u+ (%S+) HTTP/1%.1\r\n")
  assert(path, file .. " does not start with an HTTP/1.1 request line: not a gen.py file?")
  assert(path == wrk.path, "the requests in " .. file .. " are for " .. path ..
    ", the URL is for " .. wrk.path)
  b = 1         -- the block being handed out
  blk = head    -- blocks[b]
  pos = 1       -- where its next request starts
  sent = 0
  exhausted = 0
end

function request()
  local e = find(blk, SEP, pos, true)
  if not e then
    if b < #blocks then
      b = b + 1
    elseif wrap then
      b = 1
    else
      exhausted = 1
      wrk.thread:stop()
      -- Something must be returned, and it must not be a copy of a signed request (that would
      -- be a replay): a GET for a path no route has, answered 404 `no_route`.
      return "GET /__bench_exhausted__ HTTP/1.1\r\nHost: " .. wrk.host .. "\r\n\r\n"
    end
    blk, pos = blocks[b], 1
    e = find(blk, SEP, pos, true)
  end
  local req = sub(blk, pos, e - 1)
  pos = e + 1
  sent = sent + 1
  return req
end

function done(summary, latency, requests)
  local ex = 0
  local handed = 0
  for _, t in ipairs(threads) do
    if t:get("exhausted") == 1 then ex = 1 end
    handed = handed + (t:get("sent") or 0)
  end
  local e = summary.errors
  local secs = summary.duration / 1e6
  local line = string.format(
    "requests=%d duration_s=%.3f rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f " ..
    "non2xx=%d connect_err=%d read_err=%d write_err=%d timeout=%d exhausted=%d handed_out=%d",
    summary.requests, secs, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    e.status, e.connect, e.read, e.write, e.timeout, ex, handed)
  io.write("RESULT " .. line .. "\n")
  local out = os.getenv("WRK_RESULT")
  if out and out ~= "" then
    local f = assert(io.open(out, "w"))
    f:write(line .. "\n")
    f:close()
  end
end
