#!/usr/bin/env bash
# Memory of `taskrunner serve` with many tasks in flight (default 1,000 tasks that each run
# `sleep 30`), and the time until all their callbacks arrive. The work is in inflight.py.
#
# Knobs (environment): BENCH_TASKS (1000), BENCH_SLEEP (30), BENCH_SUBMITTERS (8),
# BENCH_WAIT_EXTRA (120), BENCH_KEEP=1 keeps the temp dir. Needs cargo and python3.
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WORK="$(mktemp -d /tmp/taskrunner-bench-inflight.XXXXXX)"
finish() {
    SERVE_PID="$(cat "$WORK/serve.pid" 2>/dev/null)"
    bench_cleanup "$WORK"
    if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap finish EXIT
trap 'exit 130' INT TERM

bench_binary || exit 1
TASKRUNNER_API_KEY="$BENCH_API_KEY" timeout 900 python3 "$BENCH_DIR/inflight.py" "$TASKRUNNER_BIN" "$WORK"
STATUS=$?
bench_log_problems "$WORK/serve.log"
exit "$STATUS"
