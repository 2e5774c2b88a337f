#!/usr/bin/env bash
# Formatting, lints and docs: rustfmt --check, clippy with warnings as errors,
# rustdoc with warnings as errors. About a minute from a cold target dir.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet
