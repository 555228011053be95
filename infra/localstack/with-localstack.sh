#!/usr/bin/env bash
# Run a command against LocalStack, starting it first when it is not running and stopping it afterwards (only
# what this script started): `make demo` leaves nothing running. The command gets --endpoint <url> appended.
#
#   with-localstack.sh COMMAND [ARGS...]
set -euo pipefail
source "$(dirname "$0")/common.sh"

if hb_pid_alive && hb_healthy; then
  hb_log "using the LocalStack already running (pid $(cat "$HB_PIDFILE")); it stays up"
else
  trap '"$HB_LS_DIR/down.sh"' EXIT
fi
endpoint="$("$HB_LS_DIR/up.sh")"
"$@" --endpoint "$endpoint"
