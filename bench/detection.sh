#!/usr/bin/env bash
# Embedded detection latency: a task's process ends -> its execution enters
# FinishAndCallback, over BENCH_TASKS (200) tasks of 1 to 10.8 s (their ends spread over ten
# seconds; BENCH_SPREAD=0: all one second, one burst of ends) submitted by
# BENCH_CONCURRENCY (8) submitters to a release `taskrunner serve`. Prints p50/p99/max in milliseconds and
# how many safety-net polls there were (0: every wait was resumed by its worker's end).
# TASKRUNNER_BIN=PATH uses that binary instead of building one. BENCH_KEEP=1 keeps the
# temp dir. Needs cargo and python3.
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TASKS="${BENCH_TASKS:-200}"
CONCURRENCY="${BENCH_CONCURRENCY:-8}"

WORK="$(mktemp -d /tmp/taskrunner-bench-detection.XXXXXX)"
finish() {
    bench_cleanup "$WORK"
    if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap finish EXIT
trap 'exit 130' INT TERM

if [ -z "${TASKRUNNER_BIN:-}" ]; then
    bench_build || exit 1
fi
mkdir -p "$WORK/tasks"
printf '%s\n' '#!/bin/sh' 'sleep "$NAP"' >"$WORK/tasks/nap.sh"
bench_start_server "$WORK" || exit 1
echo "detection: $TASKS tasks, $CONCURRENCY submitters ..." >&2
python3 "$BENCH_DIR/detection.py" "$SERVE_URL" "$BENCH_API_KEY" "det-$(date +%s)-$$" "$TASKS" "$CONCURRENCY"
bench_log_problems "$WORK/serve.log"
