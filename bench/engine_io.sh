#!/usr/bin/env bash
# The engine database's I/O per task: `strace -f` over a release `taskrunner serve` while
# BENCH_TASKS (20) no-op tasks run one after another (each submitted once the previous one
# called back, so no two tasks share a commit), after 20 tasks of warm-up; with
# BENCH_CONCURRENCY=C, submitted by C submitters at once (bench/throughput_load.py), as
# under load, where steps of several tasks share commits. Prints per task,
# for engine.db: commits, WAL frames (and which table or index each page belongs to), WAL
# bytes written, pread64/pwrite64/fsync/fcntl calls, and the reads of the reader thread.
# BENCH_BASELINE_BIN=/path/to/an/older/taskrunner measures that binary too, in the same run.
# TASKRUNNER_BIN=PATH uses that binary instead of building one. BENCH_KEEP=1 keeps the temp
# dir. Needs cargo, python3, strace and sqlite3.
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TASKS="${BENCH_TASKS:-20}"
for tool in strace sqlite3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "engine_io: $tool is missing" >&2; exit 1; }
done

WORK="$(mktemp -d /tmp/taskrunner-bench-engine-io.XXXXXX)"
STRACE_PID=""
finish() {
    [ -n "$STRACE_PID" ] && kill -INT "$STRACE_PID" 2>/dev/null && wait "$STRACE_PID" 2>/dev/null
    bench_cleanup "$WORK/run"
    bench_remove_work "$WORK"
}
trap finish EXIT
trap 'exit 130' INT TERM
bench_binary || exit 1

# measure NAME BINARY: runs the load on BINARY and prints its figures.
measure() {
    local name="$1" bin="$2" run="$WORK/run"
    rm -rf "$run"
    mkdir -p "$run/tasks"
    printf '%s\n' '#!/bin/sh' 'exit 0' >"$run/tasks/ok.sh"
    TASKRUNNER_BIN="$bin" BENCH_RUST_LOG=warn bench_start_server "$run" || return 1
    python3 "$BENCH_DIR/engine_io.py" load "$SERVE_URL" "$BENCH_API_KEY" "warm" 20 >/dev/null || return 1
    strace -f -e trace=pwrite64,pread64,fsync,fdatasync,fcntl -o "$run/serve.trace" \
        -p "$SERVE_PID" 2>/dev/null &
    STRACE_PID=$!
    sleep 1
    if [ -n "${BENCH_CONCURRENCY:-}" ]; then
        python3 "$BENCH_DIR/throughput_load.py" "$SERVE_URL" "$BENCH_API_KEY" "io" "$SERVE_PID" \
            "$TASKS" "$BENCH_CONCURRENCY" >&2 || return 1
        sleep 0.5
    else
        python3 "$BENCH_DIR/engine_io.py" load "$SERVE_URL" "$BENCH_API_KEY" "io" "$TASKS" >&2 || return 1
    fi
    ls -l "/proc/$SERVE_PID/fd" >"$run/fds.txt"
    kill -INT "$STRACE_PID"; wait "$STRACE_PID" 2>/dev/null; STRACE_PID=""
    bench_cleanup "$run"
    SERVE_PID=""
    echo "== $name ($bin)"
    python3 "$BENCH_DIR/engine_io.py" report "$run" "$TASKS"
}

measure now "$TASKRUNNER_BIN" || exit 1
if [ -n "${BENCH_BASELINE_BIN:-}" ]; then
    measure before "$BENCH_BASELINE_BIN" || exit 1
fi
