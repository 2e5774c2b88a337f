#!/usr/bin/env bash
# The README's test command: unit tests, integration tests (real allocation
# failures in child processes under RLIMIT_AS) and the README's doctests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test
