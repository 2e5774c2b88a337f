# ci/common.sh - sourced by the ci/ scripts, not run: the one place that
# installs Rust toolchains, components and targets with rustup, and reads
# the root package's metadata.
#
# Each function installs only what is missing, so a script run by hand on a
# machine that has everything does not touch the network. A function that
# cannot install what it was asked for returns 2, which the scripts pass on
# as "skipped" (.ci/run counts that as a failure in CI).
#
# The nightly toolchain is `nightly` unless MAYFAIL_NIGHTLY names another
# (a dated one, e.g. nightly-2026-05-19, when the newest nightly lacks Miri).

NIGHTLY=${MAYFAIL_NIGHTLY:-nightly}

# ci_toolchain TOOLCHAIN [COMPONENT...]: installs the toolchain (minimal
# profile) and the components it lacks.
ci_toolchain() {
    local toolchain=$1
    shift
    if ! command -v rustup >/dev/null; then
        echo "${0##*/}: rustup is not installed; it is needed to install $toolchain" >&2
        return 2
    fi
    if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
        echo "== installing toolchain $toolchain" >&2
        rustup toolchain install "$toolchain" --profile minimal >&2 || {
            echo "${0##*/}: could not install toolchain $toolchain" >&2
            return 2
        }
    fi
    local installed missing=() component
    installed=$(rustup component list --installed --toolchain "$toolchain" 2>/dev/null)
    for component in "$@"; do
        grep -q "^$component\(-\|$\)" <<<"$installed" || missing+=("$component")
    done
    if ((${#missing[@]})); then
        echo "== adding ${missing[*]} to $toolchain" >&2
        rustup component add "${missing[@]}" --toolchain "$toolchain" >&2 || {
            echo "${0##*/}: could not add ${missing[*]} to $toolchain" >&2
            return 2
        }
    fi
}

# ci_target TOOLCHAIN TRIPLE: installs the standard library for a target.
ci_target() {
    local toolchain=$1 triple=$2
    ci_toolchain "$toolchain" || return
    rustup target list --installed --toolchain "$toolchain" 2>/dev/null | grep -qx "$triple" && return
    echo "== adding target $triple to $toolchain" >&2
    rustup target add "$triple" --toolchain "$toolchain" >&2 || {
        echo "${0##*/}: could not add target $triple to $toolchain" >&2
        return 2
    }
}

# ci_root_package FIELD: prints a field of the root package (the one whose
# manifest is ./Cargo.toml; in a virtual workspace, the package named
# mayfail) from `cargo metadata`: rust_version, or non_default_features
# (features that `default` does not enable, one per line).
ci_root_package() {
    command -v python3 >/dev/null || {
        echo "${0##*/}: python3 is needed to read cargo metadata" >&2
        return 2
    }
    cargo metadata --no-deps --format-version 1 | python3 -c '
import json, os, sys
field = sys.argv[1]
packages = json.load(sys.stdin)["packages"]
root = os.path.realpath("Cargo.toml")
chosen = [p for p in packages if os.path.realpath(p["manifest_path"]) == root]
chosen = chosen or [p for p in packages if p["name"] == "mayfail"]
if not chosen:
    sys.exit("no root package in cargo metadata")
package = chosen[0]
if field == "rust_version":
    print(package.get("rust_version") or "")
elif field == "non_default_features":
    features = package.get("features", {})
    enabled, todo = set(), ["default"]
    while todo:
        name = todo.pop()
        if name in enabled or name not in features:
            continue
        enabled.add(name)
        todo += [f for f in features[name] if "/" not in f and not f.startswith("dep:")]
    for name in sorted(set(features) - enabled - {"default"}):
        print(name)
' "$1"
}
