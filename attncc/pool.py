"""ContextPool (Huang, Talbott, Jaitly, Susskind: "Efficient Representation Learning via Adaptive
Context Pooling", ICML 2022): keys and/or values pooled with learned, per-token Gaussian supports
before the spec's ordinary attention.

`pool k, v = context(sigma = S, width = w)`, per batch element and head, from the raw key rows k_j:

    [s_j, t_j] = pool_head k_j + pool_bias        pool_head [2, D], pool_bias [2]: learned tables
    m_j     = sigmoid(s_j)                         pooling weight of token j, in (0, 1)
    sigma_i = S sigmoid(t_i)                       support of token i, in (0, S)
    p_i     = i (width = 0)  or  (i // w, i % w)   1-D or 2-D (row-major grid of w columns) positions
    g_ij    = exp(-|p_i - p_j|^2 / (2 sigma_i^2))  if |p_i - p_j|_inf <= R = ceil(4 S), else 0
    y_i     = sum_j g_ij m_j x_j / sum_j g_ij m_j  for x = k and/or v (g_ii m_i > 0: never 0 / 0)

The pooled rows replace k and/or v; the spec's attention then runs as written. The lowering visits
only the offsets inside the truncation box: O(N R d) (1-D), O(N R^2 d) (2-D); never N x N.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

POOLINGS = {"context": {"sigma": 2.0, "width": 0}}
HEAD, BIAS = "pool_head", "pool_bias"  # the learned tables a `pool` statement adds to the module


@dataclass(frozen=True)
class PoolInfo:
    targets: tuple[str, ...]  # "k", "v" or both
    sigma: float  # S, the largest support (tokens)
    width: int  # grid columns for 2-D positions; 0: 1-D

    @property
    def radius(self) -> int:
        """R = ceil(4 S): the truncation of every Gaussian, in tokens (or grid steps)."""
        return math.ceil(4 * self.sigma)

    def describe(self) -> str:
        where = f"2-D grid of {self.width} columns" if self.width else "1-D"
        return f"context pooling of {', '.join(self.targets)}: sigma <= {self.sigma}, {where}, truncated at {self.radius}"


def _head(k: torch.Tensor, head: torch.Tensor, bias: torch.Tensor, sigma: float):
    """(m [B, H, N], sigma [B, H, N]) from the raw key rows."""
    s = k @ head.to(k.dtype).T + bias.to(k.dtype)
    return torch.sigmoid(s[..., 0]), sigma * torch.sigmoid(s[..., 1])


def context_pool(k, v, head, bias, *, sigma: float, width: int, targets: tuple[str, ...]):
    """Banded ContextPool: token i reads token j = i + dr w + dc (2-D; j = i + dc in 1-D) for the
    offsets of the box that stay on the grid, one grid row offset dr at a time (all dc at once).
    O(N (2R + 1)^(1 or 2) d); never N x N."""
    dtype = torch.float64 if k.dtype == torch.float64 else torch.float32
    N, R = k.shape[2], math.ceil(4 * sigma)
    m, s = _head(k.to(dtype), head, bias, sigma)
    pos = torch.arange(N, device=k.device)
    row, col = (pos // width, pos % width) if width else (torch.zeros_like(pos), pos)
    dc = torch.arange(-R, R + 1, device=k.device).view(-1, 1)  # [2R + 1, 1]
    xs = {"k": k.to(dtype), "v": v.to(dtype)}
    num = {t: torch.zeros_like(xs[t]) for t in targets}
    den = torch.zeros_like(m)
    for dr in (range(-R, R + 1) if width else [0]):
        j = pos + dr * width + dc if width else pos + dc  # [2R + 1, N]
        ok = (j >= 0) & (j < N) & (col + dc >= 0) & (col + dc < (width or N)) & (row + dr >= 0)
        jj = j.clamp(0, N - 1)
        g = torch.exp(-(dr * dr + dc * dc) / (2 * s.unsqueeze(2) ** 2)) * m[..., jj] * ok  # [B, H, 2R + 1, N]
        den = den + g.sum(2)
        for t in targets:
            num[t] = num[t] + torch.einsum("bhcn,bhcnd->bhnd", g, xs[t][:, :, jj])
    den = torch.where(den == 0, torch.ones_like(den), den).unsqueeze(-1)  # m underflowed to 0
    pooled = {t: (num[t] / den).to({"k": k, "v": v}[t].dtype) for t in targets}
    return pooled.get("k", k), pooled.get("v", v)


def dense_pooling_matrix(k, head, bias, pool: PoolInfo) -> torch.Tensor:
    """P [B, H, N, N] in float64: P_ij = g_ij m_j / sum_j g_ij m_j, from all pairwise positions."""
    k = k.double()
    m, s = _head(k, head.double(), bias.double(), pool.sigma)
    N = k.shape[2]
    t = torch.arange(N, dtype=torch.float64)
    p = torch.stack([t // pool.width, t % pool.width], -1) if pool.width else t.view(-1, 1)
    diff = p.view(N, 1, -1) - p.view(1, N, -1)
    inside = diff.abs().amax(-1) <= pool.radius
    g = torch.exp(-diff.square().sum(-1) / (2 * s.unsqueeze(-1) ** 2)) * inside
    w = g * m.unsqueeze(-2)
    z = w.sum(-1, keepdim=True)
    return w / torch.where(z == 0, torch.ones_like(z), z)


def dense_pool(pool: PoolInfo, k, v, params: dict):
    """(k, v) pooled by the dense matrix, float64 (the reference)."""
    P = dense_pooling_matrix(k, params[HEAD], params[BIAS], pool)
    pooled = {"k": P @ k.double(), "v": P @ v.double()}
    return (pooled["k"] if "k" in pool.targets else k), (pooled["v"] if "v" in pool.targets else v)


def tap_through_pool(pool: PoolInfo, k, params: dict, probabilities):
    """The tap of a pooled spec: `probabilities(k')` is P over the (pooled) keys k'; with pooled
    values out = P M v, so the matrix that applies to the raw v is P M (M the pooling matrix)."""
    M = dense_pooling_matrix(k, params[HEAD], params[BIAS], pool).to(k.dtype)
    P = probabilities(M @ k if "k" in pool.targets else k)
    return P @ M.to(P.dtype) if "v" in pool.targets else P
