# Shared settings of install.sh, up.sh, down.sh and deploy.sh (sourced, not run).
# Everything can be moved with environment variables; the defaults keep all state inside infra/localstack/.work/.

HB_LS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HB_REPO="$(cd "$HB_LS_DIR/../.." && pwd)"
HB_LOCALSTACK_HOME="${HB_LOCALSTACK_HOME:-$HB_LS_DIR/.work}"
HB_LS_VENV="$HB_LOCALSTACK_HOME/venv-localstack"     # LocalStack + the plugins (Python 3.13)
HB_SAM_VENV="$HB_LOCALSTACK_HOME/venv-sam"           # aws-sam-cli + samlocal (Python 3.13: sam build needs python3.13)
HB_LAMBDA_VENV="$HB_LOCALSTACK_HOME/venv-lambda"     # the Lambda workers' interpreter (Python 3.13 + boto3)
HB_LOCALSTACK_PORT="${HB_LOCALSTACK_PORT:-4566}"
HB_LOCALSTACK_STATE="${HB_LOCALSTACK_STATE:-$HB_LOCALSTACK_HOME/state-$HB_LOCALSTACK_PORT}"
HB_ENDPOINT="http://127.0.0.1:$HB_LOCALSTACK_PORT"
HB_PIDFILE="$HB_LOCALSTACK_STATE/localstack.pid"
HB_LOGFILE="$HB_LOCALSTACK_STATE/localstack.log"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"

hb_log() { printf '[localstack] %s\n' "$*" >&2; }
hb_die() { hb_log "error: $*"; exit 1; }

# A Python 3.13 interpreter: $HB_PYTHON313, python3.13 on PATH, or one under pyenv.
hb_python313() {
  local candidate
  for candidate in "${HB_PYTHON313:-}" "$(command -v python3.13 2>/dev/null || true)" \
                   "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3.13 /usr/local/bin/python3.13 /usr/bin/python3.13; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] \
       && "$candidate" -c 'import sys, venv; assert sys.version_info[:2] == (3, 13)' 2>/dev/null; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  return 1
}

# 0 when LocalStack answers its health endpoint within a second.
hb_healthy() {
  python3 - "$HB_ENDPOINT/_localstack/health" <<'EOF' 2>/dev/null
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=1) as response:
    json.load(response)
EOF
}

# 0 when PID is a live (not zombie) LocalStack process; a recycled PID of another program does not count.
hb_is_localstack() {
  local pid="$1" state
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "localstack.runtime.main" || return 1
  state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)"
  [ -n "$state" ] && [ "$state" != Z ]
}

hb_pid_alive() {
  [ -f "$HB_PIDFILE" ] && hb_is_localstack "$(cat "$HB_PIDFILE")"
}
