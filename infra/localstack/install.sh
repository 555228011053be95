#!/usr/bin/env bash
# Create or update the venvs LocalStack needs, in parallel: install.sh [localstack] [sam] [lambda] (default: all).
#   localstack  LocalStack 2026.3.0 + this directory's plugins (editable), Python 3.13
#   sam         aws-sam-cli + samlocal (separate: SAM pins click==8.1.8, LocalStack needs click>=8.2)
#   lambda      the interpreter the Lambda workers run on (Python 3.13 + boto3, like the managed runtime)
# A venv whose requirement files are unchanged since its last install is left alone (a stamp file records them).
set -euo pipefail
source "$(dirname "$0")/common.sh"

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(localstack sam lambda)

PY313="$(hb_python313)" || hb_die "Python 3.13 not found (set HB_PYTHON313=/path/to/python3.13); LocalStack 2026.3 needs it"
mkdir -p "$HB_LOCALSTACK_HOME"

stamp_of() {  # the requirement files of a target, and the interpreter, hashed
  local files=()
  case "$1" in
    localstack) files=("$HB_LS_DIR/requirements.txt" "$HB_LS_DIR/constraints.txt" "$HB_LS_DIR/pyproject.toml") ;;
    sam)        files=("$HB_LS_DIR/requirements-sam.txt") ;;
    lambda)     files=("$HB_LS_DIR/requirements-lambda.txt") ;;
  esac
  { "$PY313" -c 'import sys; print(sys.version)'; cat "${files[@]}"; } | sha256sum | cut -d' ' -f1
}

venv_of() {
  case "$1" in
    localstack) echo "$HB_LS_VENV" ;;
    sam)        echo "$HB_SAM_VENV" ;;
    lambda)     echo "$HB_LAMBDA_VENV" ;;
    *)          hb_die "unknown target $1 (localstack, sam, lambda)" ;;
  esac
}

install_one() {
  local target="$1" venv stamp
  venv="$(venv_of "$target")"
  stamp="$(stamp_of "$target")"
  if [ -f "$venv/.hb-stamp" ] && [ "$(cat "$venv/.hb-stamp")" = "$stamp" ] && [ -x "$venv/bin/python" ]; then
    return 0
  fi
  local started=$SECONDS
  [ -x "$venv/bin/python" ] || "$PY313" -m venv "$venv"
  local pip=("$venv/bin/python" -m pip install --disable-pip-version-check --quiet)
  case "$target" in
    localstack)
      "${pip[@]}" -r "$HB_LS_DIR/requirements.txt" -c "$HB_LS_DIR/constraints.txt"
      "${pip[@]}" --no-deps -e "$HB_LS_DIR" ;;
    sam)    "${pip[@]}" -r "$HB_LS_DIR/requirements-sam.txt" ;;
    lambda) "${pip[@]}" -r "$HB_LS_DIR/requirements-lambda.txt" ;;
  esac
  echo "$stamp" >"$venv/.hb-stamp"
  hb_log "installed $target venv in $((SECONDS - started)) s ($venv)"
}

pids=()
for target in "${targets[@]}"; do
  venv_of "$target" >/dev/null
  install_one "$target" >"$HB_LOCALSTACK_HOME/install-$target.log" 2>&1 &
  pids+=("$!:$target")
done
failed=0
for entry in "${pids[@]}"; do
  if ! wait "${entry%%:*}"; then
    target="${entry#*:}"
    hb_log "installing $target failed; the end of $HB_LOCALSTACK_HOME/install-$target.log:"
    grep -v "^WARNING: Location" "$HB_LOCALSTACK_HOME/install-$target.log" | tail -n 30 >&2
    failed=1
  else
    # the "installed ..." line went to the log: show it
    grep -h "^\[localstack\] installed" "$HB_LOCALSTACK_HOME/install-${entry#*:}.log" >&2 || true
  fi
done
exit $failed
