#!/usr/bin/env bash
# Dependency invariant (docs/ARCHITECTURE.md): serving crates never depend on the trainer,
# polars or datafusion, directly or transitively.
set -euo pipefail
cd "$(dirname "$0")/.."
serving=(sandstorm-features sandstorm-storage sandstorm-datasets sandstorm-router sandstorm-runtime sandstorm-adapters sandstorm-executor sandstorm-policies-wasm sandstorm-service)
forbidden='^(sandstorm-trainer|polars|polars-[a-z-]+|datafusion|datafusion-[a-z-]+) '
status=0
for crate in "${serving[@]}"; do
  bad=$(cargo tree --quiet -p "$crate" -e normal,build --prefix none --no-dedupe | grep -E "$forbidden" | sort -u || true)
  if [ -n "$bad" ]; then
    echo "invariant broken: $crate depends on:" >&2
    echo "$bad" | sed 's/^/  /' >&2
    status=1
  fi
done
[ "$status" -eq 0 ] && echo "dependency invariants hold: ${serving[*]} pull no trainer, polars or datafusion"
exit "$status"
