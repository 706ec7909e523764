#!/usr/bin/env bash
# The GPU benchmark in one command, on the device machine (bench/README.md, "GPU run"): installs the carried
# wheels lorabench needs there (pydantic and its three dependencies, bitsandbytes for the 4-bit stage), then runs
# bench/speed.py in GPU mode within BUDGET_S seconds, writing $OUT/gpu.json and $OUT/gpu.log.
set -uo pipefail
BUDGET_S="${BUDGET_S:-480}"
OUT="${OUT:-bench-out}"
mkdir -p "$OUT"
# bitsandbytes (the 4-bit stage) is optional: without it that stage reports itself skipped.
if ! python3 -c "import pydantic, bitsandbytes" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -c "import pydantic" 2>/dev/null || { echo "error: pydantic is missing and no .whl/ was carried (see bench/README.md)"; exit 2; }
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu-info.txt"
python3 bench/speed.py --device cuda --budget-s "$BUDGET_S" --packed --qlora --out "$OUT/gpu.json" "$@" 2>&1 | tee "$OUT/gpu.log"
