#!/usr/bin/env bash
# Server instructions per request for one scenario, counted by valgrind's callgrind: repeatable
# on a shared machine where requests/s drift with CPU steal. Starts a throwaway release server
# under callgrind on 127.0.0.1:18095, warms up with 2,000 requests, zeroes the counters, runs
# N requests (default 20,000) at CONCURRENCY (default 8), dumps, and prints
# `{"scenario":…,"requests":N,"instructions_per_request":…,"profile":FILE}`.
# Inspect the profile with `callgrind_annotate --inclusive=yes FILE | less`.
#
#   loadtests/callgrind.sh SCENARIO [N]
#   Environment: CONCURRENCY (8), PATCHWORK_BIN (use this server binary), OUT (profile path)
set -euo pipefail

SCENARIO="${1:?usage: loadtests/callgrind.sh SCENARIO [N]}"
N="${2:-20000}"
CONCURRENCY="${CONCURRENCY:-8}"
ADDR="127.0.0.1:18095"
TOKEN="bench-admin-token"
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed" >&2; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=loadtests/lib.sh
source "$ROOT/loadtests/lib.sh"
build_binaries

WORK="$(mktemp -d -t pw-callgrind.XXXXXX)"
OUT="${OUT:-$WORK/callgrind.out}"
PID=""
cleanup() {
    if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

PATCHWORK_LOG=warn PATCHWORK_ADMIN_TOKEN="$TOKEN" valgrind --tool=callgrind \
    --callgrind-out-file="$OUT" --dump-instr=no \
    "$SERVER" serve --listen "$ADDR" --data-dir "$WORK/data" >"$WORK/server.log" 2>&1 &
PID=$!
for _ in $(seq 120); do
    "$LOADTESTS" healthz --url "http://$ADDR" --concurrency 1 --duration 1 --max-requests 1 \
        --timeout-ms 2000 >/dev/null 2>&1 && break
    sleep 0.5
done
"$LOADTESTS" "$SCENARIO" --url "http://$ADDR" --token "$TOKEN" --concurrency "$CONCURRENCY" \
    --duration 120 --max-requests 2000 >/dev/null
callgrind_control -z "$PID" >/dev/null
"$LOADTESTS" "$SCENARIO" --url "http://$ADDR" --token "$TOKEN" --concurrency "$CONCURRENCY" \
    --duration 600 --max-requests "$N" >"$WORK/run.out"
callgrind_control -d "$PID" >/dev/null
sleep 1
PROFILE="$(ls "$OUT".* 2>/dev/null | sort | tail -n 1)"
TOTAL="$(callgrind_annotate "$PROFILE" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)"
REQUESTS="$(sed -n 's/.*"requests":\([0-9]*\).*/\1/p' "$WORK/run.out" | tail -n 1)"
REQUESTS="${REQUESTS:-$N}"
KEEP="${TMPDIR:-/tmp}/patchwork-callgrind-$SCENARIO.out"
cp "$PROFILE" "$KEEP"
printf '{"scenario":"%s","requests":%s,"instructions_per_request":%s,"profile":"%s"}\n' \
    "$SCENARIO" "$REQUESTS" "$((TOTAL / REQUESTS))" "$KEEP"
rm -rf "$WORK"
