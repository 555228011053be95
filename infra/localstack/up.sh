#!/usr/bin/env bash
# Start LocalStack in host mode (no Docker) in the background and wait until it is healthy. Idempotent: installs
# or updates the venvs first (install.sh), and does nothing more when this LocalStack is already running.
# Prints the endpoint on stdout (http://127.0.0.1:4566 unless HB_LOCALSTACK_PORT says otherwise).
#
# State (PID file, log, LocalStack's filesystem root and TMPDIR) lives in $HB_LOCALSTACK_STATE
# (default infra/localstack/.work/state-<port>); down.sh stops LocalStack and removes it.
set -euo pipefail
source "$(dirname "$0")/common.sh"

"$HB_LS_DIR/install.sh" localstack lambda sam

if hb_pid_alive; then
  if hb_healthy; then
    hb_log "already running (pid $(cat "$HB_PIDFILE")); log: $HB_LOGFILE"
    echo "$HB_ENDPOINT"
    exit 0
  fi
  hb_log "pid $(cat "$HB_PIDFILE") is alive but not healthy: restarting it"
  "$HB_LS_DIR/down.sh"
elif [ -f "$HB_PIDFILE" ]; then
  hb_log "removing the state of a LocalStack that is gone (pid $(cat "$HB_PIDFILE"))"
  "$HB_LS_DIR/down.sh"
fi
if hb_healthy; then
  hb_die "something else already answers on $HB_ENDPOINT (a LocalStack container?); stop it or set HB_LOCALSTACK_PORT"
fi

mkdir -p "$HB_LOCALSTACK_STATE/fs" "$HB_LOCALSTACK_STATE/tmp"
started=$SECONDS
(
  cd "$HB_LOCALSTACK_STATE"
  # Host mode: the machine carries Docker's marker file, so LocalStack must be told it is not in its container.
  # CloudFormation skips what it cannot emulate (the CloudWatch dashboard) instead of failing the stack.
  export OVERRIDE_IN_DOCKER=0 \
    FILESYSTEM_ROOT="$HB_LOCALSTACK_STATE/fs" \
    TMPDIR="$HB_LOCALSTACK_STATE/tmp" \
    GATEWAY_LISTEN="127.0.0.1:$HB_LOCALSTACK_PORT" \
    LOCALSTACK_HOST="127.0.0.1:$HB_LOCALSTACK_PORT" \
    GATEWAY_SERVER="${HB_GATEWAY_SERVER:-twisted}" \
    SQS_ENDPOINT_STRATEGY=path \
    SKIP_SSL_CERT_DOWNLOAD=1 \
    DISABLE_EVENTS=1 \
    DNS_ADDRESS=0 \
    CFN_IGNORE_UNSUPPORTED_RESOURCE_TYPES=1 \
    PROVIDER_OVERRIDE_DYNAMODB=moto \
    PROVIDER_OVERRIDE_DYNAMODBSTREAMS=moto \
    LAMBDA_RUNTIME_EXECUTOR=healthbook-process \
    HB_LAMBDA_PYTHON="$HB_LAMBDA_VENV/bin/python" \
    LS_LOG="${LS_LOG:-info}"
  # setsid: its own process group, so a Ctrl-C in the calling shell does not reach it.
  setsid "$HB_LS_VENV/bin/python" -m localstack.runtime.main </dev/null >>"$HB_LOGFILE" 2>&1 &
  echo $! >"$HB_PIDFILE"
)

timeout_s="${HB_LOCALSTACK_START_TIMEOUT:-90}"
until hb_healthy; do
  if ! hb_pid_alive; then
    hb_log "LocalStack exited during start-up; the end of $HB_LOGFILE:"
    tail -n 40 "$HB_LOGFILE" >&2
    rm -f "$HB_PIDFILE"
    exit 1
  fi
  if [ $((SECONDS - started)) -ge "$timeout_s" ]; then
    hb_log "not healthy after ${timeout_s} s; the end of $HB_LOGFILE:"
    tail -n 40 "$HB_LOGFILE" >&2
    "$HB_LS_DIR/down.sh" || true
    exit 1
  fi
  sleep 0.2
done
hb_log "healthy after $((SECONDS - started)) s (pid $(cat "$HB_PIDFILE")); log: $HB_LOGFILE"
echo "$HB_ENDPOINT"
