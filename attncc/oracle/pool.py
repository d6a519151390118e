"""ContextPool in float64 by its dense pooling matrix: the reference of attncc/rt/pool.py."""
from __future__ import annotations

import torch

from ..lang.pool import BIAS, HEAD, PoolInfo


def gate_and_width(k, head, bias, sigma: float):
    """The gate m_j in (0, 1) and width sigma_j in (0, S) of every key token, float64."""
    logits = torch.einsum("bhnd,cd->bhnc", k, head) + bias
    return logits[..., 0].sigmoid(), sigma * logits[..., 1].sigmoid()


def dense_pooling_matrix(k, head, bias, pool: PoolInfo) -> torch.Tensor:
    """P [B, H, N, N] in float64: P_ij = g_ij m_j / sum_j g_ij m_j, from all pairwise positions."""
    k = k.double()
    m, s = gate_and_width(k, head.double(), bias.double(), pool.sigma)
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
    if "v" not in pool.targets:
        return P
    heads = P.shape[1] // M.shape[1]  # grouped-query attention: query head h reads M of key/value head h // heads
    return P @ M.to(P.dtype).repeat_interleave(heads, 1)
