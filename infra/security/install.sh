#!/usr/bin/env bash
# Create or update the checkov venv (checkov + aws-sam-translator) under infra/security/.work/venv-checkov.
# Its own venv: checkov pins boto3, networkx, packaging ... that the project's .venv must not share.
# A venv whose requirement files and interpreter are unchanged since its last install is left alone (a stamp
# file records them), so only the first `make security` on a machine pays for the install.
#
# Interpreter: Python 3.12 (the newest checkov supports; constraints.txt is resolved for it): $HB_CHECKOV_PYTHON,
# python3.12 on PATH, or one under pyenv.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
work="${HB_SECURITY_HOME:-$here/.work}"
venv="$work/venv-checkov"
log() { printf '[security] %s\n' "$*" >&2; }

python=""
for candidate in "${HB_CHECKOV_PYTHON:-}" python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 \
                 /usr/local/bin/python3.12 /usr/bin/python3.12; do
  [ -n "$candidate" ] || continue
  path="$(command -v "$candidate" 2>/dev/null || true)"
  if [ -n "$path" ] && "$path" -c 'import sys, venv; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
    python="$path"
    break
  fi
done
[ -n "$python" ] || { log "error: Python 3.12 not found for checkov (set HB_CHECKOV_PYTHON=/path/to/python3.12)"; exit 1; }

stamp="$({ "$python" -c 'import sys; print(sys.version)'; cat "$here/requirements.txt" "$here/constraints.txt"; } \
         | sha256sum | cut -d' ' -f1)"
if [ -f "$venv/.hb-stamp" ] && [ "$(cat "$venv/.hb-stamp")" = "$stamp" ] && [ -x "$venv/bin/checkov" ]; then
  exit 0
fi

started=$SECONDS
mkdir -p "$work"
# A venv made by another interpreter is made anew (its site-packages would not fit).
if [ -x "$venv/bin/python" ] && ! cmp -s <("$venv/bin/python" -c 'import sys; print(sys.version)') \
                                         <("$python" -c 'import sys; print(sys.version)'); then
  rm -rf "$venv"
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --disable-pip-version-check --quiet \
  -r "$here/requirements.txt" -c "$here/constraints.txt" 2>&1 | { grep -v "^WARNING: Location" || true; } >&2
echo "$stamp" >"$venv/.hb-stamp"
log "installed the checkov venv in $((SECONDS - started)) s ($venv, $("$venv/bin/python" -V))"
