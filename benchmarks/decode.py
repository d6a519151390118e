"""Split-K decoding against the tiled kernel: few queries, a long key cache (issue 13, deliverable 4).

For each (Nq, N, d): the `decode` lowering and the `tiled` lowering of the bottom-right causal ALiBi
spec of docs/cookbook/decoding.md, each checked against the float64 reference on a slice of the
call before it is timed, and the plan's choice at those sizes.

    python benchmarks/decode.py --out $OUT/decode.json                       # CUDA (gpu_suite.sh)
    python benchmarks/decode.py --device cpu --lengths 256 --queries 1 --dims 16 --batch 1 --heads 2   # plumbing
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import RESULTS, markdown_table, median_ms, parse_ints

import attncc
from attncc.tools.compare import make_module

SPEC = """attention decode {
    param slope[H] = alibi
    score(i, j) = dot(q[i], k[j]) * scale - slope[h] * (i + N - Nq - j)
    mask(i, j) = j <= i + N - Nq
    normalize softmax
}"""


def case(device, dtype, batch, heads, nq, n, d) -> list[dict]:
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(batch, heads, t, d, generator=g).to(device, dtype) for t in (nq, n, n))
    chosen = attncc.build(SPEC, sizes={"B": batch, "H": heads, "Nq": nq, "N": n, "D": d, "E": d}).plan.lowering
    rows = []
    for lowering in ("decode", "tiled"):
        module = make_module(attncc.compile(SPEC, lowering=lowering), heads, d, d).to(device)
        module.backend = "triton"
        with torch.no_grad():
            out = module(q, k, v)
            ref = module.reference(q[:1, :2].double(), k[:1, :2].double(), v[:1, :2].double())
            error = float((out[:1, :2].double() - ref).abs().max())
            sync = torch.cuda.synchronize if device == "cuda" else None
            ms = median_ms(lambda: module(q, k, v), repeats=10 if device == "cuda" else 2, sync=sync)
        bytes_kv = 2 * batch * heads * n * d * q.element_size()
        rows.append({"lowering": lowering, "chosen": chosen, "Nq": nq, "N": n, "d": d, "ms": ms,
                     "GB/s (K, V read)": bytes_kv / ms / 1e6, "max error (b0, h0-1)": error})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS / "decode.json")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--queries", type=parse_ints, default=[1, 4, 16])
    ap.add_argument("--lengths", type=parse_ints, default=[16384, 131072])
    ap.add_argument("--dims", type=parse_ints, default=[64, 128])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    args = ap.parse_args()
    if args.device == "cpu":
        import os
        os.environ.setdefault("TRITON_INTERPRET", "1")
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    rows = []
    for d in args.dims:
        for n in args.lengths:
            for nq in args.queries:
                rows += case(args.device, dtype, args.batch, args.heads, nq, n, d)
                print(json.dumps(rows[-2:]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    header = list(rows[0])
    args.out.with_suffix(".md").write_text(markdown_table(header, [[r[h] for h in header] for r in rows]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
