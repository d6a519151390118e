"""Grouped-query attention in torch ops: products between tensors of H query heads and of Hkv key/value
heads (Hkv dividing H, query head h reading key/value head h // (H / Hkv): heads of one group are
adjacent), without ever expanding the key/value side to H heads.

Every tensor here is [B, heads, ...] (heads at dim 1, or at `dim`). The group of G = H / Hkv query heads
that share a key/value head is folded into the rows of the product instead:

    q [B, H, M, K] -> [B, Hkv, G M, K] (a view when q is contiguous) @ k^T [B, Hkv, K, N]
                   -> [B, Hkv, G M, N] -> [B, H, M, N]

so k and v are read in place, once per group. A copy, when one is made, is of the query side (a
chunk of queries, a chunk's scores), never of k or v.
"""
from __future__ import annotations

import torch

__all__ = ["grouped_matmul", "heads_product"]


def _fold_rows(a: torch.Tensor, groups: int) -> torch.Tensor:
    """a [B, groups G, *batch, M, K] -> [B, groups, *batch, G M, K]: each group's G heads stacked as rows."""
    B, heads = a.shape[:2]
    g = heads // groups
    a = a.reshape(B, groups, g, *a.shape[2:])
    if a.dim() > 5:  # batch dims between heads and rows: the group moves next to the rows
        a = a.movedim(2, -3)
    return a.reshape(B, groups, *a.shape[2:-3], g * a.shape[-2], a.shape[-1])


def _unfold_rows(c: torch.Tensor, g: int) -> torch.Tensor:
    """_fold_rows undone on a product c [B, groups, *batch, G M, N] -> [B, groups G, *batch, M, N]."""
    B, groups = c.shape[:2]
    c = c.reshape(B, groups, *c.shape[2:-2], g, c.shape[-2] // g, c.shape[-1])
    if c.dim() > 5:
        c = c.movedim(-3, 2)
    return c.reshape(B, groups * g, *c.shape[3:])


def grouped_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b over heads at dim 1 where one side has fewer heads, dividing the other's: a [B|1, Ha, *batch,
    M, K], b [B|1, Hb, *batch, K, N] -> [B, max(Ha, Hb), *batch, M, N], head h of the result from head
    h // (Ha / Hb) of b (or of a). Equal heads: plain a @ b. (One head against many is a group too:
    matmul's broadcasting would copy the one-head side once per head.)

    More query heads (Ha = G Hb, e.g. Q K^T, P V): a's groups fold into its rows, b is read in place.
    More on the right (Hb = G Ha, e.g. K^T (decay o V) with a decay per query head): b's groups fold
    into its columns; a is read in place."""
    ha, hb = a.shape[1], b.shape[1]
    if ha == hb:
        return a @ b
    if ha % hb == 0:
        B = max(a.shape[0], b.shape[0])
        return _unfold_rows(_fold_rows(a.expand(B, *a.shape[1:]), hb) @ b, ha // hb)
    if hb % ha == 0:
        return grouped_matmul(b.transpose(-1, -2), a.transpose(-1, -2)).transpose(-1, -2)
    raise ValueError(f"grouped heads: {ha} and {hb} heads, neither dividing the other")


def heads_product(x: torch.Tensor, f: torch.Tensor, dim: int, op=torch.mul) -> torch.Tensor:
    """x * f (or op(x, f), any broadcasting binary op) broadcast from the right, where the heads (at
    `dim`, negative: counted from the right in both) may differ by a group: the side with fewer heads is
    repeated across each group by broadcasting (a view), so the product, of the larger heads, is the
    only new tensor. For a factor per query head applied to key-side rows (decays, gates, Toeplitz
    filters) or query-side rows against key-side sums: nothing of the key side is copied first."""
    assert dim < 0, "heads are counted from the right"
    hx, hf = x.shape[dim], f.shape[dim]
    if hx == hf or hx == 1 or hf == 1:
        return op(x, f)
    if hx % hf and hf % hx:
        raise ValueError(f"grouped heads: {hx} and {hf} heads, neither dividing the other")
    small = min(hx, hf)
    split = lambda t: t.unflatten(dim, (small, t.shape[dim] // small))  # noqa: E731
    return op(split(x), split(f)).flatten(dim - 1, dim)

