#!/usr/bin/env bash
# Runs the criterion benchmarks: `scripts/bench.sh` for all, `scripts/bench.sh policies` or
# `scripts/bench.sh scoring` for one. Results go to docs/benchmarks.md by hand, with the date,
# the machine and this command.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sandstorm/target}"
if [ $# -gt 0 ]; then
    exec cargo bench -p sandstorm-benches --bench "$1" -- "${@:2}"
fi
exec cargo bench -p sandstorm-benches
