#!/usr/bin/env bash
# `loadtests hostile`, one scenario per fresh release server (so each scenario's RSS starts from
# a new process, not from what the allocator kept after the previous one). The server runs on its
# defaults except `max_connections = 12000` (10,000 waiters, the extra ones and the normal client
# must fit: over the cap they would be refused with `503 too_many_connections` instead of reaching
# the waiter caps); the load generator spreads its connections over 127.0.0.11, .12, … so the
# per-IP cap (256) stays on. Prints each scenario's JSON line.
#
# Environment overrides (all optional):
#   ADDR (127.0.0.1:18090), SCENARIOS ("sse waiters slowloris bodies")
#   PATCHWORK_BIN  use this server binary instead of building patchwork-cli
#   Extra arguments go to `loadtests hostile` (e.g. --subscribers 500 --sse-seconds 40).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ADDR="${ADDR:-127.0.0.1:18090}"
TOKEN="hostile-admin-token-0123456789"
SCENARIOS="${SCENARIOS:-sse waiters slowloris bodies}"

# shellcheck source=loadtests/lib.sh
source "$ROOT/loadtests/lib.sh"
build_binaries

# Both sides hold over 10,000 sockets.
ulimit -n "$(ulimit -Hn)"

WORK="$(mktemp -d -t pw-hostile.XXXXXX)"
SERVER_PID=""
stop_server() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
trap 'stop_server; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

for scenario in $SCENARIOS; do
    rm -rf "$WORK/data"
    PATCHWORK_MAX_CONNECTIONS=12000 PATCHWORK_ADMIN_TOKEN="$TOKEN" \
        "$SERVER" serve --listen "$ADDR" --data-dir "$WORK/data" >"$WORK/server-$scenario.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        curl -fsS "http://$ADDR/healthz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    echo "hostile.sh: $scenario (server pid $SERVER_PID, log $WORK/server-$scenario.log)" >&2
    "$LOADTESTS" hostile --url "http://$ADDR" --token "$TOKEN" --server-pid "$SERVER_PID" \
        --scenarios "$scenario" "$@" | tail -n 1
    stop_server
done
