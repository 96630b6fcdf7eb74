#!/usr/bin/env bash
# taskrunner's worker runner on CodeBuild: `runner.sh prepare|run|keep`, one call per phase.
# It is embedded verbatim in runner-buildspec.yml (a buildspecOverride must be self-contained);
# a test checks the two copies are the same.
#
# Input (environment, set by StartBuild):
#   TASKRUNNER_SPEC           base64 of the task spec JSON (secret names only)
#   TASKRUNNER_GIT_TOKEN_<i>  token of git entry i (SECRETS_MANAGER: CodeBuild fetched it)
#   TASKRUNNER_KEEP_SECONDS   how long `keep` holds the worker after the task (0: not at all)
#   TASKRUNNER_WORKSPACE      where repositories are cloned (default under CODEBUILD_SRC_DIR)
#   TASKRUNNER_STATE_DIR      where the runner keeps its own files (default /tmp/taskrunner)
#   CODEBUILD_SRC_DIR_tasks   the deployment's tasks directory, when the build has that source
#   CODEBUILD_SRC_DIR_cli     the taskrunner CLI the deployment ships (a file `taskrunner`)
# Lines starting with "[taskrunner] " are read back by the CodeBuild backend.
set -euo pipefail

state_dir="${TASKRUNNER_STATE_DIR:-/tmp/taskrunner}"
workspace="${TASKRUNNER_WORKSPACE:-${CODEBUILD_SRC_DIR:-$PWD}/taskrunner-workspace}"
mkdir -p "$state_dir" "$workspace"

note() { printf '[taskrunner] %s\n' "$*"; }

# The taskrunner CLI the deployment ships, first on PATH for the startup script and the task
# (S3 keeps no file modes, hence the copy). Without it a task still runs; the CLI is missing.
cli_dir="${CODEBUILD_SRC_DIR_cli:-}"
if [[ -n "$cli_dir" && -f "$cli_dir/taskrunner" ]]; then
    mkdir -p "$state_dir/bin"
    install -m 0755 "$cli_dir/taskrunner" "$state_dir/bin/taskrunner"
    export PATH="$state_dir/bin:$PATH"
fi
fail() {
    printf '[taskrunner] error: %s\n' "$*"
    exit 1
}

# The spec as shell assignments (every value quoted by Python's shlex).
load_spec() {
    local assignments
    assignments="$(python3 -c '
import base64, json, os, shlex
spec = json.loads(base64.b64decode(os.environ["TASKRUNNER_SPEC"]))
def put(name, value):
    print("%s=%s" % (name, shlex.quote("" if value is None else str(value))))
put("task_file", spec["task_file"])
put("startup_script", spec.get("startup_script"))
put("bypass_ssl", "1" if spec.get("bypass_ssl_verification") else "")
git = spec.get("git") or []
put("git_count", len(git))
for i, g in enumerate(git):
    put("git_url_%d" % i, g["remote_url"])
    put("git_user_%d" % i, g.get("username") or "git")
    put("git_path_%d" % i, g.get("local_path") or ".")
    put("git_branch_%d" % i, g.get("branch"))
    put("git_commit_%d" % i, g.get("commit"))
    put("git_depth_%d" % i, g.get("fetch_depth"))
    put("git_secret_%d" % i, g.get("secret_name"))
    put("git_sparse_%d" % i, "\n".join(g.get("sparse_checkout_folders") or []))
')" || fail "TASKRUNNER_SPEC is missing or not base64 JSON of a task spec"
    eval "$assignments"
}

# The URL as it may be shown: without user or password.
display_url() { printf '%s' "$1" | sed -E 's#://[^/@]*@#://#'; }

# git with our credential helper only. The helper names the token variable; the shell that
# git starts for it expands the variable, so the token is never in argv or in .git/config.
git_with_token() {
    local i="$1"
    shift
    local options=(-c credential.helper= -c "credential.helper=!f() { echo \"username=\$TASKRUNNER_GIT_USER\"; echo \"password=\$TASKRUNNER_GIT_TOKEN_$i\"; }; f")
    if [[ -n "$bypass_ssl" ]]; then
        options+=(-c http.sslVerify=false)
    fi
    local user_var="git_user_$i"
    GIT_TERMINAL_PROMPT=0 TASKRUNNER_GIT_USER="${!user_var}" git "${options[@]}" "$@"
}

clone_one() {
    local i="$1"
    local url_var="git_url_$i" path_var="git_path_$i" branch_var="git_branch_$i"
    local commit_var="git_commit_$i" depth_var="git_depth_$i" secret_var="git_secret_$i"
    local sparse_var="git_sparse_$i"
    local url="${!url_var}" path="${!path_var}" branch="${!branch_var}"
    local commit="${!commit_var}" depth="${!depth_var}" secret="${!secret_var}"
    local sparse="${!sparse_var}"
    case "/$path/" in
    //* | */../*) fail "local_path \"$path\" must be a relative path inside the workspace, without '..'" ;;
    esac
    local shown
    shown="$(display_url "$url")"
    local what="cloning $shown"
    if [[ -n "$secret" ]]; then
        what="$what (secret \"$secret\")"
        local token_var="TASKRUNNER_GIT_TOKEN_$i"
        [[ -n "${!token_var:-}" ]] || fail "$what failed: the secret's value did not reach the worker"
    fi
    local destination="$workspace/$path"
    local args=(clone)
    [[ -n "$depth" ]] && args+=("--depth=$depth")
    [[ -n "$branch" ]] && args+=("--branch=$branch")
    [[ -n "$sparse" ]] && args+=(--sparse)
    args+=(-- "$url" "$destination")
    note "cloning $shown into ${path}"
    local log="$state_dir/git-$i.log"
    if ! git_with_token "$i" "${args[@]}" >"$log" 2>&1; then
        cat "$log"
        fail "$what failed: $(last_git_error "$log")"
    fi
    if [[ -n "$sparse" ]]; then
        local folders=()
        mapfile -t folders <<<"$sparse"
        (cd "$destination" && git_with_token "$i" sparse-checkout set --cone -- "${folders[@]}") >"$log" 2>&1 ||
            fail "$what failed: sparse checkout: $(last_git_error "$log")"
    fi
    if [[ -n "$commit" ]]; then
        if [[ -n "$depth" ]]; then
            (cd "$destination" && git_with_token "$i" fetch "--depth=$depth" origin "$commit") >"$log" 2>&1 ||
                fail "$what failed: fetching commit $commit: $(last_git_error "$log")"
        fi
        (cd "$destination" && git_with_token "$i" checkout --detach "$commit") >"$log" 2>&1 ||
            fail "$what failed: checking out $commit: $(last_git_error "$log")"
    fi
}

# git's last fatal:/error: line, else its last line.
last_git_error() {
    local line
    line="$(grep -E '^(fatal|error): ' "$1" | tail -n 1 || true)"
    [[ -n "$line" ]] || line="$(grep -v '^[[:space:]]*$' "$1" | tail -n 1 || true)"
    line="${line#fatal: }"
    line="${line#error: }"
    printf '%s' "${line:-git gave no error message}"
}

# The environment the task and the startup script see: no git tokens, no spec internals.
without_tokens() {
    local unset_args=()
    local name
    for name in $(compgen -e); do
        case "$name" in
        TASKRUNNER_GIT_TOKEN_* | TASKRUNNER_GIT_USER) unset_args+=(-u "$name") ;;
        esac
    done
    env "${unset_args[@]}" TASKRUNNER_WORKSPACE="$workspace" PYTHONUNBUFFERED=1 "$@"
}

# Sets `root`, where the task file is and where it runs: the deployment's tasks directory
# first (CodeBuild's secondary source "tasks", a copy of the S3 prefix), then the checkout of
# the first repository. The same lookup, and the same error, as the embedded mode's worker.
task_root() {
    local looked=()
    local tasks_dir="${CODEBUILD_SRC_DIR_tasks:-}"
    if [[ -n "$tasks_dir" ]]; then
        if [[ -f "$tasks_dir/$task_file" ]]; then
            root="$tasks_dir"
            return 0
        fi
        looked+=("the tasks directory ($tasks_dir/$task_file)")
    else
        looked+=("the tasks directory (none configured)")
    fi
    if [[ "$git_count" -gt 0 ]]; then
        if [[ -f "$workspace/$git_path_0/$task_file" ]]; then
            root="$workspace/$git_path_0"
            return 0
        fi
        looked+=("the checkout of git_configs[0] ($workspace/$git_path_0/$task_file)")
    else
        looked+=("a git checkout (no git_configs given)")
    fi
    fail "task file \"$task_file\" not found: looked in ${looked[0]} and in ${looked[1]}"
}

prepare() {
    load_spec
    local i
    for ((i = 0; i < git_count; i++)); do
        clone_one "$i"
    done
    if [[ -n "$startup_script" ]]; then
        note "running the startup script"
        local code=0
        (cd "$workspace" && without_tokens bash -c "$startup_script") || code=$?
        [[ "$code" -eq 0 ]] || fail "the startup script failed (exit code $code)"
    fi
    local root
    task_root
    note "prepared"
}

run() {
    load_spec
    local root
    task_root
    local command=(bash)
    [[ "$task_file" == *.py ]] && command=(python3 -u)
    note "running $task_file"
    local code=0
    (cd "$root" && without_tokens "${command[@]}" "$task_file") || code=$?
    if [[ "${TASKRUNNER_KEEP_SECONDS:-0}" -gt 0 ]]; then
        date +%s >"$state_dir/keep"
    fi
    note "exit_code=$code"
    return "$code"
}

# Holds the worker while the keep marker exists, at most TASKRUNNER_KEEP_SECONDS.
# Deleting the marker (or StopBuild) releases it sooner.
keep() {
    local keep_seconds="${TASKRUNNER_KEEP_SECONDS:-0}"
    [[ -f "$state_dir/keep" && "$keep_seconds" -gt 0 ]] || return 0
    note "keeping the worker for up to $keep_seconds s (terminate_on_completion: false)"
    local until=$(($(date +%s) + keep_seconds))
    while [[ -f "$state_dir/keep" && "$(date +%s)" -lt "$until" ]]; do
        sleep "${TASKRUNNER_KEEP_POLL_SECONDS:-15}"
    done
    note "keep time over"
}

case "${1:-}" in
prepare) prepare ;;
run) run ;;
keep) keep ;;
*)
    echo "usage: runner.sh prepare|run|keep" >&2
    exit 2
    ;;
esac
