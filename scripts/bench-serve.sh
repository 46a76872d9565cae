#!/usr/bin/env bash
# Load benchmark of the router service: `wrk` against POST /v1/route on loopback, with the
# default catalog and a model set trained the way the quickstart trains it (20,000 simulated
# rows, seed 7). Installs wrk and curl (Debian packages) when missing, builds the release binary, trains
# once into $BENCH_DIR, starts `sandstorm serve`, runs wrk, stops the service.
#
#   scripts/bench-serve.sh                   # 2 wrk threads, 32 connections, 20 s
#   DURATION=30s CONNECTIONS=64 scripts/bench-serve.sh
#   VIEW=summary scripts/bench-serve.sh      # POST /v1/route?view=summary (winner and fallbacks only)
#   SANDSTORM_BIN=path/to/release/sandstorm scripts/bench-serve.sh   # skip the build
#
# Loopback only; wrk stops by itself after DURATION. Results: docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sandstorm/target}"
BENCH_DIR="${BENCH_DIR:-$HOME/.cache/sandstorm/bench-serve}"
DURATION="${DURATION:-20s}"
THREADS="${THREADS:-2}"
CONNECTIONS="${CONNECTIONS:-32}"
WORKERS="${WORKERS:-2}"
PORT="${PORT:-18089}"
VIEW="${VIEW:-full}"

missing=()
for tool in wrk curl; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "bench-serve: installing ${missing[*]}" >&2
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# SANDSTORM_BIN: an already built release binary (skips the build).
bin="${SANDSTORM_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release -q -p sandstorm
  bin="$CARGO_TARGET_DIR/release/sandstorm"
fi
mkdir -p "$BENCH_DIR"
if [ ! -f "$BENCH_DIR/models/metadata.json" ]; then
  "$bin" datasets generate --rows 20000 --seed 7 --out "$BENCH_DIR/telemetry" >/dev/null
  "$bin" train --telemetry "$BENCH_DIR/telemetry" --out "$BENCH_DIR/models" >/dev/null
fi

key="bench-$(date +%s)-$RANDOM"
cat >"$BENCH_DIR/service.toml" <<TOML
listen = "127.0.0.1:$PORT"
models_dir = "models"
[limits]
requests_per_second = 1000000
burst = 1000000
[[api_keys]]
sha256 = "$(printf %s "$key" | sha256sum | cut -d' ' -f1)"
tenant = "bench"
scopes = ["admin"]
TOML
# The request of examples/requests/hello-python.yaml, as JSON.
cat >"$BENCH_DIR/request.json" <<'JSON'
{"language": "python", "command": "python3 -c 'print(\"hello from sandstorm\")'",
 "resources": {"cpu": 1, "memory_mib": 256}, "timeout_s": 10, "strategy": "optimize_cost"}
JSON
cat >"$BENCH_DIR/route.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"
local f = assert(io.open("$BENCH_DIR/request.json", "r"))
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d duration_s=%.2f rps=%.0f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f errors_status=%d errors_connect=%d errors_read=%d errors_timeout=%d\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.timeout))
end
LUA

SANDSTORM_LOG=warn "$bin" serve --config "$BENCH_DIR/service.toml" --workers "$WORKERS" 2>"$BENCH_DIR/serve.log" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
# The request must be routed (200) before it is worth measuring.
curl -fsS -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  --data-binary @"$BENCH_DIR/request.json" "http://127.0.0.1:$PORT/v1/route?view=$VIEW" >"$BENCH_DIR/decision.json"
echo "decision: $(wc -c <"$BENCH_DIR/decision.json") bytes, winner $(grep -o '"winner":"[^"]*"' "$BENCH_DIR/decision.json")"
# Warm-up, then the measured run.
wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -s "$BENCH_DIR/route.lua" "http://127.0.0.1:$PORT/v1/route?view=$VIEW" >/dev/null
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency POST /v1/route?view=$VIEW (server: $WORKERS worker threads)"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$BENCH_DIR/route.lua" "http://127.0.0.1:$PORT/v1/route?view=$VIEW"
# Server-side view: time in the handler stack (from accept of the request to the response),
# as the service's own histograms measured it during warm-up and the run.
echo "server-side sandstorm_http_request_duration_seconds{route=\"/v1/route\"} and sandstorm_decide_duration_seconds:"
curl -fsS -H "Authorization: Bearer $key" "http://127.0.0.1:$PORT/metrics" |
  grep -E '^sandstorm_(http_request_duration_seconds_(bucket|count)\{.*route="/v1/route"|decide_duration_seconds_(bucket|count))' |
  awk '{ if ($1 ~ /_count/) { name=$1; sub(/_count.*/, "", name); count[name]=$2 } else { print } }
       END { for (n in count) print n " count " count[n] }'
