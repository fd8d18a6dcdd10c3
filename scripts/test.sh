#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need, then runs them.
# This is the README's test command, and .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

# (Later capabilities add their real test components here: OIDC provider, S3 server, MQTT
# clients, headless Chromium — each installed from a package registry, never downloaded ad hoc.)

cargo test --workspace --all-targets "$@"
