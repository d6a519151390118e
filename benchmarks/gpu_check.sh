#!/usr/bin/env bash
# Run benchmarks/gpu_check.py on a CUDA machine, from the repository root:
#     bash benchmarks/gpu_check.sh [extra gpu_check.py flags]
# That machine has torch and triton but no lark and no internet, so lark comes from the wheel kept in
# benchmarks/wheels/ (fetched with: pip download lark==1.3.1 --no-deps -d benchmarks/wheels).
# attncc itself is not installed (that would pull its torch pin): PYTHONPATH points at the checkout.
# Results go to $OUT/gpu_check.json and $OUT/gpu_check.md ($OUT defaults to benchmarks/results).
set -euo pipefail
cd "$(dirname "$0")/.."

wheel=benchmarks/wheels/lark-1.3.1-py3-none-any.whl
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python -c "import lark" 2>/dev/null; then
    # lark is pure Python: if pip may not install, import it from the wheel (a zip) instead
    python -m pip install --quiet --no-index --no-deps "$wheel" || export PYTHONPATH="$PWD/$wheel:$PYTHONPATH"
fi

out="${OUT:-benchmarks/results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
python benchmarks/gpu_check.py --out "$out/gpu_check.json" "$@"
