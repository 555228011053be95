#!/usr/bin/env bash
# Stop the LocalStack started by up.sh: SIGTERM, a grace period (HB_LOCALSTACK_STOP_GRACE, default 15 s),
# then SIGKILL; then any Lambda worker it left behind; then remove its state. The last log is kept as
# $HB_LOCALSTACK_HOME/last-localstack-<port>.log. Safe to run when nothing is running.
set -euo pipefail
source "$(dirname "$0")/common.sh"

grace="${HB_LOCALSTACK_STOP_GRACE:-15}"
if [ -f "$HB_PIDFILE" ]; then
  pid="$(cat "$HB_PIDFILE")"
  if hb_is_localstack "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    waited=0
    while hb_is_localstack "$pid" && [ "$waited" -lt $((grace * 5)) ]; do
      sleep 0.2
      waited=$((waited + 1))
    done
    if hb_is_localstack "$pid"; then
      hb_log "pid $pid still running after ${grace} s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    hb_log "stopped (pid $pid)"
  fi
fi
# Lambda workers run in their own sessions; each wrote its pid next to its log. They exit by themselves when
# LocalStack goes (their request pipe closes) unless stuck in a handler.
for pidfile in "$HB_LOCALSTACK_STATE"/tmp/lambda-workers/*/worker.pid; do
  [ -f "$pidfile" ] || continue
  worker="$(cat "$pidfile")"
  # only a process that is still one of our workers (a stale pid may have been reused)
  if kill -0 "$worker" 2>/dev/null && tr '\0' ' ' <"/proc/$worker/cmdline" 2>/dev/null | grep -q "healthbook_localstack/_worker.py"; then
    kill -KILL "$worker" 2>/dev/null || true
    hb_log "killed a left-over Lambda worker (pid $worker)"
  fi
done
if [ -d "$HB_LOCALSTACK_STATE" ]; then
  [ -f "$HB_LOGFILE" ] && mv "$HB_LOGFILE" "$HB_LOCALSTACK_HOME/last-localstack-$HB_LOCALSTACK_PORT.log"
  rm -rf "$HB_LOCALSTACK_STATE"
fi
