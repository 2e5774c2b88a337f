#!/usr/bin/env bash
# ci/bench.sh - what the MayFail wrapper costs when nothing fails, side by
# side with System, mimalloc and the peer wrappers (retry_alloc, cap,
# stats_alloc, alloc-chaos). See benches/README.md for the method and the
# latest results.
#
# 1. Builds the benchmark suite (benches/suite, a crate of its own: one binary
#    per allocator configuration, each running the same workloads twice over:
#    compiled in the binary's own crate, as a user's code is, and compiled
#    once in the suite's library) into target/bench-suite, twice: the
#    `release` profile (no LTO) and `release-lto` (fat LTO, 1 codegen unit).
# 2. Runs it (run-suite): every workload in every configuration, build and
#    form, interleaved, in rounds, then every one once under valgrind
#    --tool=callgrind, and prints one Markdown report: instructions added per
#    allocation, time ratios to the inner allocator (median, smallest, largest
#    over the rounds, with an A/A control), and the targets met or missed.
#    The report is also written to target/bench/results.md, the raw
#    measurements to target/bench/*.csv.
#
# Usage, from anywhere in the repository:
#   ci/bench.sh                     # the whole suite: about 10 minutes on 2 cores, plus the builds
#   ci/bench.sh --readme            # the same, then put the report into benches/README.md
#                                   # and the raw measurements into benches/results/
#   ci/bench.sh --quick             # for work on the hot path: callgrind only, vec-pairs and
#                                   # btree-20k, MayFail<System> idle and with injection on
#                                   # against System, RetryAlloc (and StatsAlloc, which counts
#                                   # the allocations), in-crate, both builds, the full
#                                   # suite's binaries: the same counts as its report (about
#                                   # 2 minutes on 2 cores after an edit of src/alloc.rs)
#   ci/bench.sh --quick --lean      # the same without serde_json and regex in the binaries:
#                                   # a faster rebuild, but LTO counts differ from the full
#                                   # suite's (btree-20k: 0.9 % against 0.1 % added)
#   ci/bench.sh --criterion         # also the criterion cross-check (benches/suite/benches/alloc_pair.rs)
#   ci/bench.sh --rounds 3 --only vec-pairs,btree-20k   # other arguments go to run-suite
#   ci/bench.sh --no-callgrind      # (or --no-time) one half only; --all adds the older workloads
# Needs: cargo, a C compiler (mimalloc is built from source), valgrind.
# Run it on an otherwise idle machine: the time columns are CPU time, which
# other processes disturb far less than wall-clock time, but do disturb. The
# instruction counts do not depend on the load.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -f Cargo.toml && -f benches/suite/Cargo.toml ]] || {
    echo "ci/bench.sh: run from the mayfail repository" >&2
    exit 1
}

readme=0
criterion=0
quick=0
lean=0
suite_args=()
for arg in "$@"; do
    case $arg in
    --readme) readme=1 ;;
    --criterion) criterion=1 ;;
    --quick) quick=1 ;;
    --lean) lean=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) suite_args+=("$arg") ;;
    esac
done
# The old interface: SKIP_CRITERION=1 meant "instruction counts only".
if [[ ${SKIP_CRITERION:-0} == 1 ]]; then
    criterion=0
fi

if ((quick && readme)); then
    echo "ci/bench.sh: --quick measures a subset; it does not go into the README" >&2
    exit 2
fi

needs_valgrind=1
for arg in ${suite_args[@]+"${suite_args[@]}"}; do
    [[ $arg == --no-callgrind ]] && needs_valgrind=0
done
if ((needs_valgrind)) && ! command -v valgrind >/dev/null; then
    echo "ci/bench.sh: valgrind is not installed (apt-get install valgrind), or pass --no-callgrind" >&2
    exit 1
fi

TARGET=${CARGO_TARGET_DIR:-$PWD/target}
SUITE_TARGET=$TARGET/bench-suite
OUT=$TARGET/bench
mkdir -p "$OUT"
start=$SECONDS

read -r load1 _ </proc/loadavg
if awk -v l="$load1" 'BEGIN { exit !(l > 0.5) }'; then
    echo "ci/bench.sh: warning: load average $load1: other processes are running, the time columns will be noisier" >&2
fi

if ((quick)); then
    # Only the binaries the quick run needs, built exactly as the full suite
    # builds them (same features, same target dir): with fat LTO, any other
    # code in the binary moves the inliner's decisions, so a leaner build
    # would not count the same instructions. StatsAlloc counts the
    # allocations, for figures per allocation.
    build_args=(--bin run-suite --bin system --bin mayfail-system
        --bin mayfail-inject-idle --bin retry-alloc-system --bin stats-alloc-system)
    if ((lean)); then
        # Without the application workloads (serde_json, regex), in a target
        # dir of its own: a faster relink, but not the full suite's binaries.
        SUITE_TARGET=$TARGET/bench-suite-lean
        build_args+=(--no-default-features)
    fi
    suite_args=(--no-time --only vec-pairs,btree-20k --forms in-crate
        --configs mayfail-system,mayfail-inject-idle,retry-alloc-system,stats-alloc-system
        ${suite_args[@]+"${suite_args[@]}"})
else
    build_args=(--bins)
fi

for profile in release release-lto; do
    echo "== building the suite, $profile (benches/suite -> $SUITE_TARGET/$profile)" >&2
    cargo build --profile "$profile" --quiet --manifest-path benches/suite/Cargo.toml \
        --target-dir "$SUITE_TARGET" "${build_args[@]}"
done
echo "   built in $((SECONDS - start)) s" >&2

rm -f "$OUT/results.md" "$OUT/times.csv" "$OUT/instructions.csv"
"$SUITE_TARGET/release/run-suite" --out "$OUT/results.md" --csv-dir "$OUT" ${suite_args[@]+"${suite_args[@]}"}

if ((readme)); then
    # Replace what lies between the two markers with the report.
    awk -v report="$OUT/results.md" '
        /<!-- results:begin -->/ { print; while ((getline line < report) > 0) print line; skip = 1; next }
        /<!-- results:end -->/ { skip = 0 }
        !skip { print }
    ' benches/README.md >"$OUT/README.md.new"
    grep -q '<!-- results:end -->' "$OUT/README.md.new" || {
        echo "ci/bench.sh: benches/README.md has no results markers; left as it was" >&2
        exit 1
    }
    mv "$OUT/README.md.new" benches/README.md
    # The raw measurements behind it, committed with it.
    mkdir -p benches/results
    for f in times.csv instructions.csv; do
        if [[ -f $OUT/$f ]]; then cp "$OUT/$f" benches/results/; else rm -f "benches/results/$f"; fi
    done
    echo "== benches/README.md and benches/results/ updated" >&2
fi

if ((criterion)); then
    echo
    echo "== cargo bench --bench alloc_pair (criterion, in benches/suite)"
    cargo bench --manifest-path benches/suite/Cargo.toml --target-dir "$SUITE_TARGET" \
        --bench alloc_pair 2>&1 | tee "$OUT/criterion.log" | grep -E '^[a-z_]+/|time:' || true
    # The median point estimate, in ns, from criterion's estimates.json.
    median_ns() {
        local f=$SUITE_TARGET/criterion/$1/new/estimates.json
        [[ -f $f ]] || { echo "nan"; return; }
        sed -n 's/.*"median":{"confidence_interval":{[^}]*},"point_estimate":\([-0-9.eE+]*\).*/\1/p' "$f"
    }
    echo
    echo "criterion medians (ns per operation; direct calls, MayFail inlined into the loop):"
    printf '%-22s %12s %16s %8s\n' "benchmark" "System" "MayFail<System>" "ratio"
    for g in alloc_free_16 alloc_free_64 alloc_free_256 alloc_free_1024 alloc_free_4096 \
        alloc_free_65536 vec_push_256 string_build_24; do
        sys=$(median_ns "$g/System")
        mf=$(median_ns "$g/MayFail_System_")
        awk -v g="$g" -v s="$sys" -v m="$mf" 'BEGIN {
            r = (s + 0 > 0) ? sprintf("%.3f", m / s) : "n/a"
            printf "%-22s %12.2f %16.2f %8s\n", g, s, m, r }'
    done
fi

echo "ci/bench.sh: done in $((SECONDS - start)) s; report in $OUT/results.md" >&2
