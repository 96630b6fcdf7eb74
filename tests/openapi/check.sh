#!/usr/bin/env bash
# The OpenAPI document against the server it describes: schemathesis generates requests from
# `GET /openapi.json` (valid and invalid ones) and sends them to a real `taskrunner serve`;
# every answer must have a documented status code, match its documented schema and content
# type, and none may be a 5xx. Usage: tests/openapi/check.sh [BINARY] [MAX_EXAMPLES]
set -euo pipefail
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
bin=$(realpath "${1:-${CARGO_TARGET_DIR:-$repo/target}/debug/taskrunner}")
examples=${2:-40}
work=$(mktemp -d)
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# An empty folder as working and tasks directory: generated task files and local repository
# paths point at nothing, so no generated request gets as far as running a script.
mkdir -p "$work/cwd" "$work/tasks"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
key="openapi-check-key"
(cd "$work/cwd" && TASKRUNNER_API_KEY=$key exec "$bin" serve --listen "127.0.0.1:$port" \
  --data-dir "$work/data" --tasks-dir "$work/tasks" --log-format compact) >"$work/serve.log" 2>&1 &
server=$!
base="http://127.0.0.1:$port"
# Python's standard library rather than curl: python3 is here anyway.
http() { python3 - "$@" <<'PY'
import sys, urllib.request
url, body = sys.argv[1], (sys.argv[2].encode() if len(sys.argv) > 2 else None)
request = urllib.request.Request(url, data=body, headers={
    "Authorization": "Bearer openapi-check-key", "Content-Type": "application/json"})
urllib.request.urlopen(request, timeout=5).read()
PY
}
for _ in $(seq 100); do
  http "$base/healthz" 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { echo "serve exited:"; cat "$work/serve.log"; exit 1; }
  sleep 0.1
done

# A task that exists (it ends as `error`: its file is missing), so the per-task routes answer
# 200 and 409 as well as 404.
http "$base/task-runner" '{"task_id": "known", "task_file_name": "missing.sh", "worker_config": {}}'

status=0
# From the scratch folder: schemathesis keeps its cache (.schemathesis/) in the current one.
cd "$work"
schemathesis --config-file "$repo/tests/openapi/schemathesis.toml" run "$base/openapi.json" \
  --header "Authorization: Bearer $key" \
  --checks all \
  --max-examples "$examples" \
  --seed 1 \
  --workers 1 \
  --request-timeout 10 \
  --suppress-health-check all \
  --report junit --report-dir "$work/report" || status=$?
if [ "$status" -ne 0 ]; then
  echo "== serve log (last 40 lines)"
  tail -n 40 "$work/serve.log"
fi
exit "$status"
