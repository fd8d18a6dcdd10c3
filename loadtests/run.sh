#!/usr/bin/env bash
# Builds release binaries, starts a throwaway Patchwork server on
# 127.0.0.1:18080 with a temp data dir, runs the healthz and status scenarios
# (concurrency 64, 10 s each), prints both JSON result lines and stops the
# server again, whatever happens.
#
# Environment overrides (all optional):
#   CONCURRENCY (64), DURATION (10), ADDR (127.0.0.1:18080)
#   PATCHWORK_BIN  use this server binary instead of building patchwork-cli
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ADDR="${ADDR:-127.0.0.1:18080}"
URL="http://${ADDR}"
TOKEN="bench-admin-token"
CONCURRENCY="${CONCURRENCY:-64}"
DURATION="${DURATION:-10}"

echo "run.sh: building release binaries" >&2
if [[ -z "${PATCHWORK_BIN:-}" ]]; then
    cargo build --release -p patchwork-cli -p loadtests >&2
else
    cargo build --release -p loadtests >&2
fi
TARGET_DIR="$(cargo metadata --no-deps --format-version 1 |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
SERVER="${PATCHWORK_BIN:-${TARGET_DIR}/release/patchwork}"
LOADTESTS="${TARGET_DIR}/release/loadtests"

WORK="$(mktemp -d -t pw-bench.XXXXXX)"
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        # Give it a few seconds to shut down cleanly, then insist.
        for _ in $(seq 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "run.sh: starting $SERVER on $ADDR (data dir $WORK/data, log $WORK/server.log)" >&2
PATCHWORK_ADMIN_TOKEN="$TOKEN" "$SERVER" serve --listen "$ADDR" --data-dir "$WORK/data" \
    >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

# Wait up to 30 s for /healthz; the load generator itself is the probe
# (it exits non-zero when every request failed).
ready=0
for _ in $(seq 60); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "run.sh: the server exited early; its log:" >&2
        cat "$WORK/server.log" >&2
        exit 1
    fi
    if "$LOADTESTS" healthz --url "$URL" --concurrency 1 --duration 1 \
        --max-requests 1 --timeout-ms 1000 >/dev/null 2>&1; then
        ready=1
        break
    fi
    sleep 0.5
done
if [[ "$ready" != 1 ]]; then
    echo "run.sh: $URL/healthz did not answer 200 within 30 s; server log:" >&2
    cat "$WORK/server.log" >&2
    exit 1
fi

status=0
results=()
for scenario in healthz status; do
    echo "run.sh: scenario $scenario" >&2
    out="$WORK/$scenario.out"
    if ! "$LOADTESTS" "$scenario" --url "$URL" --token "$TOKEN" \
        --concurrency "$CONCURRENCY" --duration "$DURATION" | tee "$out"; then
        echo "run.sh: scenario $scenario failed (every request errored)" >&2
        status=1
    fi
    results+=("$(tail -n 1 "$out")")
done

echo
echo "JSON results:"
printf '%s\n' "${results[@]}"
exit "$status"
