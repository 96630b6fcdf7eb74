-- wrk script: POST /task-runner with a JSON request.
--
-- Environment (read by every thread):
--   BENCH_MODE          "unique" (default): every request has its own task_id
--                       "same": every request is the same request (the idempotent path)
--   BENCH_PREFIX        task_id prefix, unique per run (default "b")
--   BENCH_CALLBACK_URL  the callback_url of every request
--   BENCH_TASK_FILE     the task file (default "ok.sh")
--   TASKRUNNER_API_KEY  the bearer key
--
-- Each thread counts its answers by status; done() prints them as "BENCH name value"
-- lines, with the latency percentiles, for the calling script.

local threads = {}

function setup(thread)
    table.insert(threads, thread)
    thread:set("thread_number", #threads)
end

local function body_for(task_id)
    return string.format(
        '{"task_id":"%s","task_file_name":"%s","worker_config":{"worker_size":"X-Small"},"callback_url":"%s"}',
        task_id, task_file, callback_url)
end

function init(args)
    mode = os.getenv("BENCH_MODE") or "unique"
    prefix = os.getenv("BENCH_PREFIX") or "b"
    callback_url = os.getenv("BENCH_CALLBACK_URL") or "http://127.0.0.1:9/cb"
    task_file = os.getenv("BENCH_TASK_FILE") or "ok.sh"
    counter = 0
    statuses = {}
    first_error = ""
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    wrk.headers["Authorization"] = "Bearer " .. (os.getenv("TASKRUNNER_API_KEY") or "")
    if mode == "same" then
        fixed_request = wrk.format(nil, "/task-runner", nil, body_for(prefix .. "-same"))
    end
end

function request()
    if fixed_request then
        return fixed_request
    end
    counter = counter + 1
    -- thread number + per-thread counter: unique across threads without shared state
    local task_id = string.format("%s-t%d-%d", prefix, thread_number, counter)
    return wrk.format(nil, "/task-runner", nil, body_for(task_id))
end

function response(status, headers, body)
    local key = tostring(status)
    statuses[key] = (statuses[key] or 0) + 1
    if (status < 200 or status > 299) and first_error == "" then
        first_error = key .. " " .. string.sub(body or "", 1, 300)
    end
end

function done(summary, latency, requests)
    local seconds = summary.duration / 1e6
    print(string.format("BENCH requests %d", summary.requests))
    print(string.format("BENCH seconds %.3f", seconds))
    print(string.format("BENCH rps %.1f", summary.requests / seconds))
    print(string.format("BENCH p50_ms %.2f", latency:percentile(50) / 1000))
    print(string.format("BENCH p90_ms %.2f", latency:percentile(90) / 1000))
    print(string.format("BENCH p99_ms %.2f", latency:percentile(99) / 1000))
    print(string.format("BENCH max_ms %.2f", latency.max / 1000))
    print(string.format("BENCH err_connect %d", summary.errors.connect))
    print(string.format("BENCH err_read %d", summary.errors.read))
    print(string.format("BENCH err_write %d", summary.errors.write))
    print(string.format("BENCH err_timeout %d", summary.errors.timeout))
    print(string.format("BENCH err_status %d", summary.errors.status))
    local total = {}
    for _, thread in ipairs(threads) do
        local counts = thread:get("statuses") or {}
        for key, n in pairs(counts) do
            total[key] = (total[key] or 0) + n
        end
        local err = thread:get("first_error")
        if err and err ~= "" then
            print("BENCH first_error " .. string.gsub(err, "\n", " "))
        end
    end
    for key, n in pairs(total) do
        print(string.format("BENCH status_%s %d", key, n))
    end
end
