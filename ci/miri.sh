#!/usr/bin/env bash
# ci/miri.sh - Miri (the interpreter that checks for undefined behaviour:
# out-of-bounds and use-after-free accesses, invalid pointers, data races,
# uninitialised reads, leaks) on the unit tests of the workspace's library
# and binaries: `cargo +nightly miri test --workspace --exclude mayfail-preload --lib --bins`.
#
# Which tests run: all of them, except those marked
#     #[cfg_attr(miri, ignore = "why Miri cannot run it")]
# That attribute is the convention: a test that needs what Miri does not
# emulate (fork, mmap with odd flags, setrlimit, signals, child processes,
# the unwinder's symbol lookup, foreign calls in general) or that is too
# slow under it carries the marker, next to the test, with its reason;
# renaming or moving modules changes nothing here. The script lists the
# ignored tests at the end so they stay visible. The integration tests in
# tests/ are not run: they exercise the real global allocator in child
# processes, which is valgrind's and the sanitizers' job (ci/memcheck.sh,
# ci/san.sh).
#
# Usage: ci/miri.sh [test name filters...]
# Environment: MIRIFLAGS (default -Zmiri-disable-isolation
# -Zmiri-strict-provenance: isolation off because the CLI's tests write their
# state files to a temporary directory; the library's tests pass with it on);
# MAYFAIL_NIGHTLY picks the nightly toolchain.
# Needs: nightly with the miri and rust-src components (installed if
# missing) and Miri's sysroot (`cargo miri setup`, built once into
# ~/.cache/miri, about 2.5 minutes on 2 cores).
# Time on a 2-core machine: about 6 minutes from cold (sysroot 2.5, build of
# the dev-dependencies 3, the tests well under a minute), 1 minute warm.
# Exit status: 0 clean, 1 Miri found something (or a test failed), 2 skipped
# (Miri could not be installed).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
source ci/common.sh

ci_toolchain "$NIGHTLY" miri rust-src || exit
cargo +"$NIGHTLY" miri setup || {
    echo "ci/miri.sh: SKIPPED: cargo miri setup failed (it builds Miri's sysroot from rust-src)" >&2
    exit 2
}

LOG=${CARGO_TARGET_DIR:-target}/miri.log
mkdir -p "$(dirname "$LOG")"
start=$SECONDS
export MIRIFLAGS="${MIRIFLAGS:--Zmiri-disable-isolation -Zmiri-strict-provenance}"
echo "== $(cargo +"$NIGHTLY" miri --version), MIRIFLAGS=$MIRIFLAGS"
# mayfail-preload is left out: an LD_PRELOAD library whose constructor the
# loader calls with the program's arguments and whose exports replace
# glibc's malloc, neither of which an interpreter can stand in for.
echo "== cargo +$NIGHTLY miri test --workspace --exclude mayfail-preload --lib --bins -- $*"
cargo +"$NIGHTLY" miri test --workspace --exclude mayfail-preload --lib --bins --no-fail-fast -- "$@" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
# A whole program with MayFail as its global allocator: every allocation,
# reallocation and free of std's collections through the wrapper.
echo "== cargo +$NIGHTLY miri run -p mayfail --example global_allocator"
cargo +"$NIGHTLY" miri run -p mayfail --example global_allocator 2>&1 | tee -a "$LOG"
((PIPESTATUS[0] == 0)) || rc=1

echo
ignored=$(grep -E '^test .* \.\.\. ignored' "$LOG" | sed 's/^test \(.*\) \.\.\. ignored\(, \)\{0,1\}\(.*\)/\1\t\3/')
if [[ -n $ignored ]]; then
    echo "== not run under Miri (#[cfg_attr(miri, ignore)]):"
    sed 's/^/     /; s/\t$//; s/\t/: /' <<<"$ignored"
fi
if [[ $rc == 0 ]]; then
    echo "== Miri: CLEAN ($((SECONDS - start)) s, log: $LOG)"
    exit 0
fi
grep -E '^test .*(FAILED|error: )|^error: (Undefined Behavior|unsupported operation)' "$LOG" | sort | uniq -c | sed 's/^/   /'
echo "== Miri: FAILED (exit $rc, $((SECONDS - start)) s, log: $LOG)"
exit 1
