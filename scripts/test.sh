#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need (scripts/setup.sh),
# then runs them. This is the README's test command, and .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

# Node may come from a cache folder (setup.sh puts it first on PATH there): the same here.
TOOLS="${PATCHWORK_TOOLS:-$HOME/.cache/patchwork-tools}"
bash scripts/setup.sh
if [ -x "$TOOLS/node/bin/node" ]; then
  export PATH="$TOOLS/node/bin:$PATH"
fi

cargo test --workspace --all-targets "$@"

# The parsers' fuzz targets, briefly (scripts/fuzz.sh; skipped without a nightly toolchain).
bash scripts/fuzz.sh "${PATCHWORK_FUZZ_SECONDS:-10}"
