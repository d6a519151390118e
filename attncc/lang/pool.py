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
