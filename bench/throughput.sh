#!/usr/bin/env bash
# End-to-end throughput, side by side in one run: `taskrunner serve` against the original
# app's design, a thread per task running the task file as a subprocess and a callback POST,
# nothing persisted, in two forms: on the original's own stack (FastAPI, uvicorn, requests:
# bench/thread_per_task_fastapi.py, in a virtual environment under ~/.cache made on the
# first run from the package registry; BENCH_VENV=DIR puts it elsewhere) and on Python's
# standard library (bench/thread_per_task.py, its leanest form). Same workload for all:
# BENCH_TASKS (1000) no-op tasks submitted by BENCH_CONCURRENCY (16) keep-alive submitters,
# timed until every callback arrived. Prints per system: wall time to the last callback,
# submit p50/p99, server CPU seconds (its own plus reaped children's; for taskrunner also its
# worker host's, which runs the tasks), peak RSS, and the throughput ratios.
# BENCH_BASELINE_BIN=/path/to/an/older/taskrunner also runs that binary, in the same run,
# as a column ("before"). BENCH_KEEP=1 keeps the temp dir. Needs cargo and python3.
# Removing the temp dir at the end makes file creation dearer for a few minutes on ext4
# without a journal: leave about 6 minutes between runs there.
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TASKS="${BENCH_TASKS:-1000}"
CONCURRENCY="${BENCH_CONCURRENCY:-16}"

WORK="$(mktemp -d /tmp/taskrunner-bench-throughput.XXXXXX)"
finish() {
    bench_cleanup "$WORK/before"
    bench_cleanup "$WORK/taskrunner"
    if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap finish EXIT
trap 'exit 130' INT TERM

bench_build || exit 1
PREFIX="tp-$(date +%s)-$$"

# --- the thread-per-task design --------------------------------------------------------
# run_python NAME PYTHON PROGRAM: serves $WORK/NAME with the comparison program PROGRAM run
# by PYTHON, prints the figures' JSON.
run_python() {
    local name="$1" python="$2" program="$3" pid status=0
    mkdir -p "$WORK/$name/tasks"
    printf '%s\n' '#!/bin/sh' 'exit 0' >"$WORK/$name/tasks/ok.sh"
    "$python" "$BENCH_DIR/$program" "$WORK/$name/port" "$WORK/$name/tasks" "$BENCH_API_KEY" \
        2>"$WORK/$name/server.log" &
    pid=$!
    for _ in $(seq 1 100); do [ -s "$WORK/$name/port" ] && break; sleep 0.05; done
    echo "thread-per-task ($program): $TASKS tasks, $CONCURRENCY submitters ..." >&2
    python3 "$BENCH_DIR/throughput_load.py" "http://127.0.0.1:$(cat "$WORK/$name/port")" \
        "$BENCH_API_KEY" "$PREFIX-$name" "$pid" "$TASKS" "$CONCURRENCY" || status=$?
    kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    return "$status"
}

# The original app's own stack (FastAPI, uvicorn, requests) in a virtual environment kept
# between runs; without the package registry that column is left out.
VENV="${BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/taskrunner-bench/venv}"
FASTAPI='null'
if [ -x "$VENV/bin/python" ] || { python3 -m venv "$VENV" &&
    "$VENV/bin/pip" install -q fastapi==0.165.0 uvicorn==0.55.0 requests==2.34.2; }; then
    FASTAPI="$(run_python fastapi "$VENV/bin/python" thread_per_task_fastapi.py)" || exit 1
else
    echo "no FastAPI (pip install failed): its column is left out" >&2
fi
PY="$(run_python python python3 thread_per_task.py)" || exit 1

# --- taskrunner serve ------------------------------------------------------------------
# run_taskrunner NAME: serves $WORK/NAME with $TASKRUNNER_BIN, prints the figures' JSON.
run_taskrunner() {
    local name="$1"
    mkdir -p "$WORK/$name/tasks"
    cp "$WORK/python/tasks/ok.sh" "$WORK/$name/tasks/ok.sh"
    BENCH_RUST_LOG="${BENCH_RUST_LOG:-warn}" bench_start_server "$WORK/$name" || return 1
    echo "taskrunner serve ($name, $TASKRUNNER_BIN): $TASKS tasks, $CONCURRENCY submitters ..." >&2
    python3 "$BENCH_DIR/throughput_load.py" "$SERVE_URL" "$BENCH_API_KEY" "$PREFIX-$name" \
        "$SERVE_PID" "$TASKS" "$CONCURRENCY" "$WORK/$name/data/worker-host.pid"
    bench_log_problems "$WORK/$name/serve.log" >"$WORK/$name/problems.txt"
    bench_cleanup "$WORK/$name"
    SERVE_PID=""
}

# The current build runs before the older one: an older build removes directories as it
# goes, and on ext4 without a journal every file created in the next minutes is searched
# for past the inodes deleted (see the README's performance section).
TR="$(run_taskrunner taskrunner)" || exit 1
BASE='null'
if [ -n "${BENCH_BASELINE_BIN:-}" ]; then
    TASKRUNNER_BIN="$BENCH_BASELINE_BIN"
    BASE="$(run_taskrunner before)" || exit 1
fi

python3 - "$FASTAPI" "$PY" "$TR" "$BASE" <<'EOF2'
import json, sys
fastapi, py, tr, base = (json.loads(a) for a in sys.argv[1:5])
rows = [("wall time to last callback (s)", "wall_seconds"), ("submit p50 (ms)", "submit_p50_ms"),
        ("submit p99 (ms)", "submit_p99_ms"), ("server CPU (s)", "server_cpu_seconds"),
        ("peak RSS (MiB)", "peak_rss_mib"), ("worker host peak RSS (MiB)", "host_peak_rss_mib")]
columns = ([("tpt FastAPI", fastapi)] if fastapi else []) + [("tpt stdlib", py)]
columns += ([("before", base)] if base else []) + [("taskrunner", tr)]
print(f"{'':32}" + "".join(f" {name:>16}" for name, _ in columns))
for label, key in rows:
    print(f"{label:32}" + "".join(f" {r.get(key, 0.0):>16}" for _, r in columns))
for name, r in columns[:-1]:
    print(f"throughput ratio (taskrunner / {name}, tasks per second): "
          f"{r['wall_seconds'] / tr['wall_seconds']:.2f}x")
for name, r in columns:
    print(f"{name}: accepted {r['accepted']}/{r['tasks']}, answers {r['answers']}, "
          f"callbacks {r['callbacks']} ({r['unique_callbacks']} tasks) {r['callback_statuses']}")
EOF2
for name in before taskrunner; do
    [ -f "$WORK/$name/problems.txt" ] && echo "$name: $(cat "$WORK/$name/problems.txt")"
done
