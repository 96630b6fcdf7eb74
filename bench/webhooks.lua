-- wrk script: signed GitHub push deliveries to POST /webhooks/github.
--
-- Environment (read by every thread):
--   BENCH_BODY_FILE   the push payload (signed once by the calling script)
--   BENCH_SIGNATURE   its X-Hub-Signature-256
--   BENCH_MODE        "unique" (default): every request is a new delivery (a new task)
--                     "same": every request redelivers one delivery (the dedupe path)
--   BENCH_PREFIX      delivery id prefix, unique per run
--
-- The signature covers the body only, so one signed body serves every delivery id.
-- done() prints "BENCH name value" lines for the calling script.

local threads = {}

function setup(thread)
    table.insert(threads, thread)
    thread:set("thread_number", #threads)
end

function init(args)
    local file = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
    body = file:read("*a")
    file:close()
    mode = os.getenv("BENCH_MODE") or "unique"
    prefix = os.getenv("BENCH_PREFIX") or "b"
    counter = 0
    statuses = {}
    first_error = ""
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    wrk.headers["X-GitHub-Event"] = "push"
    wrk.headers["X-Hub-Signature-256"] = os.getenv("BENCH_SIGNATURE")
end

function request()
    local delivery
    if mode == "same" then
        delivery = prefix .. "-same"
    else
        counter = counter + 1
        delivery = string.format("%s-t%d-%d", prefix, thread_number, counter)
    end
    -- wrk.format uses the table given instead of wrk.headers: copy them in.
    local headers = {["X-GitHub-Delivery"] = delivery}
    for name, value in pairs(wrk.headers) do
        headers[name] = value
    end
    return wrk.format(nil, "/webhooks/github", headers, body)
end

function response(status, headers, body)
    local key = tostring(status)
    statuses[key] = (statuses[key] or 0) + 1
    if (status < 200 or status > 299) and first_error == "" then
        first_error = key .. " " .. string.sub(body or "", 1, 300)
    end
end

function done(summary, latency, requests)
    local counts = {}
    for _, thread in ipairs(threads) do
        local their = thread:get("statuses")
        for key, n in pairs(their) do
            counts[key] = (counts[key] or 0) + n
        end
        local err = thread:get("first_error")
        if err ~= "" then
            io.write("BENCH first_error " .. err .. "\n")
        end
    end
    for key, n in pairs(counts) do
        io.write(string.format("BENCH status_%s %d\n", key, n))
    end
    io.write(string.format("BENCH requests %d\n", summary.requests))
    io.write(string.format("BENCH rps %.0f\n", summary.requests / (summary.duration / 1e6)))
    for _, p in ipairs({50, 90, 99}) do
        io.write(string.format("BENCH p%d_ms %.2f\n", p, latency:percentile(p) / 1000))
    end
    io.write(string.format("BENCH max_ms %.2f\n", latency.max / 1000))
    io.write(string.format("BENCH errors %d\n",
        summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
