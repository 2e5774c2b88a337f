#!/usr/bin/env bash
# ci/san.sh - the stress test (tests/stress.rs) under AddressSanitizer and
# ThreadSanitizer, with the nightly toolchain.
#
# Usage: ci/san.sh [address] [thread]     (both by default)
# Environment: SAN_SECS (default 10) is the stress test's duration per
# sanitizer (MAYFAIL_STRESS_SECS); MAYFAIL_STRESS_SEED picks its seed.
# Time on a 2-core machine: from cold, a build per sanitizer of std and all
# the dev-dependencies, instrumented (target/san-address, target/san-thread):
# 5 to 10 minutes each, measured while other builds shared the cores; then
# SAN_SECS each. Warm: about 30 s.
#
# Both build std itself with the sanitizer (-Zbuild-std, from the rust-src
# component), so everything in the test binary is instrumented: ASan sees
# std's accesses too, and TSan sees std's synchronisation (without it,
# libtest's result channel showed up as a false race and rustc refused to
# mix instrumented and plain crates). No suppressions are needed.
# - address: AddressSanitizer + LeakSanitizer at exit.
# - thread: ThreadSanitizer.
# - Only the stress test: the tests that cap RLIMIT_AS (tests/real_oom.rs,
#   tests/retry_policy.rs, ...) fill glibc's malloc arenas on purpose and do
#   not hold under ASan's allocator or its 20 TB shadow mapping.
# Needs: nightly with rust-src (installed if missing; MAYFAIL_NIGHTLY picks
# the toolchain).
# Exit status: 0 all clean, 1 a sanitizer or the test failed, 2 skipped (the
# nightly toolchain or rust-src could not be installed).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
[[ -f Cargo.toml && -f tests/stress.rs ]] || {
    echo "ci/san.sh: run from the mayfail repository" >&2
    exit 1
}

source ci/common.sh
ci_toolchain "$NIGHTLY" rust-src || exit

SANITIZERS=("$@")
[[ ${#SANITIZERS[@]} -gt 0 ]] || SANITIZERS=(address thread)
SECS=${SAN_SECS:-10}
TARGET_TRIPLE=$(rustc +"$NIGHTLY" -vV | sed -n 's/^host: //p')
echo "== $(rustc +"$NIGHTLY" --version), target $TARGET_TRIPLE, std instrumented (-Zbuild-std)"

status=0
for san in "${SANITIZERS[@]}"; do
    case $san in
    address | thread) ;;
    *)
        echo "ci/san.sh: unknown sanitizer '$san': address or thread" >&2
        exit 1
        ;;
    esac
    dir=target/san-$san
    mkdir -p "$dir"
    flags="-Zsanitizer=$san"
    echo
    echo "== $san: building tests/stress.rs ($flags -Zbuild-std)"
    start=$SECONDS
    if ! RUSTFLAGS="$flags" cargo +"$NIGHTLY" test -Zbuild-std --target "$TARGET_TRIPLE" \
        --target-dir "$dir" --test stress --no-run 2>"$dir.build.log"; then
        tail -n 30 "$dir.build.log" >&2
        echo "== $san: BUILD FAILED (log: $dir.build.log)"
        status=1
        continue
    fi
    bin=$(sed -n 's/.*Executable tests\/stress.rs (\(.*\))$/\1/p' "$dir.build.log" | tail -n 1)
    if [[ ! -x $bin ]]; then
        for candidate in "$dir/$TARGET_TRIPLE"/debug/deps/stress-*; do
            [[ -x $candidate && $candidate != *.d && $candidate -nt $bin ]] && bin=$candidate
        done
    fi
    echo "   built in $((SECONDS - start)) s: $bin"
    log=$dir.run.log
    echo "== $san: running the stress test for $SECS s"
    MAYFAIL_STRESS_SECS=$SECS \
        ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}" \
        TSAN_OPTIONS="halt_on_error=0:second_deadlock_stack=1${TSAN_OPTIONS:+:$TSAN_OPTIONS}" \
        "$bin" --nocapture >"$log" 2>&1
    rc=$?
    grep -E '^stress:' "$log" | sed 's/^/   /'
    reports=$(grep -c -E '^(WARNING: ThreadSanitizer|==[0-9]+==ERROR: (Address|Leak)Sanitizer)' "$log")
    if [[ $rc == 0 && $reports == 0 ]] && grep -q 'test result: ok. 1 passed' "$log"; then
        echo "== $san: CLEAN ($((SECONDS - start)) s, log: $log)"
    else
        grep -E -A30 '^(WARNING: ThreadSanitizer|==[0-9]+==ERROR)' "$log" | head -n 80
        grep -E 'panicked|test result' "$log"
        echo "== $san: FAILED: exit $rc, $reports sanitizer reports (log: $log)"
        status=1
    fi
done
exit $status
