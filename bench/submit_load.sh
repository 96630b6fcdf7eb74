#!/usr/bin/env bash
# Submit latency and throughput of `POST /task-runner` under concurrent load, measured with
# wrk from another process over loopback.
#
# Scenario "new tasks": every request has its own task_id, so every 202 starts a real
# worker (a task that is `exit 0`, run by the data directory's worker host).
# Scenario "resubmit": every request is the same, already accepted request: the idempotent
# path, which starts nothing, so it shows the API's own overhead.
#
# Knobs (environment): BENCH_THREADS (2), BENCH_CONNECTIONS (32), BENCH_DURATION (20s),
# BENCH_KEEP=1 keeps the temp dir. Needs cargo, python3, curl; installs wrk if missing.
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

THREADS="${BENCH_THREADS:-2}"
CONNECTIONS="${BENCH_CONNECTIONS:-32}"
DURATION="${BENCH_DURATION:-20s}"
CALLBACK_WAIT_SECONDS="${BENCH_CALLBACK_WAIT_SECONDS:-120}"

WORK="$(mktemp -d /tmp/taskrunner-bench-submit.XXXXXX)"
RECEIVER_PID=""
finish() {
    bench_cleanup "$WORK"
    [ -n "$RECEIVER_PID" ] && kill -TERM "$RECEIVER_PID" 2>/dev/null && wait "$RECEIVER_PID" 2>/dev/null
    if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap finish EXIT
trap 'exit 130' INT TERM

bench_need_wrk || { echo "cannot install wrk" >&2; exit 1; }
bench_build || exit 1

# The callback receiver, so that every accepted task's callback has somewhere to go.
python3 "$BENCH_DIR/receiver.py" "$WORK/receiver.port" &
RECEIVER_PID=$!
for _ in $(seq 1 100); do [ -s "$WORK/receiver.port" ] && break; sleep 0.05; done
RECEIVER_PORT="$(cat "$WORK/receiver.port" 2>/dev/null)"
[ -n "$RECEIVER_PORT" ] || { echo "the callback receiver did not start" >&2; exit 1; }
CALLBACK_URL="http://127.0.0.1:$RECEIVER_PORT/cb"
callbacks() { curl -sf "http://127.0.0.1:$RECEIVER_PORT/count"; }

# Tasks that carry a prefix, as counted in the server's state (SQLite, read-only).
count_tasks() {
    python3 - "$1/data/engine.db" "$2" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=10)
prefix = sys.argv[2]
rows = db.execute("SELECT status, count(*) FROM executions WHERE name LIKE ? GROUP BY status",
                  (f"{prefix}-%",)).fetchall()
print(sum(n for _, n in rows), " ".join(f"{s}={n}" for s, n in rows))
EOF
}

# Runs wrk once; $1 scenario dir, $2 mode; leaves wrk's output in $1/wrk.txt.
run_wrk() {
    BENCH_MODE="$2" BENCH_PREFIX="$PREFIX" BENCH_CALLBACK_URL="$CALLBACK_URL" \
        TASKRUNNER_API_KEY="$BENCH_API_KEY" \
        timeout 300 wrk -t "$THREADS" -c "$CONNECTIONS" -d "$DURATION" --timeout 10s --latency \
        -s "$BENCH_DIR/submit.lua" "$SERVE_URL" >"$1/wrk.txt" 2>&1
    echo "wrk exit code $?" >>"$1/wrk.txt"
}

wrk_lines() {
    local lines
    lines="$(grep -E 'Non-2xx|Socket errors' "$1/wrk.txt" | sed 's/^ *//' | tr '\n' ';')"
    echo "${lines:-none (no non-2xx answer, no socket error)}"
}

figure() { sed -n "s/^BENCH $2 //p" "$1/wrk.txt" | head -n 1; }

report() {
    local dir="$1" name="$2"
    local s2xx
    s2xx="$(grep -E '^BENCH status_2[0-9][0-9] ' "$dir/wrk.txt" | awk '{n += $3} END {print n + 0}')"
    local non2xx
    non2xx="$(grep -E '^BENCH status_[0-9]+ ' "$dir/wrk.txt" | grep -v 'status_2[0-9][0-9] ' | awk '{n += $3} END {print n + 0}')"
    local sockerr
    sockerr="$(( $(figure "$dir" err_connect) + $(figure "$dir" err_read) + $(figure "$dir" err_write) + $(figure "$dir" err_timeout) ))"
    printf '%-10s %9s %9s %9s %9s %9s %9s %9s %9s\n' "$name" \
        "$(figure "$dir" requests)" "$(figure "$dir" rps)" "$(figure "$dir" p50_ms)" \
        "$(figure "$dir" p90_ms)" "$(figure "$dir" p99_ms)" "$(figure "$dir" max_ms)" \
        "$s2xx" "$non2xx/$sockerr"
}

PREFIX="bench-$(date +%s)-$$"
printf '%s\n' '#!/bin/sh' 'exit 0' >"$WORK/tasks.ok.sh"

# --- scenario 1: new tasks -------------------------------------------------------------
NEW="$WORK/new"
mkdir -p "$NEW/tasks" && cp "$WORK/tasks.ok.sh" "$NEW/tasks/ok.sh"
bench_start_server "$NEW" || exit 1
echo "scenario new tasks: wrk -t$THREADS -c$CONNECTIONS -d$DURATION against $SERVE_URL" >&2
run_wrk "$NEW" unique
read -r NEW_TASKS NEW_BY_STATUS <<<"$(count_tasks "$NEW" "$PREFIX")"
echo "waiting (at most ${CALLBACK_WAIT_SECONDS}s) for the callbacks of $NEW_TASKS accepted tasks ..." >&2
WAIT_START=$SECONDS
NEW_CALLBACKS=0
while [ $((SECONDS - WAIT_START)) -lt "$CALLBACK_WAIT_SECONDS" ]; do
    NEW_CALLBACKS="$(callbacks | python3 -c 'import json,sys; print(json.load(sys.stdin)["unique_tasks"])')"
    [ "${NEW_CALLBACKS:-0}" -ge "${NEW_TASKS:-0}" ] && break
    sleep 1
done
NEW_DRAIN_SECONDS=$((SECONDS - WAIT_START))
NEW_CALLBACK_SUMMARY="$(callbacks)"
read -r _ NEW_BY_STATUS_AFTER <<<"$(count_tasks "$NEW" "$PREFIX")"
NEW_LOG="$(bench_log_problems "$NEW/serve.log")"
bench_cleanup "$NEW"
SERVE_PID=""

# --- scenario 2: the same request again and again ---------------------------------------
SAME="$WORK/same"
mkdir -p "$SAME/tasks" && cp "$WORK/tasks.ok.sh" "$SAME/tasks/ok.sh"
bench_start_server "$SAME" || exit 1
FIRST_STATUS="$(curl -s -o "$SAME/first.json" -w '%{http_code}' -X POST "$SERVE_URL/task-runner" \
    -H "Authorization: Bearer $BENCH_API_KEY" -H 'Content-Type: application/json' \
    -d "{\"task_id\":\"$PREFIX-same\",\"task_file_name\":\"ok.sh\",\"worker_config\":{\"worker_size\":\"X-Small\"},\"callback_url\":\"$CALLBACK_URL\"}")"
echo "scenario resubmit: first submit answered $FIRST_STATUS; wrk -t$THREADS -c$CONNECTIONS -d$DURATION" >&2
run_wrk "$SAME" same
read -r SAME_TASKS _ <<<"$(count_tasks "$SAME" "$PREFIX")"
SAME_LOG="$(bench_log_problems "$SAME/serve.log")"
bench_cleanup "$SAME"
SERVE_PID=""

# --- report ------------------------------------------------------------------------------
echo
echo "POST /task-runner over loopback: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency ($(nproc) CPUs; wrk, server, workers and receiver share them)"
printf '%-10s %9s %9s %9s %9s %9s %9s %9s %9s\n' scenario requests req/s p50_ms p90_ms p99_ms max_ms 2xx non2xx/sockerr
report "$NEW" "new tasks"
report "$SAME" "resubmit"
echo
echo "new tasks: wrk counts answers it read before it stopped; tasks accepted after its last read show only in the state"
echo "new tasks: $NEW_TASKS task(s) accepted in the server's state (by state right after wrk: $NEW_BY_STATUS; after the drain: $NEW_BY_STATUS_AFTER)"
echo "new tasks: callbacks received: $NEW_CALLBACK_SUMMARY, ${NEW_DRAIN_SECONDS}s after wrk stopped"
echo "new tasks: wrk's Non-2xx/Socket errors lines: $(wrk_lines "$NEW")"
grep '^BENCH first_error' "$NEW/wrk.txt" | sed 's/^BENCH first_error /new tasks: first non-2xx answer: /' | head -n 2
echo "$NEW_LOG" | sed 's/^/new tasks: /'
echo "resubmit: tasks in the server's state: $SAME_TASKS (expected 1); first submit answered $FIRST_STATUS"
echo "resubmit: wrk's Non-2xx/Socket errors lines: $(wrk_lines "$SAME")"
grep '^BENCH first_error' "$SAME/wrk.txt" | sed 's/^BENCH first_error /resubmit: first non-2xx answer: /' | head -n 2
echo "$SAME_LOG" | sed 's/^/resubmit: /'
if [ "${BENCH_SHOW_WRK:-0}" = 1 ]; then
    echo; echo "--- wrk, new tasks"; grep -v '^BENCH' "$NEW/wrk.txt"
    echo "--- wrk, resubmit"; grep -v '^BENCH' "$SAME/wrk.txt"
fi
