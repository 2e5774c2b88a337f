#!/usr/bin/env bash
# ci/lint.sh - formatting, lints and docs of the whole workspace:
# 1. rustfmt --check on every package;
# 2. clippy with warnings as errors on every target (lib, bins, tests,
#    examples, benches), with the default features and with --all-features;
# 3. rustdoc with warnings as errors (broken intra-doc links, bad HTML...).
#
# Usage: ci/lint.sh
# Needs: the default toolchain's rustfmt and clippy (installed if missing).
# Time on a 2-core machine: about 2 minutes from a cold target dir (the
# dev-dependencies are most of it), seconds warm.
# Exit status: 0 clean, 1 a check failed, 2 skipped (rustfmt or clippy could
# not be installed).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
source ci/common.sh

toolchain=$(rustup show active-toolchain 2>/dev/null | cut -d' ' -f1)
ci_toolchain "${toolchain:-stable}" rustfmt clippy || exit

status=0
run() {
    echo "== $*"
    "$@" || status=1
}
run cargo fmt --all -- --check
run cargo clippy --workspace --all-targets --quiet -- -D warnings
run cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings
# The library with its optional parts off, alone and one at a time.
run cargo clippy -p mayfail --all-targets --no-default-features --quiet -- -D warnings
for feature in inject sweep sites pressure log; do
    run cargo clippy -p mayfail --no-default-features --features "$feature" --quiet -- -D warnings
done
RUSTDOCFLAGS="${RUSTDOCFLAGS:-} -D warnings" run cargo doc --workspace --no-deps --quiet
exit $status
