#!/usr/bin/env bash
# ci/msrv.sh - the minimum supported Rust version: the workspace must build
# with the toolchain that the root package's `rust-version` names.
#
# Reads `rust-version` from the root Cargo.toml (through cargo metadata, so
# `rust-version.workspace = true` works too), installs that toolchain with
# rustup (minimal profile) if it is missing, and runs
#     cargo +<rust-version> check --workspace --all-targets
# in target/msrv. All targets, not only the library: the tests, examples and
# benches are what users copy, and the committed Cargo.lock pins
# dev-dependencies that build with it. (If a dev-dependency ever needs a
# newer compiler, narrow this to --lib --bins rather than raise the MSRV.)
#
# Usage: ci/msrv.sh
# Time on a 2-core machine: about 3 minutes from cold (plus the toolchain's
# download, under a minute), seconds warm.
# Exit status: 0 builds, 1 does not build or `rust-version` is missing,
# 2 skipped (the toolchain could not be installed).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
source ci/common.sh

msrv=$(ci_root_package rust_version) || exit
if [[ -z $msrv ]]; then
    echo "ci/msrv.sh: the root package declares no rust-version: add one to [package] in Cargo.toml" >&2
    echo "    (e.g. rust-version = \"1.88\"), the oldest toolchain this check passes with" >&2
    exit 1
fi
ci_toolchain "$msrv" || exit

echo "== $(rustc +"$msrv" --version): cargo check --workspace --all-targets"
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}/msrv \
    cargo +"$msrv" check --workspace --all-targets --quiet || {
    echo "== MSRV $msrv: FAILED: the workspace does not build with Rust $msrv" >&2
    exit 1
}
echo "== MSRV $msrv: builds"
