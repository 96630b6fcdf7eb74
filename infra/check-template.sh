#!/usr/bin/env bash
# Offline checks of the AWS side: the state machine definition, the SAM template and the example
# SAM config. Needs network access to PyPI and the npm registry on the first run only (tools are
# cached); needs no AWS account and no credentials.
#
#   1. asl-validator (npm, pinned in infra/package-lock.json) on infra/state-machine.asl.json,
#      as written and with its ${...} placeholders replaced by Lambda ARNs as CloudFormation will.
#   2. template.yaml against the state machine and the samconfig example (placeholders match
#      DefinitionSubstitutions, parameter overrides name real parameters), then cfn-lint 1.53.3,
#      which expands the AWS::Serverless resources with the SAM translator before linting.
#   3. sam validate (SAM translation) and sam validate --lint (aws-sam-cli).
#
# Usage: bash infra/check-template.sh
set -euo pipefail
cd "$(dirname "$0")/.."

TEMPLATE=template.yaml
ASL=infra/state-machine.asl.json
SAMCONFIG=infra/samconfig.toml.example
REQUIREMENTS=infra/requirements-check.txt
CACHE="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/taskrunner-ci"
VENV="$CACHE/venv"

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'check-template: %s\n' "$*" >&2; exit 1; }

# No AWS account is involved: make sure no ambient credentials or profile are picked up either.
for name in $(env | sed -n 's/^\(AWS_[A-Z_]*\)=.*/\1/p'); do unset "$name"; done
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
export SAM_CLI_TELEMETRY=0 SAM_CLI_DISABLE_VERSION_CHECK=1 AWS_EC2_METADATA_DISABLED=true

# ---------------------------------------------------------------------------- tools

if ! command -v npm >/dev/null 2>&1; then
  echo "installing: nodejs npm"
  apt-get update -qq
  apt-get install -y -qq nodejs npm
fi
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  echo "installing: python3-venv"
  apt-get update -qq
  apt-get install -y -qq python3-venv
fi

# Node tools: infra/node_modules, reinstalled only when the lockfile changed.
if ! cmp -s infra/package-lock.json infra/node_modules/.package-lock.stamp 2>/dev/null; then
  npm ci --prefix infra --no-audit --no-fund --loglevel=error
  cp infra/package-lock.json infra/node_modules/.package-lock.stamp
fi
ASL_VALIDATOR=infra/node_modules/.bin/asl-validator

# Python tools: a venv in the cache, rebuilt only when the pins changed.
if ! cmp -s "$REQUIREMENTS" "$VENV/.requirements.stamp" 2>/dev/null; then
  echo "creating $VENV from $REQUIREMENTS"
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
  cp "$REQUIREMENTS" "$VENV/.requirements.stamp"
fi
PY="$VENV/bin/python"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# ---------------------------------------------------------------------------- 1. ASL

step "1. asl-validator $("$ASL_VALIDATOR" --version): $ASL"
"$ASL_VALIDATOR" --json-path "$ASL" || fail "$ASL is not a valid state machine definition"

# The same file with its placeholders replaced by Lambda ARNs, as CloudFormation deploys it.
"$PY" - "$ASL" "$WORK/state-machine.substituted.asl.json" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
names = sorted(set(re.findall(r"\$\{([A-Za-z0-9]+)\}", text)))
for name in names:
    arn = f"arn:aws:lambda:us-east-1:123456789012:function:taskrunner-{name.removesuffix('FunctionArn')}"
    text = text.replace("${" + name + "}", arn)
open(sys.argv[2], "w").write(text)
print("placeholders replaced with dummy Lambda ARNs: " + ", ".join(names))
PY
"$ASL_VALIDATOR" --json-path "$WORK/state-machine.substituted.asl.json" \
  || fail "$ASL with its placeholders substituted is not a valid state machine definition"

# ---------------------------------------------------------------------------- 2. template

step "2a. $TEMPLATE against $ASL and $SAMCONFIG"
"$PY" - "$TEMPLATE" "$ASL" "$SAMCONFIG" <<'PY'
import re, sys, tomllib
from cfnlint.decode import decode
from samcli.cli.types import CfnParameterOverridesType

template_path, asl_path, samconfig_path = sys.argv[1:4]
template, errors = decode(template_path)
if errors:
    sys.exit("\n".join(str(e) for e in errors))
problems = []
resources = template["Resources"]

# Every ${...} of the ASL file has a DefinitionSubstitutions entry, and no entry is unused.
placeholders = set(re.findall(r"\$\{([A-Za-z0-9]+)\}", open(asl_path).read()))
machines = {k: v for k, v in resources.items() if v["Type"] == "AWS::Serverless::StateMachine"}
for name, machine in machines.items():
    props = machine["Properties"]
    if props.get("DefinitionUri") != asl_path:
        problems.append(f"{name}: DefinitionUri is {props.get('DefinitionUri')!r}, expected {asl_path!r}")
    subs = set(props.get("DefinitionSubstitutions", {}))
    for missing in sorted(placeholders - subs):
        problems.append(f"{name}: {asl_path} uses ${{{missing}}} but DefinitionSubstitutions lacks it")
    for unused in sorted(subs - placeholders):
        problems.append(f"{name}: DefinitionSubstitutions has {unused}, which {asl_path} never uses")
print(f"state machines: {', '.join(machines) or 'none'}; placeholders in the ASL file: {', '.join(sorted(placeholders))}")

# Each Rust function is built by cargo-lambda from the workspace root.
functions = {k: v for k, v in resources.items() if v["Type"] == "AWS::Serverless::Function"}
for name, function in functions.items():
    meta = function.get("Metadata", {})
    if meta.get("BuildMethod") != "rust-cargolambda":
        problems.append(f"{name}: Metadata.BuildMethod must be rust-cargolambda")
    if function["Properties"].get("CodeUri") != ".":
        problems.append(f"{name}: CodeUri must be . (the cargo workspace root)")
# API Gateway HTTP APIs refuse route keys ending in "/" at deploy time (no linter checks it).
routes = []
for name, function in functions.items():
    for event_name, event in function["Properties"].get("Events", {}).items():
        if event.get("Type") == "HttpApi":
            path = event["Properties"].get("Path", "")
            method = event["Properties"].get("Method", "")
            # Neither Path nor Method: SAM creates the $default (catch-all) route.
            routes.append(f"{method.upper() or 'ANY'} {path}" if path or method else "$default")
            if len(path) > 1 and path.endswith("/"):
                problems.append(f"{name}.{event_name}: HttpApi path {path!r} ends in '/', which HTTP APIs refuse")
print(f"HttpApi routes ({len(routes)}): " + ", ".join(routes))
binaries = {n: f.get("Metadata", {}).get("BuildProperties", {}).get("Binary") for n, f in functions.items()}
print("functions (binary): " + ", ".join(f"{n} ({b})" for n, b in binaries.items()))

# The example samconfig parses the way sam deploy parses it, and names only real parameters.
config = tomllib.load(open(samconfig_path, "rb"))
overrides = config["default"]["deploy"]["parameters"].get("parameter_overrides", [])
overrides = overrides if isinstance(overrides, str) else tuple(overrides)
parsed = CfnParameterOverridesType().convert(overrides, None, None)
for key in sorted(set(parsed) - set(template.get("Parameters", {}))):
    problems.append(f"{samconfig_path}: parameter_overrides names {key}, which {template_path} does not declare")
print(f"{samconfig_path}: parameter overrides {', '.join(f'{k}={v}' for k, v in parsed.items())}")

if problems:
    sys.exit("\n".join(problems))
print("ok")
PY

step "2b. cfn-lint $("$VENV/bin/cfn-lint" --version | awk '{print $2}') (SAM resources expanded): $TEMPLATE"
"$VENV/bin/cfn-lint" --format parseable -- "$TEMPLATE" || fail "cfn-lint found problems in $TEMPLATE"
"$PY" - "$TEMPLATE" <<'PY'
import collections, sys
from cfnlint.decode import decode
from cfnlint.template.transforms._sam import Transform
template, _ = decode(sys.argv[1])
transform = Transform(sys.argv[1], template, "us-east-1")
matches = transform.transform_template()
if matches:
    sys.exit("\n".join(str(m) for m in matches))
expanded = transform._template
counts = collections.Counter(r["Type"] for r in expanded["Resources"].values())
print(f"ok: {len(expanded['Resources'])} CloudFormation resources after SAM expansion:")
for kind, n in sorted(counts.items()):
    print(f"  {n:2d} {kind}")
PY

# ---------------------------------------------------------------------------- 3. sam validate

SAM="$VENV/bin/sam"
step "3. $("$SAM" --version): sam validate --region us-east-1 [--lint]"
"$SAM" validate --region us-east-1 --template-file "$TEMPLATE" \
  || fail "sam validate (SAM translation) refused $TEMPLATE"
"$SAM" validate --region us-east-1 --lint --template-file "$TEMPLATE" \
  || fail "sam validate --lint refused $TEMPLATE"

printf '\ncheck-template: all checks passed\n'
