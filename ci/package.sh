#!/usr/bin/env bash
# ci/package.sh - what `cargo publish` would upload, for each package of the
# workspace that is meant to be published (mayfail, and cargo-mayfail once
# it exists):
# 1. `cargo package --list`: fails if the list holds anything that is not
#    for users: the CI scripts (ci/, .ci/), any build output (a target/
#    directory anywhere: the repository's, benches/suite's, a test
#    fixture's); and fails if LICENSE-MIT, LICENSE-APACHE or README.md exist
#    at the repository's root but are not in the list.
# 2. `cargo package -p mayfail -p cargo-mayfail --no-verify`: builds the .crate files in
#    target/package (resolving the dependencies against the crates.io index;
#    --no-verify: the build itself is what the other steps check).
#
# Usage: ci/package.sh
# Time: a few seconds (the crates.io index is fetched once).
# Exit status: 0 clean, 1 something is shipped that should not be, or is
# missing, or packaging failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

# --allow-dirty: by hand, a work tree with uncommitted changes is checked as
# it is; CI's clone is clean anyway.
FORBIDDEN='^(ci|\.ci)/|(^|/)target/'
REQUIRED=(LICENSE-MIT LICENSE-APACHE README.md)
status=0

packages=(mayfail)
if [[ -f cargo-mayfail/Cargo.toml ]]; then
    packages+=(cargo-mayfail)
else
    echo "== cargo-mayfail: no cargo-mayfail/Cargo.toml yet; only mayfail is checked"
fi

for package in "${packages[@]}"; do
    echo "== cargo package --list -p $package"
    if ! list=$(cargo package --list --allow-dirty -p "$package" 2>/dev/null); then
        cargo package --list --allow-dirty -p "$package" >/dev/null
        echo "== $package: FAILED: cargo package --list failed" >&2
        status=1
        continue
    fi
    files=$(wc -l <<<"$list")
    shipped=$(grep -E "$FORBIDDEN" <<<"$list")
    if [[ -n $shipped ]]; then
        echo "== $package: FAILED: ships files that are not for users (add them to \`exclude\` in its Cargo.toml):" >&2
        sed 's/^/     /' <<<"$shipped" >&2
        status=1
    fi
    for file in "${REQUIRED[@]}"; do
        if [[ ! -e $file ]]; then
            echo "   note: $file does not exist yet, so it is not required"
        elif ! grep -qx "$file" <<<"$list"; then
            echo "== $package: FAILED: $file exists but is not in the package" >&2
            status=1
        fi
    done
    [[ $status == 0 ]] && echo "   $files files, none unwanted"
done

# The published packages only: `checks` is `publish = false`.
package_args=()
for package in "${packages[@]}"; do package_args+=(-p "$package"); done
echo "== cargo package ${package_args[*]} --no-verify"
if ! cargo package "${package_args[@]}" --no-verify --allow-dirty --quiet; then
    echo "== FAILED: cargo package" >&2
    status=1
else
    ls -l "${CARGO_TARGET_DIR:-target}"/package/*.crate | awk '{ print "   " $5 " bytes  " $NF }'
fi
exit $status
