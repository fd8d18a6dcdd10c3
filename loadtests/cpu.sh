#!/usr/bin/env bash
# Server CPU per request for one scenario, kernel included, counted by `perf stat` on the server
# process: what callgrind (user space only) does not see — socket work, futex wake-ups, context
# switches between the runtime's threads and a document's thread, WAL writes. Starts a
# throwaway release server on 127.0.0.1:18096, warms up for 2 s, then runs the scenario for
# DURATION seconds while `perf stat` counts the server's task-clock and context switches;
# divides by the requests the server counted itself (`patchwork_http_requests_total`) and
# prints
# `{"scenario":…,"concurrency":…,"requests_per_sec":…,"server_cpu_us_per_request":…,"context_switches_per_request":…}`.
# With RECORD=1 it also samples call stacks (`perf record -g`) and prints where the server's
# time goes by thread and by symbol.
#
#   loadtests/cpu.sh SCENARIO
#   Environment: CONCURRENCY (64), DURATION (5), RECORD (0), PATCHWORK_BIN (this server binary)
set -euo pipefail

SCENARIO="${1:?usage: loadtests/cpu.sh SCENARIO}"
CONCURRENCY="${CONCURRENCY:-64}"
DURATION="${DURATION:-5}"
ADDR="127.0.0.1:18096"
TOKEN="bench-admin-token"
command -v perf >/dev/null || { echo "cpu.sh: perf is not installed (apt-get install linux-perf)" >&2; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=loadtests/lib.sh
source "$ROOT/loadtests/lib.sh"
build_binaries

WORK="$(mktemp -d -t pw-cpu.XXXXXX)"
PID=""
cleanup() {
    if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

PATCHWORK_LOG=warn PATCHWORK_MAX_CONNECTIONS_PER_IP=100000 PATCHWORK_ADMIN_TOKEN="$TOKEN" \
    "$SERVER" serve --listen "$ADDR" --data-dir "$WORK/data" >"$WORK/server.log" 2>&1 &
PID=$!
for _ in $(seq 60); do
    "$LOADTESTS" healthz --url "http://$ADDR" --concurrency 1 --duration 1 --max-requests 1 \
        --timeout-ms 1000 >/dev/null 2>&1 && break
    sleep 0.5
done
run() {
    "$LOADTESTS" "$SCENARIO" --url "http://$ADDR" --token "$TOKEN" --concurrency "$CONCURRENCY" \
        --duration "$1" 2>/dev/null
}
run 2 >/dev/null
# Requests the server answered (its own counter, so the scenario's setup and warm-up are
# counted with the CPU they cost) and the server's CPU over exactly the same window.
served() {
    curl -fsS -H "Authorization: Bearer $TOKEN" "http://$ADDR/metrics" |
        awk '/^patchwork_http_requests_total/ {n += $NF} END {printf "%d\n", n}'
}
BEFORE="$(served)"
perf stat -e task-clock,context-switches -p "$PID" -o "$WORK/stat" &
STAT=$!
if [[ "${RECORD:-0}" == 1 ]]; then
    perf record -F 2000 -g -p "$PID" -o "$WORK/perf.data" >/dev/null 2>&1 &
    REC=$!
fi
run "$DURATION" >"$WORK/run.out"
kill -INT "$STAT"
wait "$STAT" || true
if [[ "${RECORD:-0}" == 1 ]]; then
    kill -INT "$REC"
    wait "$REC" || true
fi
AFTER="$(served)"
python3 - "$WORK/run.out" "$WORK/stat" "$SCENARIO" "$CONCURRENCY" "$((AFTER - BEFORE - 1))" <<'PY'
import json, re, sys
run = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")][-1]
stat = open(sys.argv[2]).read()
rps = run.get("requests_per_sec") or run.get("rps")
n = int(sys.argv[5])
cpu_ms = float(re.search(r"([\d.,]+)\s+msec task-clock", stat).group(1).replace(",", ""))
switches = int(re.search(r"([\d,]+)\s+context-switches", stat).group(1).replace(",", ""))
print(json.dumps({
    "scenario": sys.argv[3], "concurrency": int(sys.argv[4]), "requests_per_sec": round(rps),
    "server_requests": n, "server_cpu_us_per_request": round(cpu_ms * 1000 / n, 1),
    "context_switches_per_request": round(switches / n, 2),
}))
PY
if [[ "${RECORD:-0}" == 1 ]]; then
    perf report -i "$WORK/perf.data" --no-children --sort comm,dso -g none 2>/dev/null |
        grep -v '^#' | grep -v '^$' | head -8
    perf report -i "$WORK/perf.data" --no-children --sort comm,sym -g none 2>/dev/null |
        grep -v '^#' | grep -v '^$' | head -30 | cut -c1-160
fi
