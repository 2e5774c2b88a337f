#!/usr/bin/env bash
# ci/test.sh - the README's test command, `cargo test --workspace`: unit
# tests, integration tests (real allocation failures in child processes
# under RLIMIT_AS), the CLI's tests and the doctests. If the root package has
# features that `default` does not enable, the suite runs a second time with
# --all-features. The library's retry-policy tests also run with its
# optional parts off.
#
# Usage: ci/test.sh [extra cargo test arguments]
# Time on a 2-core machine: about 4 minutes from a cold target dir, about 2
# minutes warm (the RLIMIT_AS tests and the sweeps dominate).
# Exit status: 0 all passed, 1 a test failed or did not build.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
source ci/common.sh

echo "== cargo test --workspace $*"
cargo test --workspace "$@" || exit 1

# The retry policy alone, as a production build without injection has it
# (the targets that need injection or the sweep are skipped by cargo).
echo "== cargo test -p mayfail --no-default-features --features pressure,log --lib --tests"
cargo test -p mayfail --no-default-features --features pressure,log --lib --tests "$@" || exit 1

extra=$(ci_root_package non_default_features) || exit 1
if [[ -n $extra ]]; then
    echo "== cargo test --workspace --all-features $* (non-default features: $(echo $extra))"
    cargo test --workspace --all-features "$@" || exit 1
else
    echo "== no non-default features: --all-features would run the same suite again"
fi
