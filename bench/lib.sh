# Shared helpers for the benchmark scripts; sourced, not run.
# Everything listens on and talks to 127.0.0.1 only.

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
BENCH_API_KEY="bench-api-key-0123456789"

# Builds the release binary and sets TASKRUNNER_BIN.
bench_build() {
    local target="${CARGO_TARGET_DIR:-$REPO_DIR/target}"
    echo "building taskrunner (release, CARGO_TARGET_DIR=$target) ..." >&2
    (cd "$REPO_DIR" && CARGO_TARGET_DIR="$target" cargo build --release -q -p taskrunner-cli) || return 1
    TASKRUNNER_BIN="$target/release/taskrunner"
    [ -x "$TASKRUNNER_BIN" ] || { echo "no binary at $TASKRUNNER_BIN" >&2; return 1; }
}

# Uses $TASKRUNNER_BIN when it is set, else builds the release binary (bench_build).
bench_binary() {
    [ -n "${TASKRUNNER_BIN:-}" ] || bench_build
}

# Removes the work dir $1, or keeps it (and says where) when BENCH_KEEP=1.
bench_remove_work() {
    if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "kept $1" >&2; else rm -rf "$1"; fi
}

# Starts `taskrunner serve` over $1 (work dir: data/, tasks/ and serve.log inside it).
# Sets SERVE_PID and SERVE_URL. Extra environment can be given as NAME=VALUE arguments.
bench_start_server() {
    local work="$1"; shift
    mkdir -p "$work/data" "$work/tasks"
    env "$@" TASKRUNNER_API_KEY="$BENCH_API_KEY" RUST_LOG="${BENCH_RUST_LOG:-info}" \
        "$TASKRUNNER_BIN" serve --listen 127.0.0.1:0 --log-format json \
        --data-dir "$work/data" --tasks-dir "$work/tasks" \
        >"$work/serve.out" 2>"$work/serve.log" &
    SERVE_PID=$!
    SERVE_URL=""
    local i
    for i in $(seq 1 200); do
        SERVE_URL="$(sed -n 's/^taskrunner listening on //p' "$work/serve.out" | head -n 1)"
        [ -n "$SERVE_URL" ] && return 0
        kill -0 "$SERVE_PID" 2>/dev/null || break
        sleep 0.05
    done
    echo "taskrunner serve did not start; its log:" >&2
    tail -n 20 "$work/serve.log" >&2
    return 1
}

# PIDs of the `taskrunner worker-host` processes whose data directory is under $1.
bench_hosts() {
    local work="$1" pid cmd
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
        cmd="$( { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null)" || continue
        case "$cmd" in
            *worker-host*"$work/"*) echo "$pid" ;;
        esac
    done
}

# Stops the server (SIGTERM, then SIGKILL) and kills every process left in the session of
# the worker host it started under $1 (the host leads its own session).
bench_cleanup() {
    local work="$1" i sup pid sid
    if [ -n "${SERVE_PID:-}" ] && kill -0 "$SERVE_PID" 2>/dev/null; then
        kill -TERM "$SERVE_PID" 2>/dev/null
        for i in $(seq 1 50); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVE_PID" 2>/dev/null
        wait "$SERVE_PID" 2>/dev/null
    fi
    local sups
    sups="$(bench_hosts "$work")"
    if [ -n "$sups" ]; then
        echo "cleanup: killing $(echo "$sups" | wc -l) leftover worker host session(s)" >&2
        for sup in $sups; do
            ps -eo pid=,sid= | while read -r pid sid; do
                [ "$sid" = "$sup" ] && kill -KILL "$pid" 2>/dev/null
            done
        done
    fi
}

# Installs wrk from Debian's packages when it is missing.
bench_need_wrk() {
    command -v wrk >/dev/null 2>&1 && return 0
    echo "wrk is missing; installing it with apt-get ..." >&2
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null || return 1
    command -v wrk >/dev/null 2>&1
}

# Prints the server log's WARN/ERROR lines: their count and the first few distinct messages.
bench_log_problems() {
    local log="$1"
    local warn err
    warn="$(grep -c '"level":"WARN"' "$log" 2>/dev/null)"; warn="${warn:-0}"
    err="$(grep -c '"level":"ERROR"' "$log" 2>/dev/null)"; err="${err:-0}"
    echo "server log: $warn WARN, $err ERROR line(s) ($log)"
    if [ "$warn" != 0 ] || [ "$err" != 0 ]; then
        grep -E '"level":"(WARN|ERROR)"' "$log" \
            | python3 -c '
import collections, json, sys
seen = collections.Counter()
for line in sys.stdin:
    try:
        record = json.loads(line)
    except ValueError:
        continue
    fields = dict(record.get("fields") or {}, **record)
    message = fields.get("message", "")
    error = fields.get("error", "")
    seen[(record.get("level"), message, error)] += 1
for (level, message, error), n in seen.most_common(8):
    print(f"  {n:6d} x {level} {message}" + (f" | error: {error}" if error else ""))
'
    fi
}
