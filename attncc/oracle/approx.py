"""Dense float64 evaluation of each declared approximation: the matrix W [B, H, Nq, N] it applies,
out = W V. Written from the formulas, one query-key entry at a time (no blocks, no chunks): the
efficient algorithms (attncc/rt/approx.py) must equal it. Random draws and the MRA block selection
are shared with them: they are part of the definition, not of the algorithm.
"""
from __future__ import annotations

import torch

from ..lang.approx_math import (MRA_EPS, lara_count, lara_log_weights, lara_proposals, log_xi, mra_selection,
                               ra_samples)


def mra_weights(q, k, *, block: int, blocks_per_row: int, mode: str, first: int, diagonal: int) -> torch.Tensor:
    """A[i, j] = e^(s q_i.k_j - m_i) on selected blocks, e^(L_IJ - m_i) elsewhere (full) or 0 (sparse),
    with L_IJ = s mean_I(q) . mean_J(k) and m_i the largest exponent of row i; W = A / (A 1 + eps)."""
    q, k = q.double(), k.double()
    B, H, Nq, D = q.shape
    N = k.shape[2]
    idx, _ = mra_selection(q, k, block=block, blocks_per_row=blocks_per_row, first=first, diagonal=diagonal)
    nq, nk = -(-Nq // block), -(-N // block)
    selected = torch.zeros(B, H, nq * nk, dtype=torch.bool, device=q.device).scatter(2, idx, True).view(B, H, nq, nk)
    qi = torch.arange(Nq, device=q.device) // block
    kj = torch.arange(N, device=q.device) // block
    on = selected[:, :, qi][:, :, :, kj]  # per token pair
    exact = q @ k.transpose(-1, -2) * D ** -0.5
    q_means = torch.stack([q[:, :, qi == b].mean(2) for b in range(nq)], 2)
    k_means = torch.stack([k[:, :, kj == b].mean(2) for b in range(nk)], 2)
    low = (q_means @ k_means.transpose(-1, -2) * D ** -0.5)[:, :, qi][:, :, :, kj]
    rest = low if mode == "full" else torch.full_like(low, float("-inf"))
    exponent = torch.where(on, exact, rest)
    top = exponent.amax(-1, keepdim=True)  # -inf for a sparse row with no selected block: it gets 0
    a = torch.exp(exponent - torch.where(torch.isfinite(top), top, torch.zeros_like(top)))
    return a / (a.sum(-1, keepdim=True) + MRA_EPS)


def lara_weights(q, k, *, landmarks: int, alpha: float, noise=None) -> torch.Tensor:
    """W[n, m] = sum_c r_nc xi(k_m, w_c) / sum_m' xi(k_m', w_c), r_n = softmax_c of the log importance weights."""
    q, k = q.double(), k.double()
    count = lara_count(landmarks, q.shape[2], k.shape[2])
    qs, ks, q_bar, mu, w = lara_proposals(q, k, count, None if noise is None else noise.double())
    log_pk = log_xi(ks, w)
    weights = torch.softmax(lara_log_weights(qs, q_bar, mu, w, log_pk, alpha), -1)
    per_sample = torch.exp(log_pk - log_pk.amax(-1, keepdim=True))
    return weights @ (per_sample / per_sample.sum(-1, keepdim=True))


def ra_weights(q, k, *, noise) -> torch.Tensor:
    """W[n, m] = mean_s xi(k_m, w_ns) / sum_m' xi(k_m', w_ns), w_ns drawn from the softmax mixture of query n."""
    q, k = q.double(), k.double()
    u, eps = noise
    scale = q.shape[-1] ** -0.25
    qs, ks = q * scale, k * scale
    probs = torch.exp(qs @ ks.transpose(-1, -2))
    probs = probs / probs.sum(-1, keepdim=True)
    w = ra_samples(qs, ks, probs, u.double(), eps.double())  # [B, H, Nq, S, D]
    logits = torch.einsum("bhnsd,bhmd->bhnsm", w, ks) - 0.5 * (ks * ks).sum(-1)[:, :, None, None, :]
    e = torch.exp(logits - logits.amax(-1, keepdim=True))
    return (e / e.sum(-1, keepdim=True)).mean(3)
