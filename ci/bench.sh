#!/usr/bin/env bash
# ci/bench.sh - what the MayFail wrapper costs on the success path.
#
# 1. `cargo bench --bench alloc_pair`: criterion timings of alloc+free pairs
#    (16 B .. 64 KiB) and of a realloc growth, bare `System` against
#    `MayFail<System>`, then a table of the medians and their ratio.
# 2. `valgrind --tool=callgrind` on the release build of examples/alloc_pairs
#    for both allocators and each size, with COUNT 0 (baseline: start-up and
#    the first, environment-reading allocation) and COUNT pairs; prints the
#    instructions per alloc+free pair, (total - baseline) / COUNT, for System,
#    for MayFail<System>, and the difference.
#
# Run from the repository root: ci/bench.sh
# Needs: cargo, valgrind (callgrind). Takes about 1.5 minutes on a 2-core
# machine once built (criterion ~85 s, callgrind ~12 s), plus about a minute
# for a first build of criterion and the crate.
# Environment: PAIRS (default 1000000) is COUNT; SKIP_CRITERION=1 runs only
# the instruction counts. Logs and callgrind files go to target/bench/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -f Cargo.toml && -f benches/alloc_pair.rs ]] || {
    echo "ci/bench.sh: run from the mayfail repository" >&2
    exit 1
}
command -v valgrind >/dev/null || {
    echo "ci/bench.sh: valgrind is not installed (apt-get install valgrind)" >&2
    exit 1
}

SIZES=(16 64 256 1024 4096 65536)
PAIRS=${PAIRS:-1000000}
TARGET=${CARGO_TARGET_DIR:-target}
OUT=$TARGET/bench
mkdir -p "$OUT"
start=$SECONDS

# --- 1. criterion --------------------------------------------------------
# The median point estimate, in ns, from criterion's estimates.json.
median_ns() {
    local f=$TARGET/criterion/$1/new/estimates.json
    [[ -f $f ]] || { echo "nan"; return; }
    sed -n 's/.*"median":{"confidence_interval":{[^}]*},"point_estimate":\([-0-9.eE+]*\).*/\1/p' "$f"
}

if [[ ${SKIP_CRITERION:-0} != 1 ]]; then
    echo "== cargo bench --bench alloc_pair"
    cargo bench --bench alloc_pair 2>&1 | tee "$OUT/criterion.log"
    echo
    echo "== criterion medians (ns per operation)"
    printf '%-22s %12s %16s %8s\n' "benchmark" "System" "MayFail<System>" "ratio"
    groups=()
    for s in "${SIZES[@]}"; do groups+=("alloc_free_$s"); done
    groups+=("realloc_grow_16-4096")
    for g in "${groups[@]}"; do
        sys=$(median_ns "$g/System")
        mf=$(median_ns "$g/MayFail_System_")
        awk -v g="$g" -v s="$sys" -v m="$mf" 'BEGIN {
            r = (s + 0 > 0) ? sprintf("%.3f", m / s) : "n/a"
            printf "%-22s %12.2f %16.2f %8s\n", g, s, m, r }'
    done
    echo "(criterion time: $((SECONDS - start)) s)"
    echo
fi

# --- 2. callgrind --------------------------------------------------------
echo "== cargo build --release --example alloc_pairs"
cargo build --release --example alloc_pairs 2>&1 | tail -n 1
BIN=$TARGET/release/examples/alloc_pairs

# Total instructions (Ir) of one run, from the callgrind output file's
# `summary:` line (valgrind >= 3.x writes it; older ones only `totals:`).
instructions() { # allocator size count
    local f=$OUT/callgrind.$1.$2.$3.out
    valgrind --tool=callgrind --callgrind-out-file="$f" --log-file="$f.log" \
        "$BIN" "$1" "$2" "$3"
    local n
    n=$(awk '/^summary:/ { print $2; exit }' "$f")
    [[ -n $n ]] || n=$(awk '/^totals:/ { print $2; exit }' "$f")
    [[ -n $n ]] || n=$(callgrind_annotate "$f" | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
    [[ $n =~ ^[0-9]+$ ]] || { echo "ci/bench.sh: no instruction total in $f" >&2; exit 1; }
    echo "$n"
}

per_pair() { # allocator size
    local base full
    base=$(instructions "$1" "$2" 0)
    full=$(instructions "$1" "$2" "$PAIRS")
    awk -v b="$base" -v f="$full" -v n="$PAIRS" 'BEGIN { printf "%.2f", (f - b) / n }'
}

echo
echo "== callgrind: instructions per alloc+free pair ($PAIRS pairs, baseline subtracted)"
printf '%8s %10s %16s %10s\n' "size" "System" "MayFail<System>" "diff"
for s in "${SIZES[@]}"; do
    sys=$(per_pair system "$s")
    mf=$(per_pair mayfail "$s")
    awk -v z="$s" -v s="$sys" -v m="$mf" 'BEGIN { printf "%8d %10.2f %16.2f %+10.2f\n", z, s, m, m - s }'
done

echo
echo "total time: $((SECONDS - start)) s"
