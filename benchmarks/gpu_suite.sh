#!/usr/bin/env bash
# Issue 5's benchmark suite on a CUDA machine, in one call, from the repository root:
#     bash benchmarks/gpu_suite.sh              # about 10 minutes on an H100 (the suite stops itself at --budget)
#     bash benchmarks/gpu_suite.sh --dry-run    # install check + the cases it would run; runs no kernel
#     BUDGET=200 bash benchmarks/gpu_suite.sh --specs causal,hypercube --lengths 16384   # extra flags go to suite.py
#     GATE=0 bash benchmarks/gpu_suite.sh --set variants   # issue 14's variants only, with the whole budget
# The suite runs issue 5's specs, then issue 14's variants (GQA via `:kv=`, gated linear attention, Based,
# sinks, MLA, composed maps) in the last 120 s of the budget (--variant-budget), or more if time is left.
# That machine has torch and triton but no lark, no fla and no internet: lark, fla-core and einops
# come from the wheels in benchmarks/wheels/ (pure Python), installed with --no-index into a folder of
# their own; attncc runs from the checkout (PYTHONPATH), so no torch pin is installed. A baseline whose
# import fails is skipped and the table says why. Results: $OUT/suite.json, suite.md (table and targets),
# suite.log, decode.json / decode.md (split-K decoding), autotune_check.txt, autotune_cache.json,
# compile_gate.txt ($OUT defaults to benchmarks/results/gpu).
# Before the suite, the GPU compile gate's fast subset (tests/test_compile_gate.py, docs/compile_gate.md)
# compiles the default kernels for sm_80 and sm_90 and prints their registers, spills and shared memory;
# GATE=slow runs all of it (every example, dtype, head dim and candidate: long), GATE=0 skips it.
set -uo pipefail
cd "$(dirname "$0")/.."

py="${PYTHON:-python3}"
out="${OUT:-benchmarks/results/gpu}"
site="${ATTNCC_WHEEL_SITE:-/tmp/attncc-wheels}"
budget="${BUDGET:-450}"  # seconds of suite; cases left after it are reported as not run
dry=0
for arg in "$@"; do [ "$arg" = "--dry-run" ] && dry=1; done
mkdir -p "$out" "$site"

echo "== wheels: $(ls benchmarks/wheels/*.whl | xargs -n1 basename | tr '\n' ' ')"
if ! "$py" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        benchmarks/wheels/*.whl; then
    echo "pip could not install the wheels; unpacking them instead (they are pure Python)"
    "$py" -c "import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]" \
        "$site" benchmarks/wheels/*.whl
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# a fresh attncc cache: generated modules and autotune entries of this run only
export ATTNCC_CACHE_DIR="${ATTNCC_CACHE_DIR:-$(mktemp -d /tmp/attncc-cache.XXXXXX)}"

echo "== environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
"$py" - <<'EOF'
import importlib
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
for name in ("triton", "lark", "einops", "fla", "fla.ops.linear_attn", "fla.ops.retention", "fla.ops.simple_gla",
             "fla.ops.gla", "fla.ops.based", "attncc"):
    try:
        mod = importlib.import_module(name)
        print(f"{name}: {getattr(mod, '__version__', 'ok')} ({getattr(mod, '__file__', '')})")
    except Exception as exc:  # the suite skips that baseline and says so
        print(f"{name}: import failed: {type(exc).__name__}: {exc}")
EOF

if [ "${GATE:-fast}" != 0 ]; then
    echo "== compile gate (${GATE:-fast})"
    gate_flags=(-q -p no:cacheprovider tests/test_compile_gate.py)
    [ "${GATE:-fast}" = slow ] && gate_flags+=(--slow)
    timeout 600 "$py" -m pytest "${gate_flags[@]}" 2>&1 | tail -n 30 | tee "$out/compile_gate.txt"
    for spec in causal hypercube; do
        timeout 300 "$py" -c "from attncc.cli import main; main()" inspect "examples/$spec.attn" --emit resources \
            --target sm_90 --head-dim 128 2>&1 | tee -a "$out/compile_gate.txt"
    done
fi

if [ "$dry" = 1 ]; then
    echo "== dry run: the suite would run (budget ${budget}s, then the second-run autotune check)"
    "$py" benchmarks/suite.py "$@"
    exit $?
fi

echo "== tensor descriptors: the sm_90 TMA path against the reference (skipped off sm_90)"
TRITON_INTERPRET=0 timeout 300 "$py" -m pytest -q -p no:cacheprovider tests/test_tma.py -k sm_90 2>&1 | tail -n 5 \
    | tee "$out/tma.txt"

echo "== suite (budget ${budget}s)"
timeout --signal=TERM 510 "$py" benchmarks/suite.py --out "$out/suite.json" --budget "$budget" "$@" 2>&1 | tee "$out/suite.log"
status=${PIPESTATUS[0]}
[ "$status" = 0 ] || echo "suite exited with status $status (results written so far are in $out/suite.json)"

echo "== decoding: split-K (decode) against tiled at Nq = 1, 4, 16 and N = 16k, 128k (benchmarks/decode.py)"
timeout 150 "$py" benchmarks/decode.py --out "$out/decode.json" 2>&1 | tee "$out/decode.log" || echo "decode.py: status $?"

echo "== autotune: a second process must find every configuration in the cache (no retuning)"
timeout 45 "$py" - "$out" <<'EOF' 2>&1 | tee "$out/autotune_check.txt"
import json, sys, time
from pathlib import Path
import torch
import attncc
from attncc.runtime import autotune
from attncc.runtime.compiled import cache_dir

entries = sorted((cache_dir() / "autotune").glob("*.json"))
print(f"{len(entries)} autotune entries in {cache_dir() / 'autotune'}")
Path(sys.argv[1], "autotune_cache.json").write_text(json.dumps([json.loads(p.read_text()) for p in entries], indent=1))
if torch.cuda.is_available():
    for name in ("causal", "linear_elu_causal"):
        m = attncc.compile(f"examples/{name}.attn", backend="triton")().cuda()
        q, k, v = (torch.randn(4, 16, 4096, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        t0 = time.perf_counter()
        with torch.no_grad():
            m(q, k, v)
        torch.cuda.synchronize()
        print(f"{name} N=4096 d=64 first call in a new process: {time.perf_counter() - t0:.2f} s, "
              f"candidate sets timed: {autotune.TUNER.tunings}, config: {(autotune.TUNER.last or {}).get('config')}")
    print("no retuning: ok" if autotune.TUNER.tunings == 0 else
          "RETUNED: no cache entry (did the suite run causal and linear_elu_causal at N=4096, d=64, B=4, H=16?)")
EOF
exit "$status"
