#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (topic filters, legacy stream paths and Patch-* headers,
# Patch-Fence, SQL argument decoding, the JSON bodies of every route, MQTT packets), each for
# SECONDS, and prints
# executions per target.
#
#   scripts/fuzz.sh [SECONDS]     default 10 per target: the smoke run scripts/test.sh does
#
# Needs a nightly toolchain (libFuzzer's sanitizer coverage); without one it says so and exits 0
# (the targets are only smoke-tested where the toolchain allows it). cargo-fuzz is installed from
# crates.io into the tool cache, and the fuzz build's target directory is cached there too, so
# only the first run pays for the nightly build. Crashes fail the run; their inputs are kept in
# fuzz/artifacts/. The committed seeds in fuzz/corpus/ are copied, never modified.
set -euo pipefail

SECONDS_PER_TARGET="${1:-10}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${PATCHWORK_TOOLS:-$HOME/.cache/patchwork-tools}"
CARGO_FUZZ_VERSION=0.13.2
TARGETS=(topics stream_paths patch_fence sql_args json_bodies mqtt_packets)

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: no nightly toolchain here; the fuzz smoke run is skipped (rustup toolchain install nightly)"
  exit 0
fi
if [ ! -x "$TOOLS/cargo-fuzz/bin/cargo-fuzz" ] \
  || ! "$TOOLS/cargo-fuzz/bin/cargo-fuzz" --version | grep -q "$CARGO_FUZZ_VERSION"; then
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" --root "$TOOLS/cargo-fuzz"
fi
export PATH="$TOOLS/cargo-fuzz/bin:$PATH"
export CARGO_TARGET_DIR="$TOOLS/fuzz-target"

cd "$ROOT"
cargo +nightly fuzz build --fuzz-dir fuzz -O >&2
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
total=0
for target in "${TARGETS[@]}"; do
  mkdir -p "$work/$target"
  if [ -d "fuzz/corpus/$target" ]; then
    cp -r "fuzz/corpus/$target/." "$work/$target/"
  fi
  log="$work/$target.log"
  if ! cargo +nightly fuzz run --fuzz-dir fuzz -O "$target" "$work/$target" -- \
      -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz: $target FAILED (input kept in fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  runs="$(grep -Eo '^#[0-9]+' "$log" | tail -n 1 | tr -d '#')"
  total=$((total + ${runs:-0}))
  echo "fuzz: $target: ${runs:-0} executions in ${SECONDS_PER_TARGET}s, no crash"
done
echo "fuzz: $total executions in total"
