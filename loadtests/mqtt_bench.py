"""MQTT QoS 1 publish benchmark with paho-mqtt (the same client against any broker).

    python3 mqtt_bench.py pub  --port P --password T --topic db/bench/t --seconds 10 --inflight 100
    python3 mqtt_bench.py sub  --port P --password T --topic db/bench/t --seconds 12

`pub` publishes 1 KiB payloads at QoS 1 keeping `--inflight` unacknowledged (a semaphore
released by each PUBACK) and prints `published N acked/s`. Each payload starts with the send
time (ns since the epoch), so `sub` (a separate process, QoS 1) prints the publish-to-delivery
latency p50/p99 of what it received. Run by loadtests/mqtt_compare.sh.
"""

import argparse
import struct
import sys
import threading
import time

import paho.mqtt.client as mqtt

PAYLOAD = 1024


def client(args, name):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
    if args.password:
        c.username_pw_set("bench", args.password)
    c.max_inflight_messages_set(args.inflight)
    return c


def publish(args):
    c = client(args, "bench-pub")
    window = threading.Semaphore(args.inflight)
    acked = [0]

    def on_publish(_c, _u, _mid, _rc, _props):
        acked[0] += 1
        window.release()

    c.on_publish = on_publish
    c.connect("127.0.0.1", args.port)
    c.loop_start()
    pad = b"x" * (PAYLOAD - 8)
    # Warm-up: one round trip.
    c.publish(args.topic, struct.pack(">q", time.time_ns()) + pad, qos=1).wait_for_publish(10)
    acked[0] = 0
    start = time.monotonic()
    end = start + args.seconds
    while time.monotonic() < end:
        if not window.acquire(timeout=5):
            print("stalled: no PUBACK for 5 s", file=sys.stderr)
            break
        c.publish(args.topic, struct.pack(">q", time.time_ns()) + pad, qos=1)
    elapsed = time.monotonic() - start
    done = acked[0]
    c.disconnect()
    c.loop_stop()
    print(f"published {done / elapsed:.0f} acked/s ({done} in {elapsed:.1f} s)")


def subscribe(args):
    c = client(args, "bench-sub")
    lat = []

    def on_message(_c, _u, m):
        sent = struct.unpack(">q", m.payload[:8])[0]
        lat.append((time.time_ns() - sent) / 1e6)

    c.on_message = on_message
    c.connect("127.0.0.1", args.port)
    c.subscribe(args.topic, qos=1)
    c.loop_start()
    time.sleep(args.seconds)
    c.disconnect()
    c.loop_stop()
    if not lat:
        print("received 0")
        return
    lat.sort()
    p = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))]
    print(f"received {len(lat)} p50 {p(0.5):.2f} ms p99 {p(0.99):.2f} ms")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["pub", "sub"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--password", default="")
    ap.add_argument("--topic", default="db/bench/t")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--inflight", type=int, default=100)
    args = ap.parse_args()
    publish(args) if args.mode == "pub" else subscribe(args)


if __name__ == "__main__":
    main()
