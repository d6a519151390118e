"""CPU forward time: the attncc torch backend vs naive torch and vs the dense float64 reference.

  attncc     Cls(backend="torch") called on fp32 q, k, v [1, 4, N, 64] (the lowering the compiler chose)
  naive      the textbook dense fp32 formula per example family (attncc.tools.baselines.naive): it materializes the
             N x N scores / weights (softmax(q k^T * scale + mask) v, or (phi(q) phi(k)^T o M) v / rowsum)
  reference  m.reference: attncc's dense float64 oracle (skipped above --ref-max tokens: it holds
             several float64 N x N buffers)

Times are medians of up to --repeats calls after one warm-up, each capped at --budget seconds;
torch's default thread count, OMP_WAIT_POLICY=PASSIVE unless set. `x naive` / `x reference` are
speedups (their time / attncc's time); `rel err` is max |out - reference| / max |reference|.

    python benchmarks/cpu.py                 # N = 1024, 2048, 4096, 8192
    python benchmarks/cpu.py --quick         # N = 128, 256 (seconds; writes cpu_quick.json)
    python benchmarks/cpu.py --sizes 512,1024 --specs causal,linear_elu
"""
from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path

# libgomp's default wait policy made every parallel torch op cost ~5 ms (up to 30x slowdowns) on the
# 2-core VM these results come from; PASSIVE (or ACTIVE) does not. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from common import (
    RESULTS,
    example_paths,
    instantiate,
    median_ms,
    parse_ints,
    print_table,
    qkv,
    write_results,
)

import attncc
from attncc.tools import baselines as bl

BATCH, HEADS, DIM = 1, 4, 64
SIZES, QUICK_SIZES = [1024, 2048, 4096, 8192], [128, 256]


# the examples timed; naive = attncc.tools.baselines.naive: the dense formula of each family
NAIVE = ("softmax", "causal", "sliding_window", "linear_elu", "linear_elu_causal", "toeplitz_linear")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def bench(name: str, sizes: list[int], args) -> list[dict]:
    cls = attncc.compile(example_paths([name])[0], backend="torch")
    rows = []
    for n in sizes:
        m = instantiate(cls, heads=HEADS, tokens=n)
        q, k, v = qkv(BATCH, HEADS, n, DIM)
        ours, reference = partial(m, q, k, v), partial(m.reference, q, k, v)
        naive = partial(bl.naive, bl.FAMILIES[name], m, {}, q, k, v)
        row = {"spec": name, "N": n, "lowering": cls.LOWERING,
               "attncc_ms": median_ms(ours, args.repeats, budget_s=args.budget),
               "naive_ms": median_ms(naive, args.repeats, budget_s=args.budget)}
        if n <= args.ref_max:
            ref = reference()  # doubles as the warm-up
            row["reference_ms"] = median_ms(reference, args.repeats, warmup=0, budget_s=args.budget)
            row["attncc_rel_err"], row["naive_rel_err"] = rel_err(ours(), ref), rel_err(naive(), ref)
            del ref
        row["speedup_vs_naive"] = row["naive_ms"] / row["attncc_ms"]
        if "reference_ms" in row:
            row["speedup_vs_reference"] = row["reference_ms"] / row["attncc_ms"]
        print(f"{name} N={n}: " + ", ".join(f"{k}={v:.3g}" for k, v in row.items() if isinstance(v, float)),
              file=sys.stderr)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"N = {QUICK_SIZES} (a few seconds)")
    ap.add_argument("--sizes", type=parse_ints, help="comma-separated token counts N")
    ap.add_argument("--specs", help=f"comma-separated examples (default: {','.join(NAIVE)})")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median)")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of timed calls per measurement, at most")
    ap.add_argument("--ref-max", type=int, default=4096, help="largest N for the float64 dense reference")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice)")
    ap.add_argument("--out", type=Path, help="JSON path (default: benchmarks/results/cpu[_quick].json)")
    args = ap.parse_args()
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    out = args.out or RESULTS / ("cpu_quick.json" if args.quick else "cpu.json")

    if args.threads:
        torch.set_num_threads(args.threads)
    with torch.inference_mode():
        results = [row for name in (args.specs.split(",") if args.specs else NAIVE) for row in bench(name, sizes, args)]

    headers = ["spec", "N", "lowering", "attncc ms", "naive fp32 ms", "reference f64 ms",
               "x naive", "x reference", "rel err"]
    skipped = "skipped (N > --ref-max)"
    rows = [[r["spec"], r["N"], r["lowering"], r["attncc_ms"], r["naive_ms"], r.get("reference_ms", skipped),
             r["speedup_vs_naive"], r.get("speedup_vs_reference"), r.get("attncc_rel_err")] for r in results]
    title = f"CPU forward, B={BATCH} H={HEADS} d={DIM} fp32, {torch.get_num_threads()} threads (ms, median)"
    print_table(title, headers, rows)
    notes = ("x naive / x reference: speedup of the attncc torch backend (their ms / attncc ms). "
             "rel err: max |attncc - reference| / max |reference|. "
             f"The float64 dense reference is skipped above N = {args.ref_max} (time and memory).")
    write_results(out, {"batch": BATCH, "heads": HEADS, "dim": DIM, "dtype": "float32", "sizes": sizes,
                        "repeats": args.repeats, "budget_s": args.budget, "ref_max": args.ref_max,
                        "results": results}, [(title, headers, rows)], notes)


if __name__ == "__main__":
    main()
