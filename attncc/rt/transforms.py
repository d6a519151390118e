"""Kernelized attention through a linear map over key tokens: num_i = sum_l phi(q_i)_l [T (phi(K)_l o [V, 1])]_i,
with T a Toeplitz convolution (1-D or grid, by FFT), a graph kernel or ring-distance box sums
(summed-area tables). Features and value columns go in cache-sized blocks (kernel_blocks), which
also bounds the peak memory: linear in the tokens, whatever m and E.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..lang.source import ShapeError
from .attention import compute_dtype, finish_rows
from .heads import heads_product

# What generated code may call as rt.NAME (attncc/rt/__init__.py re-exports exactly these).
__all__ = [
    "CPU_FEATURE_TILE", "GPU_FEATURE_TILE", "GPU_GROUP_BUDGET", "GROUP_BUDGET", "RingGeometry", "fft_length",
    "graph_attention", "graph_transform", "grid_offsets", "grid_toeplitz_attention", "grid_transform",
    "kernel_blocks", "kernel_products", "ring_attention", "ring_coordinates", "ring_geometry",
    "summed_area_table", "toeplitz_attention", "toeplitz_transform",
]

GROUP_BUDGET = 1 << 22  # elements of one feature group's largest buffer on CPUs (stays in cache)
GPU_GROUP_BUDGET = 1 << 26  # on GPUs: few, large groups (launches and re-reads cost more than memory)
# Feature columns per step of the Triton contraction kernels: one on GPUs (registers hold a
# [BLOCK_M, BLOCK_L, BLOCK_E] tile per corner), many on the CPU, where Triton's interpreter pays per step.
GPU_FEATURE_TILE, CPU_FEATURE_TILE = 1, 16


def kernel_blocks(pk, v, transform: Callable, *, cells: int, budget: int = GROUP_BUDGET, split_columns: bool = True,
                  heads: int | None = None):
    """Yield (l0, e0, y) with y [ml, B, H, ne, Nq] = T (phi(K)_l o [V, 1]_e) for the features
    l0 .. l0+ml-1 and the value columns e0 .. e0+ne-1 (column E is the ones of the row sums): a linear
    map T over key tokens (`transform`, [.., N] -> [.., Nq]) applied to a block of (feature, value
    column) pairs at once. Blocks are sized so that the largest buffer (`cells` elements per column)
    stays within `budget` elements: whole features while one fits, else (split_columns) a few value
    columns of one feature, never less than one column of one feature (B H cells elements). The
    peak is therefore a few times max(budget, B H cells): linear in the tokens, whatever m and E.
    `heads`: of the transform's output when it has more than the keys (a filter per query head)."""
    dtype = compute_dtype(v)
    B, H, _, m = pk.shape
    H = heads or H
    E = v.shape[-1]
    ones = torch.ones(*v.shape[:-1], 1, dtype=dtype, device=v.device)
    v1 = torch.cat([v.to(dtype), ones], -1).transpose(-1, -2)  # [B, H, E+1, N]
    pk = pk.to(dtype).permute(3, 0, 1, 2)  # [m, B, H, N]
    column = max(1, B * H * cells)
    columns = E + 1 if not split_columns else max(1, min(E + 1, budget // column))
    group = max(1, budget // (column * columns)) if columns == E + 1 else 1
    for e0 in range(0, E + 1, columns):
        for l0 in range(0, m, group):
            yield l0, e0, transform(pk[l0:l0 + group, :, :, None, :] * v1[:, :, e0:e0 + columns])


def kernel_products(pk, v, transform: Callable, *, cells: int, budget: int = GROUP_BUDGET):
    """Yield (l0, y) with y [ml, B, H, E+1, Nq] = T (phi(K)_l o [V, 1]) for the features l0 .. l0+ml-1,
    every value column at once (what the Triton contraction kernels read): kernel_blocks by whole
    features, at least one feature per group."""
    for l0, _, y in kernel_blocks(pk, v, transform, cells=cells, budget=budget, split_columns=False):
        yield l0, y


def _kernel_sums(pq, pk, v, transform: Callable, *, normalize: str, eps: float, cells: int) -> torch.Tensor:
    """num_i = sum_l phi(q_i)_l [T (phi(K)_l o [V, 1])]_i (kernel_blocks), then the normalization.
    Features and value columns go in blocks small enough to stay in cache, which matters more on
    CPUs than the number of calls, and bounds the peak memory (see kernel_blocks)."""
    dtype = compute_dtype(v)
    B, H, Nq, _ = pq.shape
    E = v.shape[-1]
    pq = pq.to(dtype).permute(3, 0, 1, 2)  # [m, B, H, Nq]
    sums: dict[int, torch.Tensor] = {}  # value column e0 -> its block's sum over features [B, H, ne, Nq]
    for l0, e0, y in kernel_blocks(pk, v, transform, cells=cells, heads=pq.shape[1]):
        part = heads_product(pq[l0:l0 + y.shape[0], :, :, None, :], y, -3).sum(0)  # y: per key/value head or per query head
        sums[e0] = part if e0 not in sums else sums[e0] + part
    out = torch.cat([sums[e0] for e0 in sorted(sums)], 2).transpose(-1, -2)
    return finish_rows(out[..., :E], out[..., E], normalize, eps).to(v.dtype)


def fft_length(n: int) -> int:
    return 1 << math.ceil(math.log2(max(2, n)))


def toeplitz_transform(f, nq: int, n: int, dtype) -> tuple[Callable, int]:
    """(T, cells): T u = sum_j f(i - j) u_j for i < nq, j < n (a linear convolution over tokens) by
    FFT on a zero-padded (circulant-embedded) length; f: [1|B, 1|H, nq + n - 1] holding f(d) for
    d = -(n-1) .. nq-1."""
    # outputs need g[t - j] for 0 <= t - j <= nq + n - 2 only: a circular length >= nq + n - 1 never wraps
    n_fft = fft_length(nq + n - 1)
    g = torch.fft.rfft(f.to(dtype), n=n_fft, dim=-1)[:, :, None, :]  # [1|B, 1|H, 1, F]

    def convolve(u):
        return torch.fft.irfft(heads_product(torch.fft.rfft(u, n=n_fft, dim=-1), g, -3), n=n_fft, dim=-1)[..., n - 1:n - 1 + nq]
    return convolve, n_fft


def toeplitz_attention(pq, pk, v, f, *, normalize: str, eps: float) -> torch.Tensor:
    """num_i = sum_l phi(q_i)_l sum_j f(i - j) phi(k_j)_l [v_j, 1]: one linear convolution over tokens
    per (feature, value column), by FFT (toeplitz_transform)."""
    transform, cells = toeplitz_transform(f, pq.shape[2], pk.shape[2], compute_dtype(v))
    return _kernel_sums(pq, pk, v, transform, normalize=normalize, eps=eps, cells=cells)


def graph_transform(adj, kind: str, options: dict, nq: int, n: int, dtype) -> tuple[Callable, int]:
    """(T, cells): T u = G u for the graph kernel G of adj (attncc.graphs), through products with adj
    (sparse when adj is); G is never formed."""
    from ..lang.graph_kernels import graph_attention_transform
    if nq != n:
        raise ShapeError(f"a graph kernel relates tokens to tokens: queries ({nq}) and keys ({n}) must be "
                         "the same tokens")
    return graph_attention_transform(kind, adj, options, dtype), n


def graph_attention(pq, pk, v, adj, kind: str, options: dict, *, normalize: str, eps: float) -> torch.Tensor:
    """W = G o phi(Q) phi(K)^T for a graph kernel G of adj: the m (e + 1) products G (phi(K)_l o [V, 1])."""
    transform, cells = graph_transform(adj, kind, options, pq.shape[2], pk.shape[2], compute_dtype(v))
    return _kernel_sums(pq, pk, v, transform, normalize=normalize, eps=eps, cells=cells)


def grid_offsets(nq: int, n: int, width: int, device=None):
    """(dr [1, 1, Lr, 1], dc [1, 1, 1, Lc]): every offset between a query and a key cell of the grid,
    dr in -(Rk-1) .. Rq-1, dc in -(w-1) .. w-1, for Rq, Rk = rows of Nq, N tokens."""
    rq, rk = -(-nq // width), -(-n // width)
    dr = torch.arange(-(rk - 1), rq, dtype=torch.int32, device=device).view(1, 1, -1, 1)
    dc = torch.arange(-(width - 1), width, dtype=torch.int32, device=device).view(1, 1, 1, -1)
    return dr, dc


def grid_transform(f, nq: int, n: int, width: int, dtype) -> tuple[Callable, int]:
    """(T, cells): tokens row-major on a grid of `width` columns, T u = sum_j f(dr, dc) u_j, a 2-D
    linear convolution of the key grid (zero-padded past n) with f, by 2-D FFT.

    f: [1|B, 1|H, Rk + Rq - 1, 2 w - 1] holding f(dr, dc) on grid_offsets(nq, n, w)."""
    rq, rk = -(-nq // width), -(-n // width)
    shape = (fft_length(rq + rk - 1), fft_length(2 * width - 1))
    g = torch.fft.rfft2(f.to(dtype), s=shape)[:, :, None]  # [1|B, 1|H, 1, Fr, Fc]

    def convolve(u):
        grid = torch.nn.functional.pad(u, (0, rk * width - n)).unflatten(-1, (rk, width))
        y = torch.fft.irfft2(heads_product(torch.fft.rfft2(grid, s=shape), g, -4), s=shape)
        return y[..., rk - 1:rk - 1 + rq, width - 1:2 * width - 1].flatten(-2)[..., :nq]
    return convolve, shape[0] * shape[1]


def grid_toeplitz_attention(pq, pk, v, f, width: int, *, normalize: str, eps: float) -> torch.Tensor:
    """f(dr, dc) 2-level block Toeplitz: every T_f product is a 2-D FFT convolution (grid_transform)."""
    transform, cells = grid_transform(f, pq.shape[2], pk.shape[2], width, compute_dtype(v))
    return _kernel_sums(pq, pk, v, transform, normalize=normalize, eps=eps, cells=cells)


def ring_coordinates(t, width: int, metric: str):
    """Token t -> (a, b) on the plane where the ring distance is Chebyshev: (row, column) itself, or
    for Manhattan the rotated (r + c, r - c + w - 1), since |dr| + |dc| = max(|dr + dc|, |dr - dc|)."""
    r, c = t // width, t % width
    return (r, c) if metric == "chebyshev" else (r + c, r - c + width - 1)


@dataclass(frozen=True)
class RingGeometry:
    """Keys on the (rows + 1) x (cols + 1) summed-area table of the ring plane (ring_coordinates):
    key j sits at cell (a_j + 1) (cols + 1) + b_j + 1; a query's coordinates are (a_q, b_q)."""
    rows: int
    cols: int
    cell: torch.Tensor
    a_q: torch.Tensor
    b_q: torch.Tensor

    @property
    def cells(self) -> int:
        return (self.rows + 1) * (self.cols + 1)


def ring_geometry(nq: int, n: int, width: int, metric: str, device=None) -> RingGeometry:
    a_k, b_k = ring_coordinates(torch.arange(n, device=device), width, metric)
    # the largest (a, b) of a key, from n alone: no data-dependent size (torch.compile keeps one graph)
    rows, cols = ((n - 1) // width + 1, min(n, width)) if metric == "chebyshev" else (-(-n // width) + width - 1,) * 2
    a_q, b_q = ring_coordinates(torch.arange(nq, device=device), width, metric)
    return RingGeometry(rows, cols, a_k * (cols + 1) + b_k + cols + 2, a_q, b_q)


def summed_area_table(u, geo: RingGeometry, dim: int = -1) -> torch.Tensor:
    """u [.., N, ..] (tokens along `dim`) -> its summed-area table [.., cells, ..] on the ring plane:
    entry (A, B) holds the sum of the keys with a_j < A and b_j < B."""
    dim = dim % u.dim()
    shape = list(u.shape)
    shape[dim] = geo.cells
    table = u.new_zeros(shape).index_copy(dim, geo.cell, u)
    return table.unflatten(dim, (geo.rows + 1, geo.cols + 1)).cumsum(dim).cumsum(dim + 1).flatten(dim, dim + 1)


def ring_attention(pq, pk, v, g, width: int, metric: str, *, normalize: str, eps: float) -> torch.Tensor:
    """f(i, j) = g(i, rho(i, j)) with rho a ring distance on a grid of `width` columns (ripple):

        sum_j g(i, rho) x_j = sum_{rho < T} (g(i, rho) - g(i, rho + 1)) box_i(rho) + g(i, T) total

    with box_i(rho) = the keys within distance rho of i, four reads of a summed-area table, and
    g(i, rho) = g(i, T) for rho >= T (the last column of g). O(N T m e) after an O(N m e) table.

    g: [1|B, 1|H, Nq, T + 1] holding g(i, rho) for rho = 0 .. T."""
    geo = ring_geometry(pq.shape[2], pk.shape[2], width, metric, v.device)
    rows, cols = geo.rows, geo.cols
    g = g.to(compute_dtype(v))
    T = g.shape[-1] - 1
    weights = [(g[..., r] - g[..., r + 1]).unsqueeze(-2) for r in range(T)] + [g[..., T].unsqueeze(-2)]  # [.., 1, Nq]

    def corner(a, b):
        return a.clamp(0, rows) * (cols + 1) + b.clamp(0, cols)

    def ring_sums(u):
        table = summed_area_table(u, geo)
        y = heads_product(weights[T], table[..., -1:], -3)  # every key, at the saturated weight
        for r in range(T):
            a0, a1, b0, b1 = geo.a_q - r, geo.a_q + r + 1, geo.b_q - r, geo.b_q + r + 1
            box = (table[..., corner(a1, b1)] - table[..., corner(a0, b1)] - table[..., corner(a1, b0)]
                   + table[..., corner(a0, b0)])
            y = y + heads_product(weights[r], box, -3)
        return y
    return _kernel_sums(pq, pk, v, ring_sums, normalize=normalize, eps=eps, cells=geo.cells + pq.shape[2])
