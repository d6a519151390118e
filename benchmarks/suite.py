"""The whole benchmark suite of issue 5 in one run, and the check of its targets; then issue 14's variants.

Runs `attncc.benchmark` (what `attncc bench` runs) over the suite's examples: B=4, H=16, d = 64 and
128, N = 16k, 4k, 1k, 64k in that order (the targets first, so a spent --budget cuts the least
important cases), bf16 on CUDA. Then (--set all, the default) the variants of issue 14 (VARIANTS:
grouped-query attention through `:kv=Hkv`, gated linear attention, Based, sinks, MLA, composed maps)
at d = 64, N = 4k then 16k, in the last --variant-budget seconds of --budget (more if the first part
ends early); --set variants runs only them, --set issue5 only the first part. After every case the
results so far are written to <out>.json / <out>.md, so a run stopped from outside still leaves its
numbers. The targets are then read off the rows (a missing measurement is "not measured", never a pass).

    python benchmarks/suite.py --out $OUT/suite.json            # on a CUDA machine (gpu_suite.sh)
    python benchmarks/suite.py --dry-run                        # the cases and baselines, nothing run
    python benchmarks/suite.py --set variants --dry-run         # issue 14's variants only
    python benchmarks/suite.py --device cpu --dims 16 --lengths 64 --batch 1 --heads 2   # plumbing only
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import EXAMPLES, RESULTS, markdown_table, parse_ints

from attncc.tools.benchmark import BenchConfig, Runner, split_spec, write_report

SPECS = ("softmax", "causal", "sliding_window", "alibi", "document", "hypercube", "block_diagonal", "strided",
         "linear_elu", "linear_elu_causal", "retention", "toeplitz_linear", "rpe_performer",
         "ripple@rings")  # name@lowering forces a lowering (the ring path is not the cost model's choice here)
LENGTHS = (16384, 4096, 1024, 65536)
# issue 14's variants; `:kv=4`: k, v with 4 heads for q's 16 (GQA), `:kv=1`: one (MQA)
VARIANTS = ("gqa:kv=4", "causal:kv=4", "causal:kv=1", "simple_gla", "gla", "based", "sinks", "mla",
            "diff_transformer", "gated_mix")
VARIANT_LENGTHS = (4096, 16384)
VARIANT_BUDGET = 120.0  # seconds of --budget kept for the variants with --set all
MASKED = {"sliding_window": 1.1, "block_diagonal": 1.1, "document": 1.1, "hypercube": 3.0}
LINEAR = {"linear_elu_causal": "chunk_linear_attn", "retention": "chunk_retention"}
SUBQUADRATIC = ("linear", "linear_chunked", "linear_gated", "fft", "fft2", "rings", "block_sparse")


def targets(rows: list[dict]) -> list[dict]:
    """Issue 5's targets, each as measured in these rows: ratio = baseline ms / attncc ms."""
    timed = {(r["spec"], r["impl"], r["d"], r["N"], r.get("mode")): r for r in rows}
    ms = lambda spec, impl, d, n, mode="fwd": (timed.get((spec, impl, d, n, mode)) or {}).get("ms")  # noqa: E731
    cases = sorted({(r["d"], r["N"]) for r in rows})
    backward = any(r.get("mode") == "fwd+bwd" for r in rows)
    out = []

    def check(target, spec, d, n, other_ms, need, strict=False, mode="fwd"):
        ours = ms(spec, "attncc", d, n, mode)
        ratio = other_ms / ours if ours and other_ms else None
        met = None if ratio is None else (ratio > need if strict else ratio >= need)
        out.append({"target": target, "spec": spec, "d": d, "N": n, "ratio": ratio, "need": need, "met": met})

    for d, n in cases:
        for spec in ("softmax", "causal"):
            if n >= 4096:
                check(">= 95% of compiled Flex", spec, d, n, ms(spec, "flex", d, n), 0.95)
                check("faster than SDPA flash", spec, d, n, ms(spec, "sdpa", d, n), 1.0, strict=True)
                if backward:
                    check("fwd+bwd >= 90% of compiled Flex", spec, d, n, ms(spec, "flex", d, n, "fwd+bwd"), 0.9,
                          mode="fwd+bwd")
        for spec, need in MASKED.items():
            if n >= 4096:
                check(f">= {need}x compiled Flex + BlockMask", spec, d, n, ms(spec, "flex", d, n), need)
        for spec, kernel in LINEAR.items():
            if n >= 4096:
                check(f">= 90% of fla {kernel}", spec, d, n, ms(spec, "fla", d, n), 0.9)
        if n == 4096:
            check(">= 10x naive torch FFT", "rpe_performer", d, n, ms("rpe_performer", "fft", d, n), 10.0)
        if n >= 16384:
            check("faster than SDPA flash causal", "rpe_performer", d, n, ms("causal", "sdpa", d, n), 1.0, strict=True)
    for spec in sorted({r["spec"] for r in rows if r.get("lowering") in SUBQUADRATIC}):
        for d in sorted({r["d"] for r in rows}):
            per_token = {r["N"]: r["bytes_per_token"] for r in rows if r["spec"] == spec and r["d"] == d
                         and r["impl"] == "attncc" and r.get("mode") == "fwd" and r.get("bytes_per_token")}
            if len(per_token) >= 2:
                lo, hi = min(per_token), max(per_token)
                growth = per_token[hi] / per_token[lo]
                out.append({"target": f"memory linear in N: bytes/token at N={hi} over N={lo}", "spec": spec,
                            "d": d, "N": hi, "ratio": growth, "need": 1.5, "met": growth <= 1.5})
    return out


def targets_markdown(found: list[dict]) -> str:
    rows = [[t["target"], t["spec"], t["d"], t["N"], t["ratio"], t["need"],
             {True: "met", False: "MISSED", None: "not measured"}[t["met"]]] for t in found]
    return ("\n## Targets (ratio = baseline ms / attncc ms; memory: growth of bytes per token)\n\n"
            + markdown_table(["target", "spec", "d", "N", "ratio", "need", "result"], rows) + "\n")


def spec_paths(names: str) -> tuple[list[str], list[str]]:
    """`name[@lowering][:kv=Hkv]` names -> (example paths with their suffixes, names whose example is missing)."""
    found, missing = [], []
    for name in (n for n in names.split(",") if n):
        stem, lowering, kv = split_spec(name)
        path = EXAMPLES / f"{stem}.attn"
        suffix = (f"@{lowering}" if lowering else "") + (f":kv={kv}" if kv else "")
        (found if path.exists() else missing).append(f"{path}{suffix}" if path.exists() else name)
    return found, missing


def parts(args, cfg: BenchConfig) -> list[tuple[BenchConfig, list[str], list[str]]]:
    """(config, specs, missing specs) of each part --set runs, in order; the variants' config keeps the
    batch, heads, dtype and baselines and takes their own dims and lengths (budget set when they start)."""
    out = []
    if args.set in ("all", "issue5"):
        reserve = args.variant_budget if args.set == "all" else 0.0
        budget = None if args.budget is None else max(args.budget - reserve, 1e-9)
        out.append((replace(cfg, budget_s=budget), *spec_paths(args.specs)))
    if args.set in ("all", "variants"):
        out.append((replace(cfg, dims=tuple(args.variant_dims), lengths=tuple(args.variant_lengths)),
                    *spec_paths(args.variants)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS / "suite.json")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--set", choices=("all", "issue5", "variants"), default="all",
                    help="issue5: SPECS; variants: VARIANTS (issue 14); all: both, in that order")
    ap.add_argument("--specs", default=",".join(SPECS))
    ap.add_argument("--variants", default=",".join(VARIANTS), help="name[@lowering][:kv=Hkv], comma-separated")
    ap.add_argument("--dims", type=parse_ints, default=[64, 128])
    ap.add_argument("--lengths", type=parse_ints, default=list(LENGTHS))
    ap.add_argument("--variant-dims", type=parse_ints, default=[64])
    ap.add_argument("--variant-lengths", type=parse_ints, default=list(VARIANT_LENGTHS))
    ap.add_argument("--variant-budget", type=float, default=VARIANT_BUDGET,
                    help="seconds of --budget kept for the variants with --set all")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=0, help="k, v heads for specs without :kv= (default: --heads)")
    ap.add_argument("--baselines", default="sdpa,flex,fla,naive,fft")
    ap.add_argument("--backward", action="store_true")
    ap.add_argument("--budget", type=float, default=None, help="seconds; later cases are reported as not run")
    ap.add_argument("--min-run-time", type=float, default=0.2)
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    if args.device == "cpu":
        import os
        os.environ.setdefault("TRITON_INTERPRET", "1")
    cfg = BenchConfig(device=args.device, batch=args.batch, heads=args.heads, dims=tuple(args.dims),
                      lengths=tuple(args.lengths), baselines=tuple(args.baselines.split(",")),
                      backward=args.backward, budget_s=args.budget, min_run_time=args.min_run_time,
                      kv_heads=args.kv_heads)
    if args.dry_run:
        cases = timings = 0
        for part_cfg, specs, missing in parts(args, cfg):
            for case in Runner(part_cfg).plan(specs):
                print(f"{case['spec']} d={case['d']} N={case['N']} ({case['lowering']}): {', '.join(case['impls'])}")
                cases, timings = cases + 1, timings + len(case["impls"])
            for name in missing:
                print(f"{name}: not run: examples/{split_spec(name)[0]}.attn is not in this checkout")
        print(f"{cases} cases, {timings} timings (+ create_block_mask for masked Flex)")
        return 0

    done: list[dict] = []
    start = time.monotonic()

    def save(rows):
        found = targets(done + rows)
        write_report(args.out, cfg, done + rows, "attncc benchmark suite", {"targets": found}, targets_markdown(found))

    for part_cfg, specs, missing in parts(args, cfg):
        if args.budget is not None and part_cfg.budget_s is None:  # the variants: what is left, at least their share
            part_cfg = replace(part_cfg, budget_s=max(args.budget - (time.monotonic() - start), 1e-9))
        rows = Runner(part_cfg).run(specs, on_case=save)
        rows += [{"spec": name, "d": d, "N": n, "impl": "attncc", "mode": "fwd",
                  "note": f"not run: examples/{split_spec(name)[0]}.attn is not in this checkout"}
                 for name in missing for d in part_cfg.dims for n in part_cfg.lengths]
        done += rows
    save([])
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
