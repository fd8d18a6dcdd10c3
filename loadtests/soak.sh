#!/usr/bin/env bash
# The crash-cycle soak (`loadtests soak`, src/soak.rs): builds the release binaries, then starts
# patchwork on a fresh data dir, kills it with SIGKILL at a random moment of each cycle of mixed
# writes, restarts it and checks every SQLite file and every acknowledged write. The last stdout
# line is the JSON report; the exit code is 1 on any violation.
#
#   loadtests/soak.sh                       20 cycles of 5 s (about 80 s on 2 cores)
#   loadtests/soak.sh --cycles 5 --seed 42  any `loadtests soak` flag is passed on
#
# Environment overrides (optional):
#   PATCHWORK_BIN  use this server binary instead of building patchwork-cli (copied first, so a
#                  rebuild during the run does not change the binary between restarts)
#   CYCLES (20), SECONDS_PER_CYCLE (5), CONCURRENCY (8)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ -z "${PATCHWORK_BIN:-}" ]]; then
    cargo build --release -p patchwork-cli -p loadtests >&2
    PATCHWORK_BIN="$ROOT/target/release/patchwork"
else
    cargo build --release -p loadtests >&2
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$PATCHWORK_BIN" "$work/patchwork"

"$ROOT/target/release/loadtests" soak --bin "$work/patchwork" \
    --cycles "${CYCLES:-20}" --seconds-per-cycle "${SECONDS_PER_CYCLE:-5}" \
    --concurrency "${CONCURRENCY:-8}" "$@"
