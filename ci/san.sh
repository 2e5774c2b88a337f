#!/usr/bin/env bash
# ci/san.sh - the stress test (tests/stress.rs) under AddressSanitizer and
# ThreadSanitizer, with the nightly toolchain.
#
# Usage: ci/san.sh [address] [thread]     (both by default)
# Environment: SAN_SECS (default 10) is the stress test's duration per
# sanitizer (MAYFAIL_STRESS_SECS); MAYFAIL_STRESS_SEED picks its seed.
# Time on a 2-core machine: about 70 s of build per sanitizer from cold
# (target/san-address, target/san-thread), then SAN_SECS each: ~3 minutes
# cold, ~30 s warm.
#
# What works, as found on the development machine (nightly 1.97, no rust-src
# component, nothing can be downloaded):
# - address: works. std itself is not instrumented (no -Zbuild-std without
#   rust-src), but every allocation goes through ASan's malloc and all of
#   mayfail's and the test's code is instrumented; LeakSanitizer runs at exit.
# - thread: rustc refuses to mix a TSan-built crate with the uninstrumented
#   std ("mixing -Zsanitizer will cause an ABI mismatch"); with
#   -Cunsafe-allow-abi-mismatch=sanitizer it builds and runs. std's own
#   synchronisation is then invisible to TSan: libtest's result channel
#   (std::sync::mpmc) is reported as a race, which is a false positive and is
#   suppressed; mayfail's atomics and the test's are instrumented.
#   With rust-src installed, the script uses -Zbuild-std instead and needs
#   neither the flag nor the suppression.
# - Only the stress test: the tests that cap RLIMIT_AS (tests/real_oom.rs,
#   tests/retry_policy.rs, ...) fill glibc's malloc arenas on purpose and do
#   not hold under ASan's allocator or its 20 TB shadow mapping.
# Exit status: 0 all clean, 1 a sanitizer or the test failed, 2 skipped (no
# nightly toolchain).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
[[ -f Cargo.toml && -f tests/stress.rs ]] || {
    echo "ci/san.sh: run from the mayfail repository" >&2
    exit 1
}

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "ci/san.sh: SKIPPED: no nightly toolchain (sanitizers need -Z flags); install one with" >&2
    echo "    rustup toolchain install nightly" >&2
    exit 2
fi

SANITIZERS=("$@")
[[ ${#SANITIZERS[@]} -gt 0 ]] || SANITIZERS=(address thread)
SECS=${SAN_SECS:-10}
TARGET_TRIPLE=$(rustc +nightly -vV | sed -n 's/^host: //p')
SYSROOT=$(rustc +nightly --print sysroot)
if [[ -d $SYSROOT/lib/rustlib/src/rust/library ]]; then
    BUILD_STD=1
else
    BUILD_STD=0
fi
echo "== $(rustc +nightly --version), target $TARGET_TRIPLE, rust-src: $([[ $BUILD_STD == 1 ]] && echo yes, -Zbuild-std || echo 'no (std not instrumented)')"

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
    extra=()
    if [[ $BUILD_STD == 1 ]]; then
        extra=(-Zbuild-std)
    elif [[ $san == thread ]]; then
        flags="$flags -Cunsafe-allow-abi-mismatch=sanitizer"
    fi
    echo
    echo "== $san: building tests/stress.rs ($flags ${extra[*]})"
    start=$SECONDS
    if ! RUSTFLAGS="$flags" cargo +nightly test "${extra[@]}" --target "$TARGET_TRIPLE" \
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
    supp=$dir/tsan.supp
    printf '%s\n' \
        '# std is not instrumented: its channels synchronise through atomics TSan cannot see.' \
        'race:std::sync::mpmc::' >"$supp"
    echo "== $san: running the stress test for $SECS s"
    MAYFAIL_STRESS_SECS=$SECS \
        ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}" \
        TSAN_OPTIONS="halt_on_error=0:second_deadlock_stack=1$([[ $BUILD_STD == 0 ]] && echo ":suppressions=$PWD/$supp")${TSAN_OPTIONS:+:$TSAN_OPTIONS}" \
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
