#!/usr/bin/env bash
# The full test command: set up, check the dependency invariants, formatting and lints, and run
# every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sandstorm/target}"
scripts/check-invariants.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --lib --bins --tests
