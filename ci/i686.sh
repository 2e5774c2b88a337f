#!/usr/bin/env bash
# ci/i686.sh - the workspace type-checks for a 32-bit target
# (i686-unknown-linux-gnu): usize is 32 bits there, which catches 64-bit
# constants and shifts, and casts that assume 64-bit pointers.
#
# 1. cargo check --workspace --lib --bins: the library and the CLI.
# 2. cargo check --workspace --all-targets: tests, examples and benches too.
#    `cargo check` does not link, but some dev-dependencies have build
#    scripts that compile C (alloca, for criterion), which needs 32-bit libc
#    headers: on Debian, `apt-get install libc6-dev-i386` (.ci/run does).
#    Without them this step is skipped.
#
# Usage: ci/i686.sh
# Needs: the i686-unknown-linux-gnu standard library (rustup target add;
# installed if missing).
# Time on a 2-core machine: about 1.5 minutes from cold, seconds warm.
# Exit status: 0 both steps pass, 1 one fails, 2 step 2 skipped (no 32-bit
# C headers) or the target could not be installed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
source ci/common.sh

TRIPLE=i686-unknown-linux-gnu
toolchain=$(rustup show active-toolchain 2>/dev/null | cut -d' ' -f1)
ci_target "${toolchain:-stable}" "$TRIPLE" || exit

echo "== cargo check --workspace --lib --bins --target $TRIPLE"
cargo check --workspace --lib --bins --target "$TRIPLE" --quiet || {
    echo "== i686: FAILED: the library or the CLI does not build for 32-bit targets" >&2
    exit 1
}
if ! echo '#include <stdint.h>' | "${CC:-cc}" -m32 -fsyntax-only -x c - 2>/dev/null; then
    echo "== i686: --all-targets SKIPPED: no 32-bit C headers (apt-get install libc6-dev-i386)" >&2
    exit 2
fi
echo "== cargo check --workspace --all-targets --target $TRIPLE"
cargo check --workspace --all-targets --target "$TRIPLE" --quiet || {
    echo "== i686: FAILED: a test, example or bench does not build for 32-bit targets" >&2
    exit 1
}
echo "== i686: builds"
