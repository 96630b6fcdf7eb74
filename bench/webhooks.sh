#!/usr/bin/env bash
# Webhook handling time, request to 202, of `POST /webhooks/github` under concurrent
# deliveries, measured with wrk from another process over loopback.
#
# Scenario "new": every request is a new delivery of a signed push that a rule matches, so
# every 202 has verified the HMAC, parsed the payload, matched the rule and started a real
# task (its worker clones a local repository at the pushed commit and runs `exit 0`).
# Scenario "redeliver": every request redelivers one delivery: verify, parse, match, and
# find the existing task (nothing started). Scenario "unmatched": a push no rule matches.
#
# Knobs (environment): BENCH_THREADS (2), BENCH_CONNECTIONS (16), BENCH_DURATION (10s),
# BENCH_KEEP=1 keeps the temp dir. Needs cargo, git, python3, curl and wrk.
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

THREADS="${BENCH_THREADS:-2}"
CONNECTIONS="${BENCH_CONNECTIONS:-16}"
DURATION="${BENCH_DURATION:-10s}"
SECRET="bench-webhook-secret-0123"

WORK="$(mktemp -d /tmp/taskrunner-bench-webhooks.XXXXXX)"
finish() {
    bench_cleanup "$WORK"
    if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap finish EXIT
trap 'exit 130' INT TERM

bench_need_wrk || { echo "cannot install wrk" >&2; exit 1; }
bench_build || exit 1

# A local repository with one commit: what the matched rule clones.
REPO="$WORK/repo"
mkdir -p "$REPO"
git -C "$REPO" init -q -b main
echo x >"$REPO/README"
git -C "$REPO" add -A
git -C "$REPO" -c user.name=bench -c user.email=bench@example.invalid commit -q -m init
SHA="$(git -C "$REPO" rev-parse HEAD)"

cat >"$WORK/taskrunner.toml" <<TOML
[[webhooks.rules]]
provider = "github"
repository = "bench/app"
ref = "refs/heads/main"
task_file_name = "ok.sh"
clone_url = "file://$REPO"
TOML

# The payload, and its signature (HMAC-SHA256 of the raw body, hex).
payload() {
    printf '{"ref":"%s","before":"%s","after":"%s","repository":{"full_name":"bench/app","clone_url":"https://git.example.invalid/bench/app.git"},"commits":[{"added":["src/a.rs"],"modified":[],"removed":[]}]}' \
        "$1" "0000000000000000000000000000000000000000" "$SHA"
}
sign() { printf 'sha256=%s' "$(openssl dgst -sha256 -hmac "$SECRET" -r "$1" | cut -d' ' -f1)"; }
payload refs/heads/main >"$WORK/matched.json"
payload refs/heads/other >"$WORK/unmatched.json"

run_scenario() {
    local name="$1" mode="$2" body="$3" dir="$WORK/$1"
    mkdir -p "$dir/data" "$dir/tasks"
    printf '%s\n' '#!/bin/sh' 'exit 0' >"$dir/tasks/ok.sh"
    printf '%s' "$SECRET" | "$TASKRUNNER_BIN" secret set webhook-github --data-dir "$dir/data" 2>/dev/null
    bench_start_server "$dir" TASKRUNNER_CONFIG="$WORK/taskrunner.toml" || return 1
    local signature
    signature="$(sign "$body")"
    # One delivery first, so the redelivery scenario finds its task.
    curl -s -o /dev/null -X POST "$SERVE_URL/webhooks/github" -H 'Content-Type: application/json' \
        -H 'X-GitHub-Event: push' -H "X-GitHub-Delivery: $name-same" \
        -H "X-Hub-Signature-256: $signature" --data-binary "@$body"
    BENCH_BODY_FILE="$body" BENCH_SIGNATURE="$signature" BENCH_MODE="$mode" BENCH_PREFIX="$name" \
        timeout 300 wrk -t "$THREADS" -c "$CONNECTIONS" -d "$DURATION" --timeout 10s --latency \
        -s "$BENCH_DIR/webhooks.lua" "$SERVE_URL" >"$dir/wrk.txt" 2>&1
    TASKS_STARTED="$(python3 -c '
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=10)
print(db.execute("SELECT count(*) FROM executions").fetchone()[0])' "$dir/data/engine.db")"
    echo "$TASKS_STARTED" >"$dir/tasks.count"
    bench_log_problems "$dir/serve.log" >"$dir/log.txt"
    bench_cleanup "$dir"
    SERVE_PID=""
}

figure() { sed -n "s/^BENCH $2 //p" "$WORK/$1/wrk.txt" | head -n 1; }
report() {
    local name="$1" s2xx other
    s2xx="$(grep -E '^BENCH status_2[0-9][0-9] ' "$WORK/$name/wrk.txt" | awk '{n += $3} END {print n + 0}')"
    other="$(grep -E '^BENCH status_[0-9]+ ' "$WORK/$name/wrk.txt" | grep -v 'status_2[0-9][0-9] ' | awk '{n += $3} END {print n + 0}')"
    printf '%-10s %9s %9s %9s %9s %9s %9s %9s %9s %7s\n' "$name" \
        "$(figure "$name" requests)" "$(figure "$name" rps)" "$(figure "$name" p50_ms)" \
        "$(figure "$name" p90_ms)" "$(figure "$name" p99_ms)" "$(figure "$name" max_ms)" \
        "$s2xx" "$other/$(figure "$name" errors)" "$(cat "$WORK/$name/tasks.count")"
}

for scenario in "new unique $WORK/matched.json" "redeliver same $WORK/matched.json" "unmatched unique $WORK/unmatched.json"; do
    # shellcheck disable=SC2086
    set -- $scenario
    echo "scenario $1: wrk -t$THREADS -c$CONNECTIONS -d$DURATION" >&2
    run_scenario "$1" "$2" "$3" || exit 1
done

echo
echo "POST /webhooks/github over loopback, request to 202: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency ($(nproc) CPUs shared by wrk, server and workers)"
printf '%-10s %9s %9s %9s %9s %9s %9s %9s %9s %7s\n' scenario requests req/s p50_ms p90_ms p99_ms max_ms 2xx non2xx/err tasks
for name in new redeliver unmatched; do report "$name"; done
for name in new redeliver unmatched; do
    grep '^BENCH first_error' "$WORK/$name/wrk.txt" | sed "s/^BENCH first_error /$name: first non-2xx: /" | head -n 1
    sed "s/^/$name: /" "$WORK/$name/log.txt"
done
echo "tasks: executions in the server's state at the end (new: one per delivery; redeliver: 1; unmatched: 0)"
