"""Issue 3's CPU measurements of structured masks (torch backend, B=1, H=4, d=64, fp32).

- Toeplitz-modulated kernelized attention, examples/rpe_performer.attn (FAVOR+, m = 16 features, as
  in the official Fast-Attention code) and examples/toeplitz_linear.attn (elu + 1, m = d = 64): the
  `fft` lowering against the dense float64 reference, naive dense fp32 (materialized weights) and
  `tiled`; the slope of log(time) against log(N) for `fft` from 1k to 32k (N log N: slightly above 1).
- Hypercube (examples/hypercube.attn): the fraction of score tiles visited against
  (log2(N / 16) + 1) / (N / 16), counted from the cached layout, and the time of block_sparse vs tiled.
- Grids and graphs: examples/ripple.attn (`rings`) and examples/grid_rpe.attn (`fft2`) on square
  grids (width = sqrt(N), as for an image), examples/gkat.attn (`graph`) on a random symmetric graph
  of about 16 edges per token; each against `tiled` and the float64 reference, with the lowering the
  cost model picks at that N (B=1, H=4, d=64) and the slopes of log(time) against log(N).

    python benchmarks/structured.py                    # N = 1k .. 8k
    python benchmarks/structured.py --sizes 1024,2048 --ref-max 2048
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/README.md

import argparse  # noqa: E402
import math  # noqa: E402
from functools import partial  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402

import attncc  # noqa: E402
from common import RESULTS, example_paths, fmt, instantiate, median_ms, parse_ints, print_table, qkv, write_results  # noqa: E402


def timed(repeats: int, fn, *args) -> float:
    return median_ms(partial(fn, *args), repeats, budget_s=5)


def naive_toeplitz(m, q, k, v) -> torch.Tensor:
    """Dense fp32: W = exp(rpe[i - j + max_len - 1]) o phi(Q) phi(K)^T, out = W V / rowsum."""
    n = q.shape[2]
    pq, pk = m.featurize(q, k) if m.RANDOM_FEATURES else (torch.nn.functional.elu(x) + 1 for x in (q, k))
    d = torch.arange(n).view(-1, 1) - torch.arange(n).view(1, -1) + m.sizes["max_len"] - 1
    w = (pq @ pk.transpose(-1, -2)) * torch.exp(m.rpe.detach()[d.clamp(0, m.rpe.numel() - 1)])
    return (w @ v) / (w.sum(-1, keepdim=True) + 1e-6)


def slope_of(sizes: list[int], times: list[float]) -> float:
    """Least-squares slope of log(time) against log(N): N log N gives slightly above 1."""
    xs, ys = [math.log(n) for n in sizes], [math.log(t) for t in times]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / max(1e-12, sum((x - mean_x) ** 2 for x in xs))


def toeplitz(name: str, sizes: list[int], dense_max: int, ref_max: int, repeats: int) -> tuple[list, list]:
    path = str(example_paths([name])[0])
    fft_cls, tiled_cls = attncc.compile(path, lowering="fft"), attncc.compile(path, lowering="tiled")
    rows, fft_times = [], []
    for n in sizes:
        fft_m = instantiate(fft_cls, heads=4, tokens=n, backend="torch").eval()
        q, k, v = qkv(1, 4, n, 64)
        dense = n <= dense_max
        with torch.no_grad():
            t_fft = timed(repeats, fft_m, q, k, v)
            if dense:
                tiled_m = instantiate(tiled_cls, heads=4, tokens=n, backend="torch").eval()
                tiled_m.load_state_dict(fft_m.state_dict())
                t_tiled, t_naive = timed(repeats, tiled_m, q, k, v), timed(repeats, naive_toeplitz, fft_m, q, k, v)
            t_ref = median_ms(partial(fft_m.reference, q, k, v), 1, warmup=0) if n <= ref_max else None
            err = float((fft_m(q, k, v).double() - fft_m.reference(q, k, v)).abs().max()) if n <= ref_max else None
        fft_times.append(t_fft)
        skip = "skipped"
        rows.append([n, fmt(t_fft), fmt(t_tiled) if dense else skip, fmt(t_naive) if dense else skip,
                     fmt(t_ref) if t_ref else skip, fmt(t_ref / t_fft) if t_ref else "-",
                     fmt(t_naive / t_fft) if dense else "-", f"{err:.1e}" if err is not None else "-"])
    return rows, [[f"{name} fft: slope of log time vs log N, N = {sizes[0]} .. {sizes[-1]}",
                   fmt(slope_of(sizes, fft_times))]]


def hypercube(sizes: list[int], repeats: int) -> list:
    path = str(example_paths(["hypercube"])[0])
    sparse_cls, tiled_cls = attncc.compile(path, lowering="block_sparse"), attncc.compile(path, lowering="tiled")
    layout_fn = sys.modules[sparse_cls.__module__].block_layout
    rows = []
    for n in sizes:
        sparse_m, tiled_m = sparse_cls(backend="torch"), tiled_cls(backend="torch")
        q, k, v = qkv(1, 4, n, 64)
        tiles = sparse_m.cached_tiles(sparse_m._context(q, k, v, {}), layout_fn, "cpu", exact=True)
        tile, visited = tiles.tile, tiles.full_cols.numel() + tiles.partial_cols.numel()
        blocks = -(-n // tile)
        with torch.no_grad():
            t_sparse, t_tiled = timed(repeats, sparse_m, q, k, v), timed(repeats, tiled_m, q, k, v)
        bound = (math.log2(n / 16) + 1) / (n / 16)
        rows.append([n, tile, f"{visited / blocks ** 2:.4f}", f"{bound:.4f}", fmt(t_sparse), fmt(t_tiled),
                     fmt(t_tiled / t_sparse)])
    return rows


GRID_FAMILIES = {  # example: (structured lowering, spec sizes at N tokens, call inputs at N tokens)
    "ripple": ("rings", lambda n: {"width": math.isqrt(n)}, lambda n: {}),
    "grid_rpe": ("fft2", lambda n: {"width": math.isqrt(n)}, lambda n: {}),  # max_rows: raised to N
    "gkat": ("graph", lambda n: {}, lambda n: {"adj": random_graph(n, 16)}),  # tiled forms G: N^3
}


def random_graph(n: int, degree: int, seed: int = 0) -> torch.Tensor:
    """A symmetric 0/1 adjacency with about `degree` edges per token."""
    edges = torch.rand(n, n, generator=torch.Generator().manual_seed(seed)) < degree / (2 * n)
    return (edges | edges.T).float()


def model_choice(comp, n: int, spec_sizes: dict) -> str:
    """The lowering the cost model picks for this spec at B=1, H=4, d=64 and N tokens."""
    from attncc.plan.select import select
    return select(comp.optimized, {**comp.checked.sizes, **spec_sizes, "B": 1, "H": 4, "Nq": n, "N": n,
                                   "D": 64, "E": 64}).lowering


def fit(sizes: list[int], times: list[float]) -> tuple[float, float]:
    """(slope, intercept) of log(time) against log(N)."""
    s = slope_of(sizes, times)
    return s, sum(math.log(t) - s * math.log(n) for n, t in zip(sizes, times)) / len(sizes)


def crossover(sizes: list[int], fast: list[float], tiled: list[float]) -> float | None:
    """N where the two power-law fits meet (extrapolated past the sizes measured), if they do."""
    (s1, c1), (s2, c2) = fit(sizes[:len(fast)], fast), fit(sizes[:len(tiled)], tiled)
    return math.exp((c1 - c2) / (s2 - s1)) if s2 > s1 else None


def grid_family(name: str, sizes: list[int], tiled_max: int, ref_max: int, repeats: int) -> tuple[list, list]:
    """Rows [N, structured ms, tiled ms, reference ms, x tiled, x reference, error, cost model's choice]
    and the slopes of the structured and tiled times, with the N where their fits cross."""
    lowering, spec_sizes, inputs_at = GRID_FAMILIES[name]
    path = str(example_paths([name])[0])
    fast_cls, tiled_cls = attncc.compile(path, lowering=lowering), attncc.compile(path, lowering="tiled")
    comp = attncc.build(path)
    rows, fast_times, tiled_times = [], [], []
    for n in sizes:
        fast_m = instantiate(fast_cls, heads=4, tokens=n, backend="torch", **spec_sizes(n)).eval()
        q, k, v = qkv(1, 4, n, 64)
        inputs = inputs_at(n)
        with torch.no_grad():
            t_fast = median_ms(partial(fast_m, q, k, v, **inputs), repeats, budget_s=5)
            t_tiled = None
            if n <= tiled_max:
                tiled_m = instantiate(tiled_cls, heads=4, tokens=n, backend="torch", **spec_sizes(n)).eval()
                tiled_m.load_state_dict(fast_m.state_dict())
                t_tiled = median_ms(partial(tiled_m, q, k, v, **inputs), repeats, budget_s=5)
            t_ref = err = None
            if n <= ref_max:
                t_ref = median_ms(partial(fast_m.reference, q, k, v, **inputs), 1, warmup=0)
                err = float((fast_m(q, k, v, **inputs).double() - fast_m.reference(q, k, v, **inputs)).abs().max())
        fast_times.append(t_fast)
        if t_tiled is not None:
            tiled_times.append(t_tiled)
        rows.append([n, fmt(t_fast), fmt(t_tiled), fmt(t_ref), fmt(t_tiled / t_fast) if t_tiled else "-",
                     fmt(t_ref / t_fast) if t_ref else "-", f"{err:.1e}" if err is not None else "-",
                     model_choice(comp, n, spec_sizes(n))])
    slopes = [[f"{name} {lowering}: slope of log time vs log N, N = {sizes[0]} .. {sizes[-1]}",
               fmt(slope_of(sizes, fast_times))]]
    if len(tiled_times) > 1:
        slopes.append([f"{name} tiled: slope, N = {sizes[0]} .. {sizes[len(tiled_times) - 1]}",
                       fmt(slope_of(sizes[:len(tiled_times)], tiled_times))])
        cross = crossover(sizes, fast_times, tiled_times)
        slopes.append([f"{name}: N where the {lowering} and tiled fits cross (extrapolated)",
                       f"{cross:.0f}" if cross else "never"])
    return rows, slopes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=parse_ints, default=[1024, 2048, 4096, 8192])
    parser.add_argument("--fft-sizes", type=parse_ints, default=[1024, 2048, 4096, 8192, 16384, 32768],
                        help="N for the FFT lowering (dense baselines stop at --dense-max)")
    parser.add_argument("--dense-max", type=int, default=8192, help="largest N for tiled and naive fp32")
    parser.add_argument("--ref-max", type=int, default=8192, help="largest N for the float64 dense reference")
    parser.add_argument("--grid-sizes", type=parse_ints, default=[1024, 2304, 4096, 9216],
                        help="N for ripple, grid_rpe (square grids: perfect squares) and gkat")
    parser.add_argument("--grid-tiled-max", type=int, default=9216, help="largest N for tiled on the grids")
    parser.add_argument("--graph-tiled-max", type=int, default=4096, help="largest N for tiled gkat (forms G)")
    parser.add_argument("--grid-ref-max", type=int, default=4096, help="largest N for their f64 reference")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    t_head = ["N", "fft ms", "tiled ms", "naive fp32 ms", "reference f64 ms", "x reference", "x naive", "fft error"]
    results, tables, slopes = {}, [], []
    for name in ("rpe_performer", "toeplitz_linear"):
        rows, slope = toeplitz(name, args.fft_sizes, args.dense_max, args.ref_max, args.repeats)
        results[name], slopes = rows, slopes + slope
        tables.append((f"{name} (B=1, H=4, d=64, fp32)", t_head, rows))
    h_rows = hypercube(args.sizes, args.repeats)
    h_head = ["N", "tile", "tiles visited", "(log2(N/16)+1)/(N/16)", "block_sparse ms", "tiled ms", "x tiled"]
    g_head = ["N", "structured ms", "tiled ms", "reference f64 ms", "x tiled", "x reference", "error",
              "cost model picks"]
    for name, (lowering, _, _) in GRID_FAMILIES.items():
        tiled_max = args.graph_tiled_max if lowering == "graph" else args.grid_tiled_max
        rows, slope = grid_family(name, args.grid_sizes, tiled_max, args.grid_ref_max, args.repeats)
        results[name], slopes = rows, slopes + slope
        tables.append((f"{name}: {lowering} vs tiled (B=1, H=4, d=64, fp32)", g_head, rows))
    tables += [("scaling", ["fit", "value"], slopes), ("hypercube (B=1, H=4, d=64, fp32)", h_head, h_rows)]
    for title, head, rows in tables:
        print_table(title, head, rows)
    write_results(RESULTS / "structured.json", {**results, "slopes": slopes, "hypercube": h_rows}, tables)


if __name__ == "__main__":
    main()
