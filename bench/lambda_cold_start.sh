#!/usr/bin/env bash
# Cold start, peak RSS and deployment size of the six Lambda function binaries, beside an
# equivalent Python handler (awslambdaric + boto3 clients built at init), on this machine.
#
# Cold start: time from spawning the process to its first `GET /2018-06-01/runtime/invocation/next`
# on a local Runtime API emulator (bench/runtime_api.py, 127.0.0.1 only). That request is held
# open, no event is handed out, and the process is killed. Peak RSS: VmHWM from
# /proc/PID/status read while that request is held. One warm-up start per function is not
# counted, so the file cache is warm: this is process start-up plus init, not the download
# and sandbox creation Lambda adds before it.
#
# Sizes: each binary as built (release), and `zip -9` of it renamed `bootstrap`, as Lambda
# deploys it. Python: the deployment package (app.py, awslambdaric and its dependencies,
# boto3 and its dependencies; source only, no __pycache__), and the same without boto3 and
# its dependencies, which the managed Python runtime already ships. The interpreter itself is
# in neither (the runtime provides it).
#
# Each process gets exactly this environment, nothing else (no PATH, no HOME): the four
# AWS_LAMBDA_* variables the runtime clients require, AWS_REGION and AWS_DEFAULT_REGION
# (Lambda sets both; boto3 reads the second), dummy credentials, and the TASKRUNNER_* variables
# template.yaml sets (dummy values; TASKRUNNER_STATE_MACHINE_ARN for api, worker-events and cleanup only).
# The Python handler gets the api function's set.
#
# Usage: bench/lambda_cold_start.sh [--sam-build DIR] [RUNS]   (RUNS default 20; or BENCH_RUNS)
# --sam-build DIR: measure what `sam build` produced instead (DIR/<LogicalId>/bootstrap for the
# six functions of template.yaml, DIR usually .aws-sam/build); nothing is compiled and the
# Python handler is left out.
# Knobs: CARGO_TARGET_DIR, BENCH_CACHE (venv cache, default ~/.cache/taskrunner-bench),
# BENCH_KEEP=1 keeps the temp dir (process logs, packages, results.json).
# Needs cargo, python3 (3.8+, with venv), zip (installed with apt-get when missing).
set -uo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
SAM_BUILD_DIR=
if [ "${1:-}" = --sam-build ]; then
    [ -n "${2:-}" ] || { echo "--sam-build needs a directory (sam build's --build-dir, default .aws-sam/build)" >&2; exit 2; }
    SAM_BUILD_DIR="$(cd "$2" 2>/dev/null && pwd)" || { echo "--sam-build: no directory $2 (run sam build first)" >&2; exit 2; }
    shift 2
fi
RUNS="${1:-${BENCH_RUNS:-20}}"
case "$RUNS" in ''|*[!0-9]*) echo "RUNS must be a whole number, got '$RUNS'" >&2; exit 2 ;; esac
[ "$RUNS" -ge 1 ] && [ "$RUNS" -le 1000 ] || { echo "RUNS must be 1..1000" >&2; exit 2; }
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_DIR/target}"
CACHE="${BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/taskrunner-bench}"
VENV="$CACHE/lambda-py"
PY_PACKAGES="${BENCH_PY_PACKAGES:-awslambdaric==4.2.2 boto3==1.44.8}"
FUNCTIONS=(api submit poll-worker finish-and-callback worker-events cleanup)
# Their logical ids in template.yaml (sam build's output folders), in the same order.
LOGICAL_IDS=(ApiFunction SubmitFunction PollWorkerFunction FinishAndCallbackFunction WorkerEventsFunction CleanupFunction)
# boto3 and its dependency closure: what the managed Python runtime already provides.
BOTO_DISTS=(boto3 botocore s3transfer jmespath python_dateutil dateutil six urllib3)

WORK="$(mktemp -d /tmp/taskrunner-bench-coldstart.XXXXXX)"
finish() {
    if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap finish EXIT
trap 'exit 130' INT TERM

bytes() { stat -c %s "$1"; }
tree_bytes() { find "$1" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }

# zip, from Debian's packages when missing.
if ! command -v zip >/dev/null 2>&1; then
    echo "zip is missing; installing it with apt-get ..." >&2
    { apt-get update -qq && apt-get install -y -qq zip >/dev/null; } || { echo "cannot install zip" >&2; exit 1; }
fi

# The six function binaries: release, or as sam build left them.
binary() {  # INDEX
    if [ -n "$SAM_BUILD_DIR" ]; then echo "$SAM_BUILD_DIR/${LOGICAL_IDS[$1]}/bootstrap"; else echo "$TARGET_DIR/release/${FUNCTIONS[$1]}"; fi
}
if [ -z "$SAM_BUILD_DIR" ]; then
    echo "building the Lambda functions (release, CARGO_TARGET_DIR=$TARGET_DIR) ..." >&2
    packages=()
    for fn in "${FUNCTIONS[@]}"; do packages+=(-p "taskrunner-fn-$fn"); done
    (cd "$REPO_DIR" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -q "${packages[@]}") || exit 1
fi

# Rust sizes: the binary, and zip -9 of it as `bootstrap`.
size_args=()
for i in "${!FUNCTIONS[@]}"; do
    fn="${FUNCTIONS[$i]}"
    bin="$(binary "$i")"
    [ -x "$bin" ] || { echo "no binary at $bin" >&2; exit 1; }
    mkdir -p "$WORK/zip/$fn"
    cp "$bin" "$WORK/zip/$fn/bootstrap"
    (cd "$WORK/zip/$fn" && zip -9 -q -X "$WORK/zip/$fn.zip" bootstrap) || exit 1
    size_args+=(--size "$fn=$(bytes "$bin"),$(bytes "$WORK/zip/$fn.zip")")
done

# The Python side (not with --sam-build).
if [ -z "$SAM_BUILD_DIR" ]; then
    # A venv in the cache, made once.
    if ! "$VENV/bin/python" -c 'import awslambdaric, boto3' >/dev/null 2>&1; then
        echo "making the Python venv at $VENV ($PY_PACKAGES) ..." >&2
        rm -rf "$VENV"
        mkdir -p "$CACHE"
        python3 -m venv "$VENV" || exit 1
        # shellcheck disable=SC2086
        "$VENV/bin/pip" install -q $PY_PACKAGES || { echo "pip install failed" >&2; exit 1; }
    fi
    # Bytecode for every module, as an installed runtime has it (PYTHONDONTWRITEBYTECODE may be set here).
    "$VENV/bin/python" -m compileall -q "$VENV/lib" >/dev/null 2>&1
    SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    PY_VERSIONS="$("$VENV/bin/python" -c 'import sys, awslambdaric, boto3; print("Python %d.%d.%d, awslambdaric %s, boto3 %s" % (sys.version_info[:3] + (awslambdaric.__version__, boto3.__version__)))')"

    # Python deployment packages: app.py + site-packages (without pip/setuptools and bytecode);
    # then the same without boto3 and its dependencies.
    PKG="$WORK/pkg-full"
    mkdir -p "$PKG"
    cp "$BENCH_DIR/python_handler/app.py" "$PKG/"
    for entry in "$SITE"/*; do
        case "$(basename "$entry")" in
            pip|pip-*|setuptools|setuptools-*|_distutils_hack|distutils-precedence.pth|pkg_resources|__pycache__) continue ;;
        esac
        cp -r "$entry" "$PKG/"
    done
    find "$PKG" -name __pycache__ -type d -prune -exec rm -rf {} +
    find "$PKG" -name '*.pyc' -delete
    PKG_SLIM="$WORK/pkg-without-boto3"
    cp -r "$PKG" "$PKG_SLIM"
    for dist in "${BOTO_DISTS[@]}"; do
        rm -rf "${PKG_SLIM:?}/$dist" "$PKG_SLIM"/"$dist"-*.dist-info "$PKG_SLIM/$dist.py"
    done
    for dir in "$PKG" "$PKG_SLIM"; do
        (cd "$dir" && zip -9 -q -X -r "$dir.zip" .) || exit 1
    done
    echo "Python package without boto3 holds: $(ls "$PKG_SLIM" | grep -v dist-info | tr '\n' ' ')" >&2

    # The handler's task root: app.py only; awslambdaric and boto3 load from the venv (with bytecode),
    # as on the managed runtime, where boto3 is in the runtime's site-packages.
    mkdir -p "$WORK/task"
    cp "$BENCH_DIR/python_handler/app.py" "$WORK/task/"
fi

mkdir -p "$WORK/logs"

# The environments.
envfile() {  # NAME [with-state-machine]
    local file="$WORK/env-$1"
    {
        echo "AWS_LAMBDA_FUNCTION_NAME=taskrunner-$1"
        echo "AWS_LAMBDA_FUNCTION_MEMORY_SIZE=128"
        echo "AWS_LAMBDA_FUNCTION_VERSION=\$LATEST"
        echo "AWS_REGION=us-east-1"
        echo "AWS_DEFAULT_REGION=us-east-1"
        echo "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE"
        echo "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        echo "AWS_SESSION_TOKEN=bench-dummy-session-token"
        echo "TASKRUNNER_SECRET_PREFIX=taskrunner/"
        echo "TASKRUNNER_CODEBUILD_PROJECT=taskrunner-bench-runner"
        echo "TASKRUNNER_CODEBUILD_LOG_GROUP=/aws/codebuild/taskrunner-bench-runner"
        if [ "${2:-}" = with-state-machine ]; then
            echo "TASKRUNNER_STATE_MACHINE_ARN=arn:aws:states:us-east-1:000000000000:stateMachine:taskrunner-bench"
        fi
    } >"$file"
    echo "$file"
}
targets=()
for i in "${!FUNCTIONS[@]}"; do
    fn="${FUNCTIONS[$i]}"
    case "$fn" in api|worker-events|cleanup) sm=with-state-machine ;; *) sm= ;; esac
    targets+=(--target "$fn" "$WORK" "$(envfile "$fn" $sm)" -- "$(binary "$i")")
done
if [ -z "$SAM_BUILD_DIR" ]; then
    py_env="$(envfile python with-state-machine)"
    targets+=(--target "python (awslambdaric+boto3)" "$WORK/task" "$py_env" -- "$VENV/bin/python" -m awslambdaric app.handler)
    size_args+=(--size "python (awslambdaric+boto3)=$(tree_bytes "$PKG"),$(bytes "$PKG.zip")")
    size_args+=(--extra-row "  package without boto3=$(tree_bytes "$PKG_SLIM"),$(bytes "$PKG_SLIM.zip")")
fi

echo "measuring: $RUNS run(s) per function, interleaved, after 1 warm-up each ..." >&2
python3 "$BENCH_DIR/runtime_api.py" measure --runs "$RUNS" --warmup 1 --logdir "$WORK/logs" \
    --json "$WORK/results.json" "${targets[@]}" "${size_args[@]}" \
    >"$WORK/table.txt" || {
    echo "measurement failed; process logs:" >&2
    for log in "$WORK"/logs/*.log; do echo "== $log" >&2; tail -n 20 "$log" >&2; done
    exit 1
}

echo
echo "Lambda cold start (spawn -> first GET /next), $RUNS runs each, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
commit="$(cd "$REPO_DIR" && git rev-parse --short HEAD 2>/dev/null || echo '?')"
if [ -n "$SAM_BUILD_DIR" ]; then
    echo "Rust: sam build output $SAM_BUILD_DIR/<LogicalId>/bootstrap ($(file -b "$(binary 0)" 2>/dev/null | cut -d, -f1-2)), worktree at $commit"
else
    echo "Rust: release x86_64 binaries of $commit, $(rustc --version 2>/dev/null)"
    echo "Python: $PY_VERSIONS, run as: python -m awslambdaric app.handler (cwd = task root holding app.py)"
fi
echo
cat "$WORK/table.txt"
echo
if [ -n "$SAM_BUILD_DIR" ]; then
    echo "size MiB: the bootstrap binary; zip MiB: zip -9 of it, as Lambda deploys it."
else
    echo "size MiB: Rust = the binary; Python = the unzipped deployment package (no bytecode, no interpreter)."
    echo "zip MiB: Rust = zip -9 of the binary as bootstrap; Python = zip -9 of the package."
    echo "'package without boto3': boto3, botocore, s3transfer, jmespath, dateutil, six, urllib3 left out (the managed runtime ships them)."
fi
echo "peak RSS: median VmHWM at the first GET /next."
echo
if [ -n "$SAM_BUILD_DIR" ]; then
    echo "command: bash bench/lambda_cold_start.sh --sam-build $SAM_BUILD_DIR $RUNS"
else
    echo "command: CARGO_TARGET_DIR=$TARGET_DIR bash bench/lambda_cold_start.sh $RUNS"
fi
if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "results: $WORK/results.json"; fi
