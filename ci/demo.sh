#!/usr/bin/env bash
# ci/demo.sh - the README's first command: the demo under a real memory
# limit (child processes that cap their own address space), with knob
# values -1, 0 and 3.
#
# Usage: ci/demo.sh
# Time: the release build (about a minute from cold on 2 cores), then a few
# seconds.
# Exit status: 0 every knob value behaved as the policy says, 1 otherwise
# (or the build failed).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
cargo run --release --example pressure || exit 1
