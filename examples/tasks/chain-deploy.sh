#!/usr/bin/env bash
# A parent task: train, evaluate and publish, one child task at a time, then a smoke test
# that fails. `taskrunner` is on the task's PATH and finds the API (TASKRUNNER_API_URL) and
# this task's token (TASKRUNNER_TASK_TOKEN) by itself. CALLBACK_URL, when set, is where each
# child reports its own result.
set -euo pipefail

child() { # child TASK_ID TASK_FILE STEP
  local callback=""
  if [ -n "${CALLBACK_URL:-}" ]; then callback=", \"callback_url\": \"$CALLBACK_URL\""; fi
  cat > "$1.json" <<JSON
{"task_id": "$1", "task_file_name": "$2",
 "worker_config": {"env_variables": {"STEP": "$3"}}$callback}
JSON
  taskrunner submit "$1.json" --wait > "$1.result.json"
}

for step in train evaluate publish; do
  child "$step" chain-step.sh "$step"
  echo "child $step succeeded"
done
if child smoke-test fail.sh smoke; then
  echo "smoke test passed"
else
  echo "smoke test failed (exit $?): not deploying"
  exit 4
fi
