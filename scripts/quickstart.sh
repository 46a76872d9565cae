#!/usr/bin/env bash
# The main job on embedded defaults: set up, build, and run `sandstorm quickstart`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sandstorm/target}"
cargo run --quiet -p sandstorm -- quickstart "$@"
