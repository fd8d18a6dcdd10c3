#!/usr/bin/env bash
# MQTT QoS 1 publishing, Mosquitto (Debian) against Patchwork's MQTT adapter, in the same
# minutes on the same machine, with the same client (paho-mqtt, loadtests/mqtt_bench.py):
# one publisher keeping 100 QoS 1 messages of 1 KiB in flight, one QoS 1 subscriber in another
# process measuring publish-to-delivery latency. Mosquitto keeps messages in memory; every
# message Patchwork acknowledges is committed to SQLite first (synchronous=NORMAL).
#
# Installs mosquitto and paho-mqtt like scripts/setup.sh when missing, builds the release
# binary, starts both brokers on free ports with throwaway data dirs, prints one line per run
# and stops both on exit.
#
# Environment overrides (all optional):
#   DURATION (10)       seconds of publishing per run
#   INFLIGHT (100)      unacknowledged publishes kept in flight
#   ROUNDS (1)          repeat both runs, alternating
#   PATCHWORK_BIN       use this server binary instead of building patchwork-cli
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DURATION="${DURATION:-10}"
INFLIGHT="${INFLIGHT:-100}"
ROUNDS="${ROUNDS:-1}"
TOOLS="${PATCHWORK_TOOLS:-$HOME/.cache/patchwork-tools}"
log() { echo "mqtt_compare: $*" >&2; }

command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || bash scripts/setup.sh
MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
[[ -d "$TOOLS/paho/paho" ]] || bash scripts/setup.sh
export PYTHONPATH="$TOOLS/paho"

if [[ -z "${PATCHWORK_BIN:-}" ]]; then
    cargo build --release -p patchwork-cli >&2
    PATCHWORK_BIN="$ROOT/target/release/patchwork"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
TMP="$(mktemp -d)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

wait_port() {
    for _ in $(seq 100); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null && return 0
        sleep 0.1
    done
    log "nothing listens on $1"
    exit 1
}

# One run: a subscriber (started first) and a publisher against PORT with PASSWORD.
run() {
    local name="$1" port="$2" password="$3" topic="$4"
    python3 loadtests/mqtt_bench.py sub --port "$port" --password "$password" --topic "$topic" \
        --seconds "$((DURATION + 3))" --inflight "$INFLIGHT" >"$TMP/sub.out" &
    local sub=$!
    sleep 1
    local pub
    pub="$(python3 loadtests/mqtt_bench.py pub --port "$port" --password "$password" \
        --topic "$topic" --seconds "$DURATION" --inflight "$INFLIGHT")"
    wait "$sub"
    echo "$name: $pub; $(cat "$TMP/sub.out")"
}

# Mosquitto 2 (anonymous on loopback, messages in memory).
MPORT="$(free_port)"
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_inflight_messages %s\nmax_queued_messages 100000\n' \
    "$MPORT" "$INFLIGHT" >"$TMP/mosquitto.conf"
"$MOSQUITTO" -c "$TMP/mosquitto.conf" >"$TMP/mosquitto.log" 2>&1 &
PIDS+=($!)

# Patchwork (synchronous=NORMAL: committed before PUBACK, not fsynced each time).
PPORT="$(free_port)"
HPORT="$(free_port)"
TOKEN="mqtt-bench-admin-token-$(date +%s)"
PATCHWORK_ADMIN_TOKEN="$TOKEN" "$PATCHWORK_BIN" serve --listen "127.0.0.1:$HPORT" \
    --data-dir "$TMP/data" --mqtt-listen "127.0.0.1:$PPORT" --mqtt-max-inflight "$INFLIGHT" \
    --synchronous normal >"$TMP/patchwork.log" 2>&1 &
PIDS+=($!)
wait_port "$MPORT"
wait_port "$PPORT"
log "mosquitto on $MPORT, patchwork on $PPORT (http $HPORT); ${DURATION}s per run, $INFLIGHT in flight"

for round in $(seq "$ROUNDS"); do
    run "mosquitto (round $round)" "$MPORT" "" "bench/t"
    run "patchwork (round $round)" "$PPORT" "$TOKEN" "db/bench/t"
done
