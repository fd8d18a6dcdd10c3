#!/usr/bin/env bash
# Server CPU per request for one scenario, kernel included, counted by `perf stat` on the server
# process: what callgrind (user space only) does not see — socket work, futex wake-ups, context
# switches between the runtime's threads and a document's thread, WAL writes. Starts a
# throwaway release server on 127.0.0.1:18096, warms up for 2 s, then runs the scenario for
# DURATION seconds while `perf stat` counts the server's task-clock and context switches;
# divides by the requests the server counted itself (`patchwork_http_requests_total`) and
# prints
# `{"scenario":…,"concurrency":…,"requests_per_sec":…,"server_cpu_us_per_request":…,"context_switches_per_request":…,
#   "loadgen_cpu_us_per_request":…,"machine_idle_pct":…,"group_commit_batch_avg":…}`.
# `publish-ws` counts acknowledged messages instead of HTTP requests (WINDOW sets its window,
# default 1). The load generator's own CPU and the whole machine's idle share over the run tell
# a latency-bound run (idle CPU left, as with unpipelined publishers) from a CPU-bound one; the
# group-commit batch is the average of writes per commit during the run (`null` without writes).
# With RECORD=1 it also samples call stacks (`perf record -g`) and prints where the server's
# time goes by thread and by symbol.
#
#   loadtests/cpu.sh SCENARIO
#   Environment: CONCURRENCY (64), DURATION (5), RECORD (0), WINDOW (1, publish-ws only),
#                PATCHWORK_BIN (this server binary)
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
EXTRA=()
[[ "$SCENARIO" == publish-ws ]] && EXTRA=(--window "${WINDOW:-1}")
run() {
    "$LOADTESTS" "$SCENARIO" --url "http://$ADDR" --token "$TOKEN" --concurrency "$CONCURRENCY" \
        ${EXTRA[@]+"${EXTRA[@]}"} --duration "$1" 2>/dev/null
}
run 2 >/dev/null
# Requests the server answered (its own counter, so the scenario's setup and warm-up are
# counted with the CPU they cost) and the server's CPU over exactly the same window.
served() {
    curl -fsS -H "Authorization: Bearer $TOKEN" "http://$ADDR/metrics" |
        awk '/^patchwork_http_requests_total/ {n += $NF} END {printf "%d\n", n}'
}
# Group commits so far: "batch_sum batch_count".
commits() {
    curl -fsS -H "Authorization: Bearer $TOKEN" "http://$ADDR/metrics" |
        awk '/^patchwork_group_commit_batch_size_sum/ {s = $NF} /^patchwork_group_commit_batch_size_count/ {c = $NF}
             END {printf "%d %d\n", s, c}'
}
# Busy and total jiffies of the whole machine (/proc/stat: idle and iowait count as idle; the
# guest fields are already inside user and nice).
jiffies() { awk '/^cpu / {t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t}' /proc/stat; }
BEFORE="$(served)"
COMMITS_BEFORE="$(commits)"
JIFFIES_BEFORE="$(jiffies)"
perf stat -e task-clock,context-switches -p "$PID" -o "$WORK/stat" &
STAT=$!
if [[ "${RECORD:-0}" == 1 ]]; then
    perf record -F 2000 -g -p "$PID" -o "$WORK/perf.data" >/dev/null 2>&1 &
    REC=$!
fi
perf stat -e task-clock -o "$WORK/loadgen.stat" -- \
    "$LOADTESTS" "$SCENARIO" --url "http://$ADDR" --token "$TOKEN" --concurrency "$CONCURRENCY" \
    ${EXTRA[@]+"${EXTRA[@]}"} --duration "$DURATION" >"$WORK/run.out" 2>/dev/null
JIFFIES_AFTER="$(jiffies)"
kill -INT "$STAT"
wait "$STAT" || true
if [[ "${RECORD:-0}" == 1 ]]; then
    kill -INT "$REC"
    wait "$REC" || true
fi
AFTER="$(served)"
COMMITS_AFTER="$(commits)"
python3 - "$WORK/run.out" "$WORK/stat" "$SCENARIO" "$CONCURRENCY" "$((AFTER - BEFORE - 1))" \
    "$WORK/loadgen.stat" "$JIFFIES_BEFORE" "$JIFFIES_AFTER" "$COMMITS_BEFORE" "$COMMITS_AFTER" <<'PY'
import json, re, sys
run = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")][-1]
stat = open(sys.argv[2]).read()
rps = run.get("requests_per_sec") or run.get("rps")
# A WebSocket run is one HTTP request (the upgrade) per connection: count its messages.
n = run["acks_total"] if sys.argv[3] == "publish-ws" else int(sys.argv[5])
task_clock = lambda text: float(re.search(r"([\d.,]+)\s+msec task-clock", text).group(1).replace(",", ""))
cpu_ms = task_clock(stat)
loadgen_ms = task_clock(open(sys.argv[6]).read())
switches = int(re.search(r"([\d,]+)\s+context-switches", stat).group(1).replace(",", ""))
(busy0, total0), (busy1, total1) = [map(int, a.split()) for a in sys.argv[7:9]]
(sum0, count0), (sum1, count1) = [map(int, a.split()) for a in sys.argv[9:11]]
print(json.dumps({
    "scenario": sys.argv[3], "concurrency": int(sys.argv[4]), "requests_per_sec": round(rps),
    "server_requests": n, "server_cpu_us_per_request": round(cpu_ms * 1000 / n, 1),
    "context_switches_per_request": round(switches / n, 2),
    "loadgen_cpu_us_per_request": round(loadgen_ms * 1000 / n, 1),
    "machine_idle_pct": round(100 * (1 - (busy1 - busy0) / max(1, total1 - total0)), 1),
    "group_commit_batch_avg": round((sum1 - sum0) / (count1 - count0), 2) if count1 > count0 else None,
}))
PY
if [[ "${RECORD:-0}" == 1 ]]; then
    perf report -i "$WORK/perf.data" --no-children --sort comm,dso -g none 2>/dev/null |
        grep -v '^#' | grep -v '^$' | head -8
    perf report -i "$WORK/perf.data" --no-children --sort comm,sym -g none 2>/dev/null |
        grep -v '^#' | grep -v '^$' | head -30 | cut -c1-160
fi
