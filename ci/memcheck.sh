#!/usr/bin/env bash
# ci/memcheck.sh - valgrind memcheck on mayfail and its preload library:
# invalid reads and writes, uses of uninitialised memory, bad frees, and
# (where meaningful) leaks.
#
# Usage: ci/memcheck.sh
# Environment: MEMCHECK_SECS (default 15) is the stress test's duration:
# on a loaded machine its threads have done no operation at all after 6 s
# under valgrind (start-up), and the test needs 1000.
# Time on a 2-core machine: about 1 minute once the debug build exists (plus
# its build, about a minute from cold). Logs: target/memcheck/.
#
# What runs, and why not just the demo:
# 1. tests/stress.rs (threads, injection, realloc, alloc_zeroed, fail-nth)
#    with --leak-check=full: any definitely-lost block fails the step.
# 2. tests/odd_contexts.rs with --trace-children=yes (its re-run children and
#    forked children are checked too), without leak checking: a forked child
#    ends with _exit while the blocks of threads that do not exist in it are
#    still allocated, which valgrind reports as lost. Skipped: its test that
#    exhausts memory under RLIMIT_AS (see 4), its crash tests, whose
#    children write through null on purpose, and its tests of programs that
#    handle a fault themselves, whose children read unmapped memory on
#    purpose.
# 3. The library's unit tests, with --leak-check=full.
# 4. examples/pressure.rs (the demo), the parent process only: each child
#    caps its own address space with RLIMIT_AS and fills it, and under
#    valgrind that limit covers valgrind's own mappings too, so a traced child
#    dies with "Valgrind's memory management: out of memory" before the demo
#    starts. The children run natively; the parent (spawning, parsing,
#    reporting) is checked.
# 5. The preload library (libmayfail_preload.so) under its stress program,
#    mayfail-preload/tests/stress.c (threads, realloc contents, fork), with
#    injected failures: once without its fork, with --leak-check=full, once
#    with it, without leak checking (see 2). A canary first proves the set-up
#    checks the library: see preload_canary below.
# Exit status: 0 clean, 1 errors found (or a test failed), 2 skipped
# (valgrind missing).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
[[ -f Cargo.toml && -f tests/stress.rs ]] || {
    echo "ci/memcheck.sh: run from the mayfail repository" >&2
    exit 1
}
if ! command -v valgrind >/dev/null; then
    echo "ci/memcheck.sh: SKIPPED: valgrind is not installed (apt-get install valgrind)" >&2
    exit 2
fi

OUT=${CARGO_TARGET_DIR:-target}/memcheck
mkdir -p "$OUT"
rm -f "$OUT"/*.log
SECS=${MEMCHECK_SECS:-15}
start=$SECONDS
status=0

echo "== $(valgrind --version); building the tests and the demo (debug)"
if ! cargo test --no-run --lib --test stress --test odd_contexts 2>"$OUT/build.log" ||
    ! cargo build --example pressure 2>>"$OUT/build.log" ||
    ! cargo build -p mayfail-preload 2>>"$OUT/build.log" ||
    ! cc -g -O1 -pthread -o "$OUT/preload-stress" mayfail-preload/tests/stress.c 2>>"$OUT/build.log"; then
    tail -n 30 "$OUT/build.log" >&2
    exit 1
fi
executable() { # the test binary for a target as cargo named it
    sed -n "s/.*Executable $1 (\(.*\))\$/\1/p" "$OUT/build.log" | tail -n 1
}
STRESS=$(executable 'tests\/stress.rs')
ODD=$(executable 'tests\/odd_contexts.rs')
LIB=$(executable 'unittests src\/lib.rs')
DEMO=${CARGO_TARGET_DIR:-target}/debug/examples/pressure
PRELOAD=$(realpath "${CARGO_TARGET_DIR:-target}/debug/libmayfail_preload.so")

# --fair-sched=yes: valgrind runs one thread at a time, and its default lock
# can leave one thread waiting for seconds on a busy machine, which the
# stress test's watchdog takes for a hang; a ticket lock hands it round.
VALGRIND=(valgrind --tool=memcheck --error-exitcode=99 --track-origins=yes --num-callers=30 --fair-sched=yes)

# Runs one step: name, then the command. Passes if the command exits 0 and
# no valgrind log of the step has errors.
step() {
    local name=$1
    shift
    local t=$SECONDS
    echo
    echo "== $name"
    "$@" >"$OUT/$name.out" 2>&1
    local rc=$?
    local errors=0 definite=0 f e d
    for f in "$OUT/$name".*.log; do
        [[ -f $f ]] || continue
        e=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$f" | tail -n 1)
        d=$(sed -n 's/.*definitely lost: \([0-9,]*\) bytes.*/\1/p' "$f" | tail -n 1 | tr -d ,)
        errors=$((errors + ${e:-0}))
        definite=$((definite + ${d:-0}))
    done
    local processes
    processes=$(find "$OUT" -name "$name.*.log" | wc -l)
    grep -E '^(stress:|test result:|failures seen:)|UNEXPECTED' "$OUT/$name.out" | sort | uniq -c | sed 's/^/  /'
    if [[ $rc == 0 && $errors == 0 ]]; then
        echo "== $name: CLEAN: $processes processes checked, 0 errors, $definite bytes definitely lost ($((SECONDS - t)) s)"
    else
        echo "== $name: FAILED: exit $rc, $errors errors in $processes processes (logs: $OUT/$name.*.log)"
        grep -h -B2 -A20 -E 'Invalid (read|write|free)|uninitialised|definitely lost in' "$OUT/$name".*.log | head -n 60
        status=1
    fi
}

step stress env MAYFAIL_STRESS_SECS="$SECS" \
    "${VALGRIND[@]}" --leak-check=full --errors-for-leak-kinds=definite \
    --log-file="$OUT/stress.%p.log" "$STRESS" --nocapture

step odd_contexts "${VALGRIND[@]}" --leak-check=no --trace-children=yes \
    --log-file="$OUT/odd_contexts.%p.log" "$ODD" \
    --skip signals_during_backoff_sleeps_under_real_exhaustion_change_nothing \
    --skip chained_crash_probe --skip a_crash_under_a_chaining_handler \
    --skip a_fault_the_program_handles_itself --skip an_abort_signal_the_program_handles \
    --skip a_handler_with_sa_nodefer_handles_faults

step unit_tests "${VALGRIND[@]}" --leak-check=full --errors-for-leak-kinds=definite \
    --log-file="$OUT/unit_tests.%p.log" "$LIB"

step demo_parent "${VALGRIND[@]}" --leak-check=full --errors-for-leak-kinds=definite \
    --trace-children=no --log-file="$OUT/demo_parent.%p.log" "$DEMO"

# The preload library under memcheck. Memcheck replaces the malloc family
# wherever it is exported, by default: in the library too, whose code would
# then never run. --soname-synonyms=somalloc=nouserintercepts (a soname no
# library has) keeps the replacement to libc's: the program's calls reach
# the library's malloc, on the simulated CPU, and the library's calls to
# __libc_malloc and its siblings, which glibc exports at the same addresses
# as malloc and its siblings, reach memcheck's, which tracks every block.
# LD_PRELOAD and MAYFAIL_INJECT go to valgrind itself (its launcher passes
# them on to the program); the launcher, a dynamic program, loads the
# library too, so injection is limited to the program's threads by their
# name, which under valgrind is the tool's.
CLIENT=$(valgrind -q cat /proc/self/comm)
PRELOADED=(env LD_PRELOAD="$PRELOAD" "MAYFAIL_INJECT=probability=5,times=-1,seed=7,thread=$CLIENT"
    "${VALGRIND[@]}" --soname-synonyms=somalloc=nouserintercepts)

# preload_canary: a one-byte overrun of a block the library handed out must
# be an error, its block allocated through the library's malloc; otherwise
# the steps after it would check nothing.
echo
echo "== preload_canary"
t=$SECONDS
printf '#include <stdlib.h>\nint main(void) { char *p = malloc(10); p[10] = 1; free(p); return 0; }\n' |
    cc -g -x c -o "$OUT/preload-canary" - &&
    "${PRELOADED[@]}" --log-file="$OUT/preload_canary.log" "$OUT/preload-canary"
canary=$?
if [[ $canary == 99 ]] && grep -q 'Invalid write of size 1' "$OUT/preload_canary.log" &&
    grep -q 'by .*mayfail_preload::interpose::malloc' "$OUT/preload_canary.log"; then
    echo "== preload_canary: the overrun was found, in a block from the library's malloc ($((SECONDS - t)) s)"
else
    echo "== preload_canary: FAILED: exit $canary, the overrun was not found through the library (log: $OUT/preload_canary.log)"
    status=1
fi

step preload_stress "${PRELOADED[@]}" --leak-check=full --errors-for-leak-kinds=definite \
    --log-file="$OUT/preload_stress.%p.log" "$OUT/preload-stress" --no-fork

step preload_fork "${PRELOADED[@]}" --leak-check=no \
    --log-file="$OUT/preload_fork.%p.log" "$OUT/preload-stress"

# Injection reached the program through the library in both runs.
for name in preload_stress preload_fork; do
    if ! grep -Eq '^failures seen: [1-9]' "$OUT/$name.out"; then
        echo "== $name: FAILED: no injected failure reached the program ($OUT/$name.out)"
        status=1
    fi
done

echo
echo "total time: $((SECONDS - start)) s"
exit $status
