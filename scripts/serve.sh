#!/usr/bin/env bash
# The README's first command: builds (installing what the build needs once) and starts
# Patchwork on its embedded defaults. Extra arguments go to `patchwork serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh build
exec cargo run --release -p patchwork-cli -- serve "$@"
