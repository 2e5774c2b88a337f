#!/usr/bin/env bash
# Walks real programs that know nothing of mayfail (under the preload
# library) twice, forking at each site (the `runs` engine's default) and one
# site per process (`--no-fork`), and prints one row per program: the sites,
# the runs, both walks' times and their ratio, the distinct places (a site's
# first frame) each found and the places one found that the other did not.
# Not run by .ci/run: the one-site-per-process walks take minutes.
#
# usage: ci/program-walk-bench.sh [NAME...]   (python3 sqlite3; default both)
#   PROGRAM_BENCH_DIR  where the walks' files go (default:
#                      \$TMPDIR/mayfail-program-bench)
#   MAYFAIL_BIN        the runner to use (default: built here in release,
#                      with the preload library next to it)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
names=("$@")
if [[ ${#names[@]} -eq 0 ]]; then
    names=(python3 sqlite3)
fi
work=${PROGRAM_BENCH_DIR:-${TMPDIR:-/tmp}/mayfail-program-bench}
mkdir -p "$work"
if [[ -z ${MAYFAIL_BIN:-} ]]; then
    (cd "$root" && cargo build --release -q -p cargo-mayfail -p mayfail-preload)
    MAYFAIL_BIN=$root/target/release/mayfail
fi

# The command each name walks, as words for `sh -c`.
command_of() {
    case $1 in
        python3)
            echo "exec /usr/bin/python3 -c 'import json; print(json.dumps({\"a\": [1, 2, 3]}))'"
            ;;
        sqlite3)
            printf '%s\n' \
                'create table t(a integer primary key, b text);' \
                "insert into t(b) values ('x'), ('y'), ('z');" \
                'select count(*), group_concat(b) from t;' >"$work/query.sql"
            echo "exec /usr/bin/sqlite3 :memory: < '$work/query.sql'"
            ;;
        *)
            echo "unknown program $1 (python3, sqlite3)" >&2
            exit 2
            ;;
    esac
}

# The distinct places (first frames) of a walk's sites, sorted.
places() {
    jq -r '.sites[] | .frames[0].function' "$1" | sort -u
}

# Seconds a walk took, from its JSON report's elapsed time.
seconds() {
    jq -r '.elapsed_ms / 1000' "$1"
}

printf '| program | sites (fork) | runs (fork) | walk (fork) | sites (one per process) | runs | walk | ratio | places only in one walk |\n'
printf '|---|---|---|---|---|---|---|---|---|\n'
for name in "${names[@]}"; do
    command=$(command_of "$name")
    for mode in fork each; do
        rm -f "$work/$name.$mode".*
        flags=()
        [[ $mode == each ]] && flags=(--no-fork)
        "$MAYFAIL_BIN" sites "${flags[@]}" --timeout 60 --state "$work/$name.$mode.state" \
            -- sh -c "$command" >"$work/$name.$mode.out" 2>&1 || true
    done
    fork_json=$work/$name.fork.json each_json=$work/$name.each.json
    fork_s=$(seconds "$fork_json") each_s=$(seconds "$each_json")
    only=$(comm -3 <(places "$fork_json") <(places "$each_json") | wc -l)
    printf '| %s | %s | %s | %.1f s | %s | %s | %.1f s | %.1fx | %s |\n' "$name" \
        "$(jq '.sites | length' "$fork_json")" "$(jq .runs "$fork_json")" "$fork_s" \
        "$(jq '.sites | length' "$each_json")" "$(jq .runs "$each_json")" "$each_s" \
        "$(echo "$each_s / $fork_s" | bc -l)" "$only"
done
