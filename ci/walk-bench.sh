#!/usr/bin/env bash
# Walks real crates' test suites with `mayfail sites` and prints one row per
# crate: the plain `cargo test` time, the sites found, the distinct
# allocation lines (a site's innermost frame in user code, file:line), the
# processes started, the children they forked at sites, the walk's time,
# the median cost of a site (the runner's: from a child's fork to the next
# one's, or a process's whole time), its ratio to the plain time, and the mean
# cost of a site ((walk - plain) / sites), and the walk's time split into
# the tests' and the doctests'. Not run by .ci/run: it takes
# minutes and reads crates from the registry.
#
# usage: ci/walk-bench.sh [--engine tests|runs] [NAME-VERSION...]
#   default crates: thin-vec-0.2.21 smallvec-1.16.6 compact_str-0.10.0
#   WALK_BENCH_DIR  where crates are copied and walked (outside any cargo
#                   workspace; default: \$TMPDIR/mayfail-walk-bench)
#   MAYFAIL_BIN     the runner to use (default: built here in release, with
#                   the preload library next to it)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
engine=tests
if [[ ${1:-} == --engine ]]; then
    engine=$2
    shift 2
fi
crates=("$@")
if [[ ${#crates[@]} -eq 0 ]]; then
    crates=(thin-vec-0.2.21 smallvec-1.16.6 compact_str-0.10.0)
fi
work=${WALK_BENCH_DIR:-${TMPDIR:-/tmp}/mayfail-walk-bench}
mkdir -p "$work"

if [[ -z ${MAYFAIL_BIN:-} ]]; then
    (cd "$root" && cargo build --release -q -p cargo-mayfail -p mayfail-preload)
    MAYFAIL_BIN=$root/target/release/mayfail
fi

# A crate's published sources, from cargo's registry cache: fetched through
# a scratch project that depends on exactly that version.
fetch() {
    local crate=$1 name=${1%-*} version=${1##*-}
    [[ -d $work/$crate ]] && return
    local project=$work/fetch-$crate
    mkdir -p "$project/src"
    printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\n%s = "=%s"\n' \
        "$name" "$version" > "$project/Cargo.toml"
    : > "$project/src/lib.rs"
    (cd "$project" && cargo fetch -q)
    cp -r "$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"$crate" | head -1)" "$work/$crate"
}

now() { date +%s.%N; }

printf '%-22s %7s %6s %6s %9s %6s %8s %6s %9s %7s %8s %7s\n' crate plain_s sites lines processes forked walk_s ratio per_site median tests_s doc_s
for crate in "${crates[@]}"; do
    fetch "$crate"
    cd "$work/$crate"
    cargo test -q >/dev/null 2>&1 || true  # builds, warms caches
    start=$(now)
    cargo test -q >/dev/null 2>&1 || true
    plain=$(echo "$(now) - $start" | bc)
    state=$work/$crate-$engine.state
    rm -f "$state" "${state%.state}".{json,html,log}
    start=$(now)
    "$MAYFAIL_BIN" sites --engine "$engine" --state "$state" -- cargo test -q >/dev/null 2>"${state%.state}.err" || true
    walk=$(echo "$(now) - $start" | bc)
    python3 - "$state" "$crate" "$plain" "$walk" <<'PY'
import json, sys
state, crate, plain, walk = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
report = json.load(open(state[:-len(".state")] + ".json"))
sites = report["sites"]
lines = {s["frames"][0]["location"] or s["frames"][0]["function"] for s in sites}
text = open(state).read().splitlines()
# Per run: its processes (`test` lines, per-test engine, less the children
# forked at sites) or its copies of the whole command; and its time, tests
# apart from doctests. The children forked at sites are counted apart.
forked = {f[2] for f in (l.split("\t") for l in text)
          if f[0] == "site" and len(f) > 8 and "forked" in f[8].split(",")}
processes, tests_ms, doc_ms, current, copies, seen = 0, 0, 0, None, 0, 0
for line in text:
    fields = line.split("\t")
    if fields[0] == "run":
        current, copies, seen = fields[4], int(fields[2]), 0
    elif fields[0] == "test" and fields[1] not in forked:
        seen += 1
    elif fields[0] == "end":
        processes += seen or copies
        if " --doc" in current:
            doc_ms += int(fields[2])
        else:
            tests_ms += int(fields[2])
per_site = (walk - plain) / max(len(sites), 1)
# The runner's own median cost of a site (the tests engine says it).
import re
said = re.findall(r"a site's median cost ([0-9]+) ms", open(state[:-len(".state")] + ".err").read())
median = int(said[-1]) / 1000 if said else float("nan")
print(f"{crate:<22} {plain:7.2f} {len(sites):6d} {len(lines):6d} {processes:9d} {len(forked):6d} {walk:8.1f} {walk / plain:6.1f} {per_site:9.3f} {median:7.3f} {tests_ms / 1000:8.1f} {doc_ms / 1000:7.1f}")
PY
done
