#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need, then runs them.
# This is the README's test command, and .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

# (Later capabilities add their real test components here: OIDC provider, S3 server, MQTT
# clients, headless Chromium — each installed from a package registry, never downloaded ad hoc.)

# OIDC provider for the login tests (internal/src/testing/oidc.rs starts it): npm `oidc-provider`,
# pinned by scripts/oidc/package-lock.json, run by the machine's Node.js. It needs Node >= 20.18
# (Debian bookworm's own nodejs package, installed here only when node is missing, is 18: too old).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm
fi
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number);
              process.exit(a > 20 || (a === 20 && b >= 18) ? 0 : 1)'; then
  echo "scripts/test.sh: Node.js $(node --version) is too old for oidc-provider 9 (needs >= 20.18)" >&2
  exit 1
fi
# Installed again only when missing or when the lock changed (its hash is stamped in node_modules).
oidc_lock_hash=$(sha256sum scripts/oidc/package-lock.json | cut -d' ' -f1)
oidc_stamp=scripts/oidc/node_modules/.package-lock.sha256
if [ ! -d scripts/oidc/node_modules/oidc-provider ] \
  || [ "$(cat "$oidc_stamp" 2>/dev/null || true)" != "$oidc_lock_hash" ]; then
  npm ci --no-audit --no-fund --prefix scripts/oidc
  echo "$oidc_lock_hash" >"$oidc_stamp"
fi

cargo test --workspace --all-targets "$@"
