#!/usr/bin/env bash
# Unpipelined publish, NATS JetStream against Patchwork, in the same minutes on the same machine:
# every publisher sends one 1 KiB message and waits for its acknowledgement before sending the
# next (window 1), like a broker benchmark's synchronous publisher.
#
#   1. NATS JetStream: `loadtests publish-nats` (file-storage stream on bench.>, one NATS
#      connection per publisher)
#   2. Patchwork over WebSockets: `loadtests publish-ws --window 1` (one socket per publisher)
#   3. Patchwork over HTTP: `loadtests publish` (POST /messages; each worker waits for its 201)
#
# each with PUBLISHERS publishers (default "1 16"), all on loopback. Installs nats-server when it
# is missing (apt, or the official release tarball into ~/.cache/patchwork-tools/nats), builds
# release binaries, starts nats-server with JetStream (`-js -sd TMP`) and Patchwork
# (synchronous=NORMAL) on free ports with throwaway data dirs, runs everything, prints a table
# with the Patchwork/NATS ratios and the JSON lines, and stops both servers on exit (also on
# failure or Ctrl-C).
#
# Environment overrides (all optional):
#   DURATION (10) / WARMUP (2)  seconds per run, and unrecorded warm-up before each
#   PUBLISHERS ("1 16")         publisher counts
#   ROUNDS (1)                  repeat the whole set, alternating; the table shows medians
#   SYNCHRONOUS (normal)        Patchwork's PATCHWORK_SYNCHRONOUS (normal or full)
#   PATCHWORK_BIN               use this server binary instead of building patchwork-cli
#   NATS_SERVER                 use this nats-server binary
#   NATS_VERSION (2.11.0)       release fetched when apt has no nats-server
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
PUBLISHERS="${PUBLISHERS:-1 16}"
ROUNDS="${ROUNDS:-1}"
SYNCHRONOUS="${SYNCHRONOUS:-normal}"
NATS_VERSION="${NATS_VERSION:-2.11.0}"
log() { echo "publish_compare: $*" >&2; }

# --- nats-server -------------------------------------------------------------------------------
SUDO=""
[[ "$(id -u)" == 0 ]] || SUDO="sudo"
find_nats() {
    if [[ -n "${NATS_SERVER:-}" ]]; then
        echo "$NATS_SERVER"
    elif command -v nats-server >/dev/null; then
        command -v nats-server
    elif [[ -x "$HOME/.cache/patchwork-tools/nats/nats-server" ]]; then
        echo "$HOME/.cache/patchwork-tools/nats/nats-server"
    fi
}
NATS="$(find_nats)"
if [[ -z "$NATS" ]]; then
    # (Not `apt-cache … | grep -q`: with pipefail, grep quitting early fails the pipeline.)
    candidate="$(apt-cache policy nats-server 2>/dev/null | sed -n 's/^ *Candidate: //p')"
    if [[ -n "$candidate" && "$candidate" != "(none)" ]]; then
        log "installing nats-server from apt"
        $SUDO apt-get install -y nats-server >&2
    else
        # Not in this distribution's archive: the official static build, checked against the
        # release's checksums.
        dir="$HOME/.cache/patchwork-tools/nats"
        case "$(uname -m)" in
            x86_64) arch=amd64 ;;
            aarch64) arch=arm64 ;;
            *) log "no nats-server for $(uname -m); set NATS_SERVER"; exit 1 ;;
        esac
        name="nats-server-v${NATS_VERSION}-linux-${arch}"
        base="https://github.com/nats-io/nats-server/releases/download/v${NATS_VERSION}"
        log "apt has no nats-server; fetching $name.tar.gz into $dir"
        mkdir -p "$dir"
        tmp="$(mktemp -d)"
        curl -fsSL --max-time 300 -o "$tmp/$name.tar.gz" "$base/$name.tar.gz"
        curl -fsSL --max-time 60 -o "$tmp/SHA256SUMS" "$base/SHA256SUMS"
        (cd "$tmp" && grep " $name.tar.gz\$" SHA256SUMS | sha256sum -c - >&2)
        tar -xzf "$tmp/$name.tar.gz" -C "$tmp"
        install -m 0755 "$tmp/$name/nats-server" "$dir/nats-server"
        rm -rf "$tmp"
    fi
    NATS="$(find_nats)"
    [[ -n "$NATS" ]] || { log "nats-server is still missing"; exit 1; }
fi
NATS_VERSION_LINE="$("$NATS" --version 2>&1 | head -n 1)"

# --- builds ------------------------------------------------------------------------------------
log "building release binaries"
# shellcheck source=loadtests/lib.sh
source "$ROOT/loadtests/lib.sh"
build_binaries

# --- servers -----------------------------------------------------------------------------------
WORK="$(mktemp -d -t pw-nats-compare.XXXXXX)"
NATS_PID=""
SERVER_PID=""
stop() {
    local pid="$1"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid" 2>/dev/null || true
    # A few seconds to shut down cleanly, then insist.
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    stop "$SERVER_PID"
    stop "$NATS_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free loopback port (the kernel's pick; python3 if present, else a random unused one).
free_port() {
    if command -v python3 >/dev/null &&
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null; then
        return
    fi
    local p
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    log "no free port found"
    exit 1
}
# Waits up to 30 s for a TCP listener; fails if the process died.
wait_listening() {
    local pid="$1" port="$2" what="$3" logfile="$4"
    for _ in $(seq 300); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$what exited early; its log:"
            cat "$logfile" >&2
            exit 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return
        fi
        sleep 0.1
    done
    log "$what did not listen on 127.0.0.1:$port within 30 s; its log:"
    cat "$logfile" >&2
    exit 1
}

NATS_PORT="$(free_port)"
NATS_URL="nats://127.0.0.1:${NATS_PORT}"
log "starting $NATS on $NATS_URL (JetStream store $WORK/nats)"
"$NATS" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!
wait_listening "$NATS_PID" "$NATS_PORT" nats-server "$WORK/nats.log"

PW_PORT="$(free_port)"
PW_URL="http://127.0.0.1:${PW_PORT}"
TOKEN="bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
log "starting $SERVER on $PW_URL (data dir $WORK/data, synchronous=$SYNCHRONOUS)"
# Every load client connects from 127.0.0.1: lift the per-IP connection cap for the run.
PATCHWORK_MAX_CONNECTIONS_PER_IP=100000 PATCHWORK_LOG=warn PATCHWORK_SYNCHRONOUS="$SYNCHRONOUS" \
PATCHWORK_ADMIN_TOKEN="$TOKEN" "$SERVER" serve --listen "127.0.0.1:${PW_PORT}" \
    --data-dir "$WORK/data" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
wait_listening "$SERVER_PID" "$PW_PORT" patchwork "$WORK/server.log"
ready=0
for _ in $(seq 60); do
    if "$LOADTESTS" healthz --url "$PW_URL" --concurrency 1 --duration 1 --max-requests 1 \
        --timeout-ms 1000 >/dev/null 2>&1; then
        ready=1
        break
    fi
    sleep 0.5
done
[[ "$ready" == 1 ]] || { log "$PW_URL/healthz did not answer 200"; cat "$WORK/server.log" >&2; exit 1; }

# --- runs --------------------------------------------------------------------------------------
SYSTEMS=(nats ws http)
label() {
    case "$1" in
        nats) echo "NATS JetStream (file)" ;;
        ws) echo "Patchwork WebSocket, window 1" ;;
        http) echo "Patchwork HTTP POST /messages" ;;
    esac
}
run_one() {
    local sys="$1" n="$2"
    local common=(--concurrency "$n" --duration "$DURATION" --warmup "$WARMUP")
    case "$sys" in
        nats) "$LOADTESTS" publish-nats --url "$NATS_URL" "${common[@]}" --window 1 --payload-bytes 1024 ;;
        ws) "$LOADTESTS" publish-ws --url "$PW_URL" --token "$TOKEN" "${common[@]}" --window 1 \
            --payload-bytes 1024 ;;
        http) "$LOADTESTS" publish --url "$PW_URL" --token "$TOKEN" "${common[@]}" ;;
    esac
}
field() { sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p" <<<"$1"; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A LINES
status=0
for round in $(seq "$ROUNDS"); do
    for n in $PUBLISHERS; do
        for sys in "${SYSTEMS[@]}"; do
            log "round $round/$ROUNDS: $(label "$sys"), $n publisher(s)"
            out="$WORK/$sys-$n-$round.out"
            if ! run_one "$sys" "$n" >"$out"; then
                log "$sys with $n publishers failed; its output:"
                cat "$out" >&2
                status=1
            fi
            LINES["$sys,$n"]+="$(tail -n 1 "$out")"$'\n'
        done
    done
done

# --- report ------------------------------------------------------------------------------------
echo
echo "Unpipelined publish (window 1), 1 KiB payloads, ${DURATION} s per run after ${WARMUP} s warm-up, ${ROUNDS} round(s)"
echo "date:      $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine:   $(nproc) cpus ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr)"
echo "nats:      $NATS_VERSION_LINE, async-nats $(sed -n '/^name = "async-nats"$/{n;s/version = "\(.*\)"/\1/p}' Cargo.lock)"
if [[ -n "${PATCHWORK_BIN:-}" ]]; then
    built="PATCHWORK_BIN"
else
    built="built from $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' with local changes')"
fi
echo "patchwork: $("$SERVER" --version 2>/dev/null | head -n 1) ($SERVER, $built), synchronous=$SYNCHRONOUS"
echo "loadtests: $LOADTESTS"
echo
printf '%-31s %10s %10s %8s %8s %8s %7s %12s %12s\n' system publishers msg/s p50_ms p99_ms max_ms errors "msg/s ÷ NATS" "p50 ÷ NATS"
for n in $PUBLISHERS; do
    nats_rate=""
    nats_p50=""
    for sys in "${SYSTEMS[@]}"; do
        lines="${LINES["$sys,$n"]}"
        col() {
            local l
            while read -r l; do
                if [[ -n "$l" ]]; then field "$l" "$1"; fi
            done <<<"$lines"
        }
        rate="$(col rps | median)"
        p50="$(col p50_ms | median)"
        p99="$(col p99_ms | median)"
        max="$(col max_ms | sort -g | tail -n 1)"
        errors="$(col errors | awk '{ s += $1 } END { print s + 0 }')"
        if [[ "$sys" == nats ]]; then
            nats_rate="$rate"
            nats_p50="$p50"
        fi
        ratio="$(awk -v a="$rate" -v b="$nats_rate" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "-" }')"
        lratio="$(awk -v a="$p50" -v b="$nats_p50" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')"
        printf '%-31s %10s %10.1f %8.3f %8.3f %8.3f %7s %12s %12s\n' "$(label "$sys")" "$n" \
            "${rate:-0}" "${p50:-0}" "${p99:-0}" "${max:-0}" "$errors" "$ratio" "$lratio"
    done
done
echo
echo "JSON results:"
for n in $PUBLISHERS; do
    for sys in "${SYSTEMS[@]}"; do
        printf '%s' "${LINES["$sys,$n"]}"
    done
done
exit "$status"
