#!/usr/bin/env bash
# Streams benchmark (the same scenarios every run):
#   1. 1 GiB through a queue channel with curl on both ends, 3 runs: MB/s and the median;
#      the server's RSS is sampled every 100 ms during each relay (it must stay flat).
#   2. 200 sequential request/response round trips (curl requester, a curl blind responder
#      loop): p50 and p99.
# Loopback only; everything bounded in time. Prints one JSON line at the end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ADDR="${ADDR:-127.0.0.1:18110}"
URL="http://${ADDR}"
cargo build --release -p patchwork-cli >&2
BIN="$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/patchwork"
WORK="$(mktemp -d -t pw-streams.XXXXXX)"
PID=""
cleanup() { [[ -n "$PID" ]] && kill "$PID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
PATCHWORK_ADMIN_TOKEN=bench-admin-token-0001 PATCHWORK_LOG=warn PATCHWORK_RATE_LIMIT_IP_RPS=0 \
  "$BIN" serve --listen "$ADDR" --data-dir "$WORK/data" >"$WORK/out" 2>"$WORK/err" &
PID=$!
for _ in $(seq 100); do curl -sf "$URL/healthz" >/dev/null && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }
echo "idle RSS: $(rss) kB" >&2

SIZE=$((1024 * 1024 * 1024))
rates=()
peaks=()
for run in 1 2 3; do
  ( timeout 120 curl -s "$URL/public/queue/gib" -o /dev/null -w '%{size_download}\n' >"$WORK/recv$run" ) &
  RECV=$!
  sleep 0.2
  peak=0
  ( while kill -0 $RECV 2>/dev/null; do r=$(rss); echo "$r"; sleep 0.1; done >"$WORK/rss$run" ) &
  SAMPLER=$!
  start=$(date +%s.%N)
  head -c "$SIZE" /dev/zero | timeout 120 curl -s -T - -H 'Content-Type: application/octet-stream' \
    "$URL/public/queue/gib" -o /dev/null
  wait $RECV
  end=$(date +%s.%N)
  wait $SAMPLER || true
  got=$(cat "$WORK/recv$run")
  [[ "$got" == "$SIZE" ]] || { echo "run $run received $got bytes" >&2; exit 1; }
  peak=$(sort -n "$WORK/rss$run" | tail -1)
  rate=$(echo "$SIZE / ($end - $start) / 1000000" | bc -l)
  printf 'run %d: %.0f MB/s, peak RSS %s kB\n' "$run" "$rate" "$peak" >&2
  rates+=("$rate")
  peaks+=("$peak")
done
median=$(printf '%s\n' "${rates[@]}" | sort -n | sed -n 2p)

# 200 sequential round trips against one blind responder loop.
( for _ in $(seq 200); do timeout 10 curl -s -X POST -d pong "$URL/public/res/rt" -o /dev/null || true; done ) &
RESP=$!
: >"$WORK/rt"
for _ in $(seq 200); do
  timeout 10 curl -s -o /dev/null -w '%{time_total}\n' -X POST -d ping "$URL/public/req/rt" >>"$WORK/rt"
done
wait $RESP || true
p50=$(sort -n "$WORK/rt" | awk '{a[NR]=$1} END {print a[int(NR*0.5)]*1000}')
p99=$(sort -n "$WORK/rt" | awk '{a[NR]=$1} END {print a[int(NR*0.99)]*1000}')
printf '{"scenario":"streams","gib_mb_s":[%s],"gib_mb_s_median":%.0f,"peak_rss_kb":[%s],"rt_count":%d,"rt_p50_ms":%s,"rt_p99_ms":%s}\n' \
  "$(printf '%.0f,' "${rates[@]}" | sed 's/,$//')" "$median" "$(IFS=,; echo "${peaks[*]}")" \
  "$(wc -l <"$WORK/rt")" "$p50" "$p99"
