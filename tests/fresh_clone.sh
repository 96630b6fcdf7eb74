#!/usr/bin/env bash
# The README's main command, as a new user meets it: two clones of this repository on one
# machine, sharing the per-user data directory, three runs of `run examples/hello.json`.
# Every run must exit 0 and print its own task's log. Usage: tests/fresh_clone.sh [BINARY]
set -euo pipefail
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
bin=${1:-${CARGO_TARGET_DIR:-$repo/target}/debug/taskrunner}
bin=$(realpath "$bin")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# One user: the per-user data directory is shared by both clones.
export HOME=$work/home
unset XDG_DATA_HOME TASKRUNNER_DATA_DIR
mkdir -p "$HOME"
git clone --quiet "$repo" "$work/first"
git clone --quiet "$repo" "$work/second"

runs=0
for clone in first second first; do
  runs=$((runs + 1))
  echo "== run $runs in $clone"
  (cd "$work/$clone" && "$bin" run examples/hello.json) >"$work/out" 2>"$work/err" || {
    echo "run $runs in $clone exited $?"; cat "$work/err" "$work/out"; exit 1; }
  cat "$work/err" | tail -n 2
  grep -q '"success": true' "$work/out" || { echo "run $runs: no successful callback body"; cat "$work/out"; exit 1; }
  grep -q 'hello from taskrunner' "$work/out" || { echo "run $runs: the task's log is missing"; cat "$work/out"; exit 1; }
  grep -o '"task_id": "[^"]*"' "$work/out"
done
echo "three runs, three exit codes 0, three task logs"
