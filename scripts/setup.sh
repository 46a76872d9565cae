#!/usr/bin/env bash
# Installs what Sandstorm needs on Debian 12, idempotently: system packages with apt-get (only
# when something is missing), cmake >= 3.28, pyarrow and lightgbm in a Python venv (Debian's
# cmake is too old for LightGBM; the Python packages are for interoperability tests: pyarrow and
# polars read telemetry, lightgbm checks models, mcp is the reference MCP client, pyyaml reads
# MLflow MLmodel files, moto[server] is the S3-compatible server of the object-store tests), and
# the wasm32 Rust target.
# Safe to run again and again.
#
# Source it to also get the venv on PATH:  . scripts/setup.sh
set -euo pipefail

SANDSTORM_VENV="${SANDSTORM_VENV:-$HOME/.cache/sandstorm/venv}"
sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi

missing=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in build-essential pkg-config libclang-dev bubblewrap python3 python3-venv python3-pip runsc git; do
  have_pkg "$pkg" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$SANDSTORM_VENV/bin/python" ]; then
  echo "setup: creating Python venv $SANDSTORM_VENV" >&2
  /usr/bin/python3 -m venv "$SANDSTORM_VENV"
fi
if ! "$SANDSTORM_VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as m, sys
v = tuple(int(x) for x in m.version("cmake").split(".")[:2])
import pyarrow, polars, lightgbm, numpy, mcp, yaml, moto.server  # noqa: F401
sys.exit(0 if v >= (3, 28) else 1)
PY
then
  echo "setup: installing cmake>=3.28, pyarrow, polars, lightgbm, mcp, pyyaml and moto into the venv" >&2
  "$SANDSTORM_VENV/bin/pip" install -q --disable-pip-version-check 'cmake>=3.28' 'pyarrow>=14' 'polars>=1' 'lightgbm>=4' numpy 'mcp>=2,<3' pyyaml 'moto[server]>=5'
fi
export PATH="$SANDSTORM_VENV/bin:$PATH"
export SANDSTORM_PYTHON="$SANDSTORM_VENV/bin/python"

if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -q '^wasm32-unknown-unknown$'; then
  echo "setup: adding the wasm32-unknown-unknown Rust target" >&2
  rustup target add wasm32-unknown-unknown >/dev/null
fi
