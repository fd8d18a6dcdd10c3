#!/usr/bin/env bash
# Document churn (issue 14, target 3): creates N documents (default 10,000) with `loadtests open`
# at concurrency 16 through the default open-document cap (1,024), waits QUIET seconds (default
# 15: past `SHRINK_AFTER`, so open documents go dormant) and reads the server's RSS, then
# restarts the server on the same data dir and opens the same N documents again (every one an
# existing file: the reopen rate). Prints `create/s`, `rss_kib`, `reopen/s` and the errors.
#
#   loadtests/churn.sh [N]
#   Environment: PATCHWORK_BIN (use this server binary), ADDR (127.0.0.1:18333), QUIET (15)
set -euo pipefail

N="${1:-10000}"
ADDR="${ADDR:-127.0.0.1:18333}"
QUIET="${QUIET:-15}"
TOKEN="bench-admin-token"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=loadtests/lib.sh
source "$ROOT/loadtests/lib.sh"
build_binaries

WORK="$(mktemp -d -t pw-churn.XXXXXX)"
PID=""
cleanup() {
    if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

start() {
    PATCHWORK_LOG=warn PATCHWORK_ADMIN_TOKEN="$TOKEN" "$SERVER" serve --listen "$ADDR" \
        --data-dir "$WORK/data" >>"$WORK/server.log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do
        curl -sf "http://$ADDR/healthz" >/dev/null && return 0
        sleep 0.1
    done
    echo "churn.sh: the server did not start" >&2
    exit 1
}
stop() {
    kill "$PID"
    wait "$PID" || true
    PID=""
}
run() {
    "$LOADTESTS" open --url "http://$ADDR" --token "$TOKEN" --concurrency 16 \
        --max-requests "$N" --duration 600 --db doc 2>/dev/null | tail -n 1 |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["rps"]), d["errors"])'
}

start
read -r create create_errors < <(run)
sleep "$QUIET"
rss="$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")"
stop
start
read -r reopen reopen_errors < <(run)
stop
echo "{\"documents\":$N,\"create_per_s\":$create,\"create_errors\":$create_errors,\"rss_kib\":$rss,\"reopen_per_s\":$reopen,\"reopen_errors\":$reopen_errors}"
