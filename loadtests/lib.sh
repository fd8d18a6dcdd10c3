# Shared by the loadtests scripts (sourced, not run): builds the release binaries and names them.
#
#   build_binaries    sets SERVER (PATCHWORK_BIN when given, else the freshly built patchwork)
#                     and LOADTESTS (the load generator); build output goes to stderr

build_binaries() {
    if [[ -z "${PATCHWORK_BIN:-}" ]]; then
        cargo build --release -p patchwork-cli -p loadtests >&2
    else
        cargo build --release -p loadtests >&2
    fi
    local target_dir
    target_dir="$(cargo metadata --no-deps --format-version 1 |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
    SERVER="${PATCHWORK_BIN:-${target_dir}/release/patchwork}"
    LOADTESTS="${target_dir}/release/loadtests"
}
