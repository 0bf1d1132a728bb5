-- wrk script for scripts/bench: POST /v1/allocations for one card at a time.
--
-- Configuration comes from the environment (every wrk thread reads it):
--   BENCH_KEY        the API key (Authorization: Bearer ...)
--   BENCH_BUCKETS    product:denomination[,product:denomination...]; each request picks one
--                    uniformly at random
--   BENCH_TAG        unique per wrk run: prefix of every Idempotency-Key and request id
--   BENCH_NAME, BENCH_SIZE   names printed in the RESULT line
--   BENCH_THREADS    the -t given to wrk (to split a rate or a request budget between threads)
--   BENCH_RATE       optional: total requests/s over all connections, paced with delay()
--   BENCH_REQUESTS   optional: total allocation requests; each thread sends exactly its share,
--                    then only cheap GET /livez while its last answers arrive, and stops once
--                    all of its allocation answers are in (it then touches BENCH_DONE_DIR/done.<id>)
--   BENCH_CARDS_OUT  optional: file prefix; the card ids of every 201 are written to <prefix>.<id>
--   BENCH_HIST_OUT   optional: file for the latency histogram measured here (10 us buckets,
--                    "bucket count" lines), so several runs can be merged exactly
--
-- Latency: p50_ms/p99_ms are wrk's own percentiles, which include wrk's correction for
-- coordinated omission (an answer slower than twice the mean interval per connection adds
-- synthetic samples for the requests it held up). raw_p50_ms/raw_p99_ms are measured here per
-- answer, without that correction: the send time (monotonic, microseconds) travels in the
-- x-request-id header, which the origin echoes; the answer's arrival minus it is the latency.
--
-- Counting across threads: setup() keeps every thread, done() reads their counters with get().

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_us()
    ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end

local function env(name, default)
    local v = os.getenv(name)
    if v == nil or v == "" then return default end
    return v
end

-- ---------------------------------------------------------------- main state

local threads = {}
local nthreads = 0

function setup(thread)
    nthreads = nthreads + 1
    thread:set("id", nthreads)
    table.insert(threads, thread)
end

-- ---------------------------------------------------------------- thread state

local requests_made, answered, quota, sent_allocations = 0, 0, 0, 0
local bodies, headers = {}, {}
local tag, period_us, next_due = "", 0, nil
local cards_file, done_dir, stopped, verifying = nil, nil, false, false

function init(args)
    -- `id` is set by setup() before init() runs.
    counts = {}          -- status -> answers (read by done())
    oos = 0              -- 409 answers whose code is OUT_OF_STOCK
    hist = {}            -- 10 us bucket -> answers
    alloc_answers = 0    -- answers to allocation requests (not the /livez fillers)
    tag = env("BENCH_TAG", "bench") .. "-" .. id
    -- wrk calls request() once on the first thread before the run, to check what it returns;
    -- that request is never sent, so it must not count against the thread's share.
    verifying = (id == 1)
    math.randomseed(id * 7919 + now_us() % 100000)

    local buckets = env("BENCH_BUCKETS", nil)
    assert(buckets, "BENCH_BUCKETS is not set")
    for product, denomination in buckets:gmatch("([^,:]+):([^,]+)") do
        table.insert(bodies, string.format(
            '{"product_id":"%s","denomination":"%s","quantity":1}', product, denomination))
    end
    assert(#bodies > 0, "BENCH_BUCKETS has no product:denomination pair")
    headers = {
        ["Authorization"] = "Bearer " .. assert(env("BENCH_KEY", nil), "BENCH_KEY is not set"),
        ["Content-Type"] = "application/json",
    }

    local t = tonumber(env("BENCH_THREADS", "1"))
    local rate = tonumber(env("BENCH_RATE", "0"))
    if rate > 0 then period_us = 1000000 * t / rate end
    local total = tonumber(env("BENCH_REQUESTS", "0"))
    if total > 0 then
        quota = math.floor(total / t)
        if id <= total % t then quota = quota + 1 end
    end
    done_dir = env("BENCH_DONE_DIR", nil)
    local cards = env("BENCH_CARDS_OUT", nil)
    if cards then cards_file = assert(io.open(cards .. "." .. id, "a")) end
end

-- Paced runs: each call claims the thread's next send slot; a slow server is not caught up on
-- (no bursts), so the rate is a ceiling.
function delay()
    if period_us == 0 then return 0 end
    local now = now_us()
    local slot = next_due
    if slot == nil or slot < now then slot = now end
    next_due = slot + period_us
    return math.floor((slot - now) / 1000)
end

function request()
    if verifying then
        verifying = false
        return wrk.format("GET", "/livez")
    end
    requests_made = requests_made + 1
    if quota > 0 and sent_allocations >= quota then
        -- The share is sent: keep the connection busy with something that allocates nothing.
        return wrk.format("GET", "/livez", { ["x-request-id"] = "z" .. tag .. "-" .. requests_made })
    end
    sent_allocations = sent_allocations + 1
    local key = tag .. "-" .. requests_made
    headers["Idempotency-Key"] = key
    headers["x-request-id"] = "a" .. key .. "-" .. now_us()
    return wrk.format("POST", "/v1/allocations", headers, bodies[math.random(#bodies)])
end

function response(status, hdrs, body)
    local rid = hdrs["x-request-id"] or hdrs["X-Request-Id"] or ""
    if rid:sub(1, 1) == "z" then return end
    counts[status] = (counts[status] or 0) + 1
    alloc_answers = alloc_answers + 1
    local sent = tonumber(rid:match("%-(%d+)$"))
    if sent then
        local b = math.floor((now_us() - sent) / 10)
        hist[b] = (hist[b] or 0) + 1
    end
    if status == 409 and body and body:find('"OUT_OF_STOCK"', 1, true) then
        oos = oos + 1
    end
    if cards_file and status == 201 and body then
        for card in body:gmatch('"card_id":(%d+)') do cards_file:write(card, "\n") end
    end
    if quota > 0 and alloc_answers >= quota and not stopped then
        stopped = true
        if cards_file then cards_file:flush() end
        if done_dir then
            local f = io.open(done_dir .. "/done." .. id, "w")
            if f then f:close() end
        end
        wrk.thread:stop()
    end
end

-- ---------------------------------------------------------------- main state, at the end

local function hist_percentile(h, total, p)
    if total == 0 then return 0 end
    local keys = {}
    for k in pairs(h) do table.insert(keys, k) end
    table.sort(keys)
    local want, seen = math.ceil(total * p / 100), 0
    for _, k in ipairs(keys) do
        seen = seen + h[k]
        if seen >= want then return (k * 10 + 5) / 1000 end
    end
    return (keys[#keys] * 10 + 5) / 1000
end

function done(summary, latency, requests)
    local status, total, oos_all, h = {}, 0, 0, {}
    for _, t in ipairs(threads) do
        for s, n in pairs(t:get("counts") or {}) do status[s] = (status[s] or 0) + n end
        oos_all = oos_all + (t:get("oos") or 0)
        for b, n in pairs(t:get("hist") or {}) do h[b] = (h[b] or 0) + n end
    end
    local s201, s409, s4xx, s5xx, other = 0, 0, 0, 0, 0
    local list = {}
    for s, n in pairs(status) do
        total = total + n
        if s == 201 then s201 = s201 + n
        elseif s == 409 then s409 = s409 + n
        elseif s >= 500 then s5xx = s5xx + n
        elseif s >= 400 then s4xx = s4xx + n
        else other = other + n end
        table.insert(list, s .. ":" .. n)
    end
    table.sort(list)
    local e = summary.errors
    local transport = e.connect + e.read + e.write + e.timeout
    local secs = summary.duration / 1e6
    -- Over the answers that carried their send time back (all of them from the origin; none
    -- through the edge, which sets its own request id: the raw figures are then 0).
    local timed = 0
    for _, n in pairs(h) do timed = timed + n end
    local raw_p50, raw_p99 = hist_percentile(h, timed, 50), hist_percentile(h, timed, 99)

    local out = env("BENCH_HIST_OUT", nil)
    if out then
        local f = assert(io.open(out, "w"))
        for b, n in pairs(h) do f:write(b, " ", n, "\n") end
        f:close()
    end

    io.write(string.format(
        "RESULT name=%s size=%s secs=%.2f answers=%d rps=%.1f allocs_per_s=%.1f p50_ms=%.3f p99_ms=%.3f "
            .. "p999_ms=%.3f max_ms=%.3f raw_p50_ms=%.3f raw_p99_ms=%.3f s201=%d s409=%d oos409=%d s4xx=%d s5xx=%d other=%d "
            .. "transport_errors=%d connect=%d read=%d write=%d timeout=%d statuses=%s\n",
        env("BENCH_NAME", "alloc"), env("BENCH_SIZE", "-"), secs, total, total / secs, s201 / secs,
        latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
        latency.max / 1000, raw_p50, raw_p99, s201, s409, oos_all, s4xx, s5xx, other,
        transport, e.connect, e.read, e.write, e.timeout, table.concat(list, ",")))
end
