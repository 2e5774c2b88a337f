#!/usr/bin/env bash
# The README's first command: the demo under a real memory limit. It exits
# non-zero if a knob value did not behave as the policy says. A few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --example pressure
