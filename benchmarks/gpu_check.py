"""GPU check: the Triton backend of every example against the float64 reference, then speed vs SDPA.

  accuracy   backend="triton" on CUDA in bf16 and fp16, B=2 H=4 d=64, N in --sizes (1000, 4096), vs
             m.reference on the same (rounded) inputs in float64: rel err = max |out - ref| / max |ref|,
             tolerance bf16 2e-2, fp16 5e-3. Also checks the Triton path really ran and the dtype.
  speed      the softmax and causal kernels vs torch.nn.functional.scaled_dot_product_attention (flash
             backend where available) with triton.testing.do_bench, B=4 H=16 N=4096, d = 64 and 128,
             bf16; TFLOP/s counts 4 B H N^2 d flops (half of it for causal).

    python benchmarks/gpu_check.py --out results/gpu_check.json   # also writes results/gpu_check.md

Exit status: 0 all checks passed, 1 some accuracy check failed, 2 no CUDA GPU / Triton (nothing run).
"""
from __future__ import annotations

import argparse
import sys
import traceback
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from common import (
    call_inputs,
    example_paths,
    instantiate,
    parse_ints,
    print_table,
    qkv,
    write_results,
)

import attncc

TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 5e-3}
ACC_SHAPE = {"batch": 2, "heads": 4, "dim": 64}
PERF_SHAPE = {"batch": 4, "heads": 16, "tokens": 4096}


def gpu_missing() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    return None if torch.cuda.is_available() else "no CUDA device (torch.cuda.is_available() is False)"


def accuracy(names, sizes) -> list[dict]:
    B, H, D = ACC_SHAPE["batch"], ACC_SHAPE["heads"], ACC_SHAPE["dim"]
    rows = []
    for path in example_paths(names):
        cls = attncc.compile(path, backend="triton")
        for n in sizes:
            m = instantiate(cls, heads=H, tokens=n).cuda()
            inputs = call_inputs(cls, B, n, device="cuda")
            base = qkv(B, H, n, D, device="cuda")
            for dtype, tol in TOLERANCE.items():
                row = {"spec": path.stem, "N": n, "dtype": str(dtype).removeprefix("torch."), "tol": tol,
                       "lowering": cls.LOWERING, "triton": cls.TRITON_LOWERING}
                try:
                    q, k, v = (t.to(dtype) for t in base)
                    with torch.no_grad():
                        out = m(q, k, v, **inputs)
                        ref = m.reference(q, k, v, **inputs)
                    err = (out.double() - ref).abs().max().item()
                    scale = ref.abs().max().item()
                    row.update(max_abs_err=err, out_scale=scale, rel_err=err / max(scale, 1e-30),
                               backend=m.last_backend, out_dtype=str(out.dtype).removeprefix("torch."))
                    row["ok"] = (row["rel_err"] <= tol and m.last_backend == "triton" and out.dtype == dtype
                                 and bool(torch.isfinite(out).all()))
                except Exception as exc:  # noqa: BLE001  (report every case, keep going)
                    row.update(ok=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
                print(f"{row['spec']} N={n} {row['dtype']}: " + ("ok" if row["ok"] else "FAIL")
                      + (f" rel err {row['rel_err']:.2e}" if "rel_err" in row else f" {row.get('error')}"),
                      file=sys.stderr)
                rows.append(row)
            del m, base
            torch.cuda.empty_cache()
    return rows


def sdpa_bench(q, k, v, causal: bool) -> tuple[float, str]:
    """do_bench of SDPA, forced to the flash backend if this build / GPU has it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench
    fn = partial(F.scaled_dot_product_attention, q, k, v, is_causal=causal)
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            fn()
            return do_bench(fn, return_mode="median"), "flash"
    except RuntimeError:
        return do_bench(fn, return_mode="median"), "default"


def speed(dims) -> list[dict]:
    from triton.testing import do_bench
    B, H, N = PERF_SHAPE["batch"], PERF_SHAPE["heads"], PERF_SHAPE["tokens"]
    rows = []
    for name in ("softmax", "causal"):
        m = attncc.compile(example_paths([name])[0], backend="triton")().cuda()
        causal = name == "causal"
        for d in dims:
            q, k, v = qkv(B, H, N, d, dtype=torch.bfloat16, device="cuda")
            flops = 4 * B * H * N * N * d * (0.5 if causal else 1.0)
            with torch.no_grad():
                out = m(q, k, v)
                ours_ms = do_bench(partial(m, q, k, v), return_mode="median")
                sdpa_ms, sdpa_kind = sdpa_bench(q, k, v, causal)
                diff = (out.float() - F.scaled_dot_product_attention(q, k, v, is_causal=causal).float()).abs().max()
            row = {"spec": name, "d": d, "backend": m.last_backend, "attncc_ms": ours_ms,
                   "attncc_tflops": flops / ours_ms / 1e9, "sdpa": sdpa_kind, "sdpa_ms": sdpa_ms,
                   "sdpa_tflops": flops / sdpa_ms / 1e9, "max_abs_diff_vs_sdpa": diff.item()}
            row["ratio"] = row["attncc_tflops"] / row["sdpa_tflops"]
            print(f"{name} d={d}: attncc {row['attncc_tflops']:.1f} TFLOP/s, sdpa ({sdpa_kind}) "
                  f"{row['sdpa_tflops']:.1f} TFLOP/s", file=sys.stderr)
            rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check.json"))
    ap.add_argument("--sizes", type=parse_ints, default=[1000, 4096], help="token counts for the accuracy check")
    ap.add_argument("--dims", type=parse_ints, default=[64, 128], help="head dims for the speed check")
    ap.add_argument("--specs", help="comma-separated examples for the accuracy check (default: all)")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()

    missing = gpu_missing()
    if missing:
        print(f"gpu_check: {missing}; nothing to check", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    acc = accuracy(args.specs.split(",") if args.specs else None, args.sizes)
    perf = [] if args.skip_speed else speed(args.dims)

    acc_headers = ["spec", "N", "dtype", "lowering", "max abs err", "out scale", "rel err", "tol", "ok"]
    acc_rows = [[r["spec"], r["N"], r["dtype"], r["lowering"], r.get("max_abs_err"), r.get("out_scale"),
                 r.get("rel_err", r.get("error", "")[:60]), r["tol"], "ok" if r["ok"] else "FAIL"] for r in acc]
    acc_title = f"Triton vs float64 reference (B={ACC_SHAPE['batch']} H={ACC_SHAPE['heads']} d={ACC_SHAPE['dim']})"
    sections = [(acc_title, acc_headers, acc_rows)]
    if perf:
        perf_headers = ["spec", "d", "attncc ms", "attncc TFLOP/s", "SDPA", "SDPA ms", "SDPA TFLOP/s",
                        "attncc / SDPA", "max |diff|"]
        perf_rows = [[r["spec"], r["d"], r["attncc_ms"], r["attncc_tflops"], r["sdpa"], r["sdpa_ms"],
                      r["sdpa_tflops"], r["ratio"], r["max_abs_diff_vs_sdpa"]] for r in perf]
        perf_title = (f"forward speed, bf16, B={PERF_SHAPE['batch']} H={PERF_SHAPE['heads']} "
                      f"N={PERF_SHAPE['tokens']} (triton.testing.do_bench)")
        sections.append((perf_title, perf_headers, perf_rows))
    for title, headers, rows in sections:
        print_table(title, headers, rows)
    failed = sum(not r["ok"] for r in acc)
    write_results(args.out, {"tolerance": {str(k).removeprefix("torch."): v for k, v in TOLERANCE.items()},
                             "accuracy": acc, "speed": perf, "failed": failed}, sections)
    print(f"{failed} of {len(acc)} accuracy checks failed" if failed else f"all {len(acc)} accuracy checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
