#!/usr/bin/env bash
# ci/miri.sh - Miri (the interpreter that checks for undefined behaviour) on
# the library's pure-logic unit tests: the parsers of the environment
# variables and of the injection spec, the spec's canonical form, the
# backoff schedule, the policy's budget, the random sequence, the scope
# state and the stack buffer that messages are written to.
#
# Usage: ci/miri.sh [extra filters...]
# Time: a few minutes on a 2-core machine (Miri is slow; its sysroot is built
# once, which takes about a minute more).
#
# Miri needs the nightly toolchain's `miri` and `rust-src` components. On the
# development machine neither is installed and nothing can be downloaded, so
# the script stops with "SKIPPED" and exit status 2; where rustup can reach
# its server: rustup +nightly component add miri rust-src
#
# Only unit tests that stay inside the program are selected: Miri cannot run
# the integration tests (fork, setrlimit, signal handlers, child processes),
# and the library's tests that allocate through the real `MayFail` global
# allocator are not part of `--lib`. Tests that call into libc (clock,
# getrlimit, the unwinder) are left out by the filters below.
# Exit status: 0 clean, 1 Miri found something (or a test failed), 2 skipped.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
[[ -f Cargo.toml ]] || {
    echo "ci/miri.sh: run from the mayfail repository" >&2
    exit 1
}

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "ci/miri.sh: SKIPPED: no nightly toolchain; Miri exists only on nightly" >&2
    exit 2
fi
if ! cargo +nightly miri --version >/dev/null 2>&1; then
    echo "ci/miri.sh: SKIPPED: Miri is not installed for $(rustc +nightly --version)." >&2
    echo "    Install it where rustup can download: rustup +nightly component add miri rust-src" >&2
    exit 2
fi

# Unit-test name filters (substrings of `module::tests::name`).
FILTERS=(
    config::tests::            # MAYFAIL_RETRIES / MAYFAIL_SMALL / whole numbers
    spec::tests::              # the injection grammar and its canonical form
    backoff::tests::           # the backoff schedule
    policy::tests::            # the budget and the incurable check
    inject::tests::the_random_sequence_depends_on_the_seed
    scope::tests::             # per-thread scopes and the fail-nth countdown
    report::tests::stack_buf   # the fixed-size message buffer
    report::tests::shown       # escaping of values in messages
    report::tests::replayable  # escaping that replay lines round-trip
    sweep::tests::             # outcome order and point ranges
)
FILTERS+=("$@")

start=$SECONDS
mkdir -p target
echo "== $(cargo +nightly miri --version)"
echo "== cargo +nightly miri test --lib -- ${FILTERS[*]}"
# libtest runs every test whose name contains any of the filters.
MIRIFLAGS="${MIRIFLAGS:--Zmiri-strict-provenance}" \
    cargo +nightly miri test --lib -- "${FILTERS[@]}" 2>&1 | tee target/miri.log
rc=${PIPESTATUS[0]}
echo
for filter in "${FILTERS[@]}"; do
    grep -q "^test ${filter}" target/miri.log || echo "warning: no test matched '$filter' (renamed?)"
done
if [[ $rc == 0 ]]; then
    echo "== Miri: CLEAN ($((SECONDS - start)) s, log: target/miri.log)"
else
    echo "== Miri: FAILED (exit $rc; log: target/miri.log)"
    rc=1
fi
exit "$rc"
