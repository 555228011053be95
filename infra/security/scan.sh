#!/usr/bin/env bash
# `make security`: checkov on template.yaml as CloudFormation deploys it (SAM transform expanded), offline.
#   1. install.sh: the checkov venv, made or updated only when its requirement files change;
#   2. sam_transform.py: template.yaml -> .work/template.sam.json (functions' roles, event source mapping, ...);
#   3. checkov --framework cloudformation on that file, results as JSON;
#   4. report.py: the summary, and the verdict (docs/security.md, "Policy"): any failed check fails the build,
#      and so does a suppression without a comment, a parsing error or a scan that saw no resource.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work="${HB_SECURITY_HOME:-$here/.work}"
venv="$work/venv-checkov"
template="${1:-$repo/template.yaml}"

"$here/install.sh"

started=$SECONDS
rm -rf "$work/checkov"
mkdir -p "$work/checkov"
"$venv/bin/python" "$here/sam_transform.py" "$template" "$work/template.sam.json"

# --skip-download (and BC_SKIP_MAPPING): no call to the Prisma Cloud API (guidelines, severities, ID mapping);
# nothing leaves the machine.
status=0
BC_SKIP_MAPPING=TRUE \
  "$venv/bin/checkov" --file "$work/template.sam.json" --framework cloudformation --skip-download \
  --output json --output-file-path "$work/checkov" >/dev/null 2>"$work/checkov/stderr.log" || status=$?
if [ "$status" -gt 1 ] || [ ! -s "$work/checkov/results_json.json" ]; then
  cat "$work/checkov/stderr.log" >&2
  printf '[security] checkov crashed (exit %s)\n' "$status" >&2
  exit 1
fi
printf "[security] transform and scan of %s took %s s\n" "${template#"$repo"/}" "$((SECONDS - started))"
exec "$venv/bin/python" "$here/report.py" "$work/checkov/results_json.json" "$status"
