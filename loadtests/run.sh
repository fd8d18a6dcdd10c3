#!/usr/bin/env bash
# Builds release binaries, starts a throwaway Patchwork server on
# 127.0.0.1:18080 with a temp data dir, runs the healthz and status scenarios
# (concurrency 64, 10 s each), prints both JSON result lines and stops the
# server again, whatever happens.
#
# Environment overrides (all optional):
#   CONCURRENCY (64), DURATION (10), ADDR (127.0.0.1:18080)
#   SCENARIO (status)  the scenario compared with healthz (e.g. select)
#   ROUNDS (1)     healthz and SCENARIO alternate this many times; with more than one round
#                  the last line is a summary with the median of the per-round SCENARIO/healthz
#                  ratios (shared machines drift by +-15% between runs, so one pair decides
#                  little)
#   PATCHWORK_BIN  use this server binary instead of building patchwork-cli
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ADDR="${ADDR:-127.0.0.1:18080}"
URL="http://${ADDR}"
TOKEN="bench-admin-token"
CONCURRENCY="${CONCURRENCY:-64}"
DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-1}"
SCENARIO="${SCENARIO:-status}"

echo "run.sh: building release binaries" >&2
# shellcheck source=loadtests/lib.sh
source "$ROOT/loadtests/lib.sh"
build_binaries

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
# Every load client connects from 127.0.0.1: lift the per-IP connection cap for the run.
PATCHWORK_MAX_CONNECTIONS_PER_IP="${PATCHWORK_MAX_CONNECTIONS_PER_IP:-100000}" \
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
ratios=()
rps_of() { sed -n 's/.*"rps":\([0-9.]*\).*/\1/p' <<<"$1"; }
for round in $(seq "$ROUNDS"); do
    pair=()
    for scenario in healthz "$SCENARIO"; do
        echo "run.sh: round $round/$ROUNDS, scenario $scenario" >&2
        out="$WORK/$scenario.out"
        if ! "$LOADTESTS" "$scenario" --url "$URL" --token "$TOKEN" \
            --concurrency "$CONCURRENCY" --duration "$DURATION" | tee "$out"; then
            echo "run.sh: scenario $scenario failed (every request errored)" >&2
            status=1
        fi
        line="$(tail -n 1 "$out")"
        results+=("$line")
        pair+=("$(rps_of "$line")")
    done
    if [[ -n "${pair[0]}" && -n "${pair[1]}" ]]; then
        ratios+=("$(awk -v h="${pair[0]}" -v s="${pair[1]}" 'BEGIN { if (h > 0) printf "%.4f", s / h; else print 0 }')")
    fi
done

echo
echo "JSON results:"
printf '%s\n' "${results[@]}"
if [[ "$ROUNDS" -gt 1 && "${#ratios[@]}" -gt 0 ]]; then
    median="$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) print v[(NR + 1) / 2]; else printf "%.4f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')"
    printf '{"scenario":"%s_vs_healthz","rounds":%s,"ratios":[%s],"ratio_median":%s}\n' \
        "$SCENARIO" "${#ratios[@]}" "$(IFS=,; echo "${ratios[*]}")" "$median"
fi
exit "$status"
