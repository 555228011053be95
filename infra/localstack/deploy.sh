#!/usr/bin/env bash
# Build and deploy a SAM template to LocalStack (ours from up.sh, or any at $AWS_ENDPOINT_URL, e.g. the Docker
# image), then print the stack's outputs as JSON on stdout.
#
#   deploy.sh [--template FILE] [--stack-name NAME] [--stage STAGE] [KEY=VALUE ...]
#
# Defaults: the repository's template.yaml, stack healthbook-local, Stage=local, Architecture=x86_64 (the
# workers run on this machine's CPU, so native wheels must be x86_64). KEY=VALUE pairs are extra parameter
# overrides; an override for a parameter the template does not declare is dropped, so one command fits the
# template as it grows. Builds go to $HB_LOCALSTACK_HOME/build/<stack>, SAM's cache next to them.
set -euo pipefail
source "$(dirname "$0")/common.sh"

template="$HB_REPO/template.yaml"
stack="healthbook-local"
stage="local"
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --template) template="$2"; shift 2 ;;
    --stack-name) stack="$2"; shift 2 ;;
    --stage) stage="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *=*) extra+=("$1"); shift ;;
    *) hb_die "unknown argument $1" ;;
  esac
done
template="$(cd "$(dirname "$template")" && pwd)/$(basename "$template")"
[ -f "$template" ] || hb_die "no template $template"

endpoint="${AWS_ENDPOINT_URL:-$HB_ENDPOINT}"
export AWS_ENDPOINT_URL="$endpoint"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
# samlocal's older variables, derived from the endpoint
hostport="${endpoint#*://}"; hostport="${hostport%%/*}"
export LOCALSTACK_HOSTNAME="${hostport%%:*}" EDGE_PORT="${hostport##*:}"
# SAM_CLI_POLL_DELAY: poll stack events every second, not every 5 s (a deploy here takes seconds)
export SAM_CLI_TELEMETRY=0 SAM_CLI_POLL_DELAY="${SAM_CLI_POLL_DELAY:-1}"
python3 - "$endpoint/_localstack/health" <<'EOF' || hb_die "no LocalStack at $endpoint: run infra/localstack/up.sh (or start the container) first"
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2).read()
EOF

"$HB_LS_DIR/install.sh" sam
# sam build finds the python3.13 the functions and layers need on PATH: the SAM venv's own.
export PATH="$HB_SAM_VENV/bin:$PATH"

build="$HB_LOCALSTACK_HOME/build/$stack"
mkdir -p "$build"
# Keep only overrides for declared parameters.
mapfile -t overrides < <("$HB_SAM_VENV/bin/python" - "$template" "Architecture=x86_64" "Stage=$stage" "${extra[@]}" <<'EOF'
import sys
from samcli.yamlhelper import yaml_parse
with open(sys.argv[1], encoding="utf-8") as handle:
    declared = (yaml_parse(handle.read()) or {}).get("Parameters") or {}
chosen = {}
for pair in sys.argv[2:]:
    key, _, value = pair.partition("=")
    if key in declared:
        chosen[key] = value
    else:
        print(f"[localstack] the template declares no parameter {key}: override dropped", file=sys.stderr)
for key, value in chosen.items():
    print(f"{key}={value}")
EOF
)
params=()
[ ${#overrides[@]} -gt 0 ] && params=(--parameter-overrides "${overrides[*]}")

started=$SECONDS
hb_log "sam build $template -> $build ${overrides[*]:-}"
sam build --template-file "$template" --build-dir "$build/out" --cache-dir "$build/cache" --cached \
  "${params[@]}" >"$build/build.log" 2>&1 || { tail -n 40 "$build/build.log" >&2; hb_die "sam build failed (log: $build/build.log)"; }
built=$SECONDS
hb_log "built in $((built - started)) s; samlocal deploy --stack-name $stack"
samlocal deploy --template-file "$build/out/template.yaml" --stack-name "$stack" --resolve-s3 \
  --no-confirm-changeset --no-fail-on-empty-changeset --capabilities CAPABILITY_IAM CAPABILITY_NAMED_IAM \
  --region "$AWS_DEFAULT_REGION" "${params[@]}" >"$build/deploy.log" 2>&1 \
  || { tail -n 60 "$build/deploy.log" >&2; hb_die "samlocal deploy failed (log: $build/deploy.log)"; }
hb_log "deployed in $((SECONDS - built)) s (log: $build/deploy.log)"

"$HB_SAM_VENV/bin/python" - "$stack" <<'EOF'
import json, sys
import boto3
stack = boto3.client("cloudformation").describe_stacks(StackName=sys.argv[1])["Stacks"][0]
print(json.dumps({o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}, indent=1, sort_keys=True))
EOF
