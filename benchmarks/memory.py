"""CPU peak memory per token of the linear-memory lowerings, to N = 256k, against the estimates.

Each (spec, lowering, N) runs in a fresh process: the module is compiled with that lowering pinned,
q, k, v [1, H, N, D] fp32 are made, freed heap is returned to the system (glibc malloc_trim, so
that the call cannot reuse memory that is resident but free), the kernel's peak resident set size is
reset (Linux: write 5 to /proc/self/clear_refs), one forward runs under torch.no_grad, and the peak
is read back (VmHWM).
What is reported is that peak above the resident size just before the call: every byte the call
made resident (torch's CPU allocations, FFT plans, Python objects), q, k, v not included. A fresh
process per point keeps one point's freed heap from hiding the next one's growth.

  measured   peak resident bytes of the call / N
  estimate   the module's MEMORY entry (attncc.plan.cost) at the call's sizes, working memory, / N
  training   the same estimate with what autograd keeps for the backward, / N (not measured)

`tiled` is measured while it takes seconds (--tiled-max); above that only its estimates are shown:
what it would need. `dispatch` is the lowering a default compile of toeplitz_linear runs at that N.

    python benchmarks/memory.py                        # N = 1k, 4k, 16k, 64k, 256k
    python benchmarks/memory.py --sizes 1024,4096      # a quick run
    python benchmarks/memory.py --cases linear_elu:linear --update   # rerun some cases into the results
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/cpu.py

import torch
from common import RESULTS, example_paths, parse_ints, print_table, write_results

import attncc

HEADS, DIM = 2, 32
SIZES = [1024, 4096, 16384, 65536, 262144]
# (example, lowering): the linear-memory lowerings, and tiled on the same Toeplitz spec as fft
CASES = [("linear_elu", "linear"), ("linear_elu_causal", "linear_chunked"), ("toeplitz_linear", "fft"),
         ("ripple", "rings"), ("toeplitz_linear", "tiled")]


def resident() -> tuple[int, int]:
    """(peak, current) resident set size of this process in bytes (Linux /proc/self/status)."""
    status = Path("/proc/self/status").read_text()
    kib = lambda field: int(re.search(rf"{field}:\s+(\d+)", status).group(1)) * 1024  # noqa: E731
    return kib("VmHWM"), kib("VmRSS")


def measure(spec: str, lowering: str, n: int) -> dict:
    """One point, in this process (the --worker side). One thread: per-thread heap arenas make the
    resident peak of parallel ops vary from run to run."""
    torch.set_num_threads(1)
    cls = attncc.compile(example_paths([spec])[0], backend="torch", lowering=lowering)
    m = cls(**{s: v for s, v in (("H", HEADS), ("D", DIM), ("E", DIM)) if s in cls.NEEDS})
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, n, DIM, generator=gen) for _ in range(3))
    sizes = {**m.sizes, "B": 1, "H": HEADS, "N": n, "Nq": n, "D": DIM, "E": DIM}
    working, saved = cls.MEMORY[lowering](sizes)
    with torch.no_grad():
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
        before = resident()[1]
        m(q, k, v)
        peak = resident()[0]
    return {"spec": spec, "lowering": lowering, "N": n, "peak_bytes": peak - before,
            "estimate_bytes": working, "training_estimate_bytes": working + saved}


def estimate_only(spec: str, lowering: str, n: int) -> dict:
    cls = attncc.compile(example_paths([spec])[0], backend="torch", lowering=lowering)
    working, saved = cls.MEMORY[lowering]({**cls.SIZES, "B": 1, "H": HEADS, "N": n, "Nq": n, "D": DIM, "E": DIM})
    return {"spec": spec, "lowering": lowering, "N": n, "peak_bytes": None, "estimate_bytes": working,
            "training_estimate_bytes": working + saved}


def run_point(spec: str, lowering: str, n: int, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", spec, lowering, str(n)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return {**estimate_only(spec, lowering, n), "note": f"not measured: over {timeout:.0f} s"}
    except subprocess.CalledProcessError as exc:
        return {**estimate_only(spec, lowering, n), "note": "failed: " + exc.stderr.strip().splitlines()[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=parse_ints, default=SIZES, help="comma-separated token counts N")
    ap.add_argument("--tiled-max", type=int, default=16384, help="largest N at which tiled is run (not only estimated)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per point; slower points are estimated only")
    ap.add_argument("--cases", help="comma-separated SPEC:LOWERING (default: " + ",".join(f"{s}:{lw}" for s, lw in CASES) + ")")
    ap.add_argument("--update", action="store_true", help="replace these cases' rows in --out, keep the others")
    ap.add_argument("--worker", nargs=3, metavar=("SPEC", "LOWERING", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS / "memory.json")
    args = ap.parse_args()
    if args.worker:
        spec, lowering, n = args.worker
        print(json.dumps(measure(spec, lowering, int(n))))
        return

    dispatch = attncc.compile(example_paths(["toeplitz_linear"])[0])
    cases = [tuple(c.split(":")) for c in args.cases.split(",")] if args.cases else CASES
    results = []
    for spec, lowering in cases:
        for n in args.sizes:
            row = (estimate_only(spec, lowering, n) | {"note": f"estimate only (N > --tiled-max {args.tiled_max})"}
                   if lowering == "tiled" and n > args.tiled_max else run_point(spec, lowering, n, args.timeout))
            results.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    if args.update:  # the other cases' rows as they were, in CASES order
        kept = [r for r in json.loads(args.out.read_text())["results"] if (r["spec"], r["lowering"]) not in cases]
        order = {case: i for i, case in enumerate(CASES)}
        results = sorted(kept + results, key=lambda r: (order.get((r["spec"], r["lowering"]), len(order)), r["N"]))
    per = lambda b, n: None if b is None else b / n  # noqa: E731
    headers = ["spec", "lowering", "N", "measured B/token", "estimate B/token", "training estimate B/token",
               "measured / estimate", "dispatch (toeplitz_linear)"]
    rows = [[r["spec"], r["lowering"], r["N"], per(r["peak_bytes"], r["N"]) if r["peak_bytes"] is not None
             else r.get("note", ""), per(r["estimate_bytes"], r["N"]), per(r["training_estimate_bytes"], r["N"]),
             None if r["peak_bytes"] is None else r["peak_bytes"] / r["estimate_bytes"],
             dispatch.lowering_at(r["N"])] for r in results]
    title = f"CPU peak memory per token, forward under no_grad, B=1 H={HEADS} D=E={DIM} fp32 (bytes / token)"
    print_table(title, headers, rows)
    notes = ("measured: peak resident set size of one forward above the resident size before it (a fresh "
             "process per point, q, k, v excluded), / N. estimate: the module's MEMORY entry (the cost "
             "model's working bytes) at these sizes; training estimate adds what autograd keeps for the "
             "backward. tiled above --tiled-max: estimates only, what it would need.")
    write_results(args.out, {"heads": HEADS, "dim": DIM, "dtype": "float32", "sizes": sorted({r["N"] for r in results}),
                             "results": results}, [(title, headers, rows)], notes)


if __name__ == "__main__":
    main()
