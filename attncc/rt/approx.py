"""Efficient algorithms of the declared softmax approximations (attncc/frontend/approx.py), in torch ops.

Notation per head: s = D^-1/2, x' = x D^-1/4 (so q'.k' = s q.k), xi(x, w) = exp(w.x' - |x'|^2 / 2),
the positive random feature with E_{w ~ N(0, I)}[xi(q, w) xi(k, w)] = exp(s q.k).
Random numbers come from a CPU generator seeded by (seed, draw) (attncc.lang.features.seeded_generator), so a
draw is the same on every device; the oracle (attncc/oracle/approx.py) reads the same draw.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..lang.approx_math import (MRA_EPS, block_sums, head_rows, lara_count, lara_log_weights, lara_proposals,
                               mra_selection, ra_samples)
from .attention import compute_dtype
from .heads import grouped_matmul, heads_product

RA_BUDGET = 1 << 23  # RA: elements of the [B, H, queries, samples, N] scores held at once


# ---------------------------------------------------------------------- MRA-2


def mra_attention(q, k, v, *, block: int, blocks_per_row: int, mode: str, first: int, diagonal: int):
    """MRA-2: out_i = (sum_{J sel} sum_{j in J} e^(s q_i.k_j - m_i) v_j + [full] sum_{J unsel} e^(L_IJ - m_i)
    sum_{j in J} v_j) / (the same with v = 1, + MRA_EPS); m_i is the largest exponent of row i.

    The selected blocks (K per head) are gathered into [K, block, block] score tiles: O(N blocks_per_row
    block d) work and memory; the low-resolution part is an nq x nk product. Never N x N."""
    B, H, Nq, D = q.shape
    N, E = k.shape[2], v.shape[-1]
    dtype = compute_dtype(q)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    idx, low = mra_selection(q, k, block=block, blocks_per_row=blocks_per_row, first=first, diagonal=diagonal)
    nq, nk = -(-Nq // block), -(-N // block)
    rows, cols = idx // nk, idx % nk  # [B, H, K]
    # the selected blocks of x (per query head; k, v read at each query head's key/value head)
    tiles = lambda x, n, at: head_rows(F.pad(x, (0, 0, 0, n * block - x.shape[2])).unflatten(2, (n, block)), at)
    scores = tiles(q, nq, rows) @ tiles(k, nk, cols).transpose(-1, -2) * D ** -0.5  # [B, H, K, b, b]
    key_pos = cols[..., None] * block + torch.arange(block, device=q.device)
    scores = scores.masked_fill((key_pos >= N)[..., None, :], float("-inf"))
    row_index = rows[..., None].expand(-1, -1, -1, block)
    top = torch.full((B, H, nq, block), float("-inf"), dtype=dtype, device=q.device)
    top = top.scatter_reduce(2, row_index, scores.amax(-1), "amax")
    if mode == "full":
        low_top, low_num, low_den = mra_low_part(low.to(dtype), v, idx, block)
        top = torch.maximum(top, low_top[..., None])
    p = torch.exp(scores - torch.gather(top, 2, row_index)[..., None])
    num = torch.zeros(B, H, nq, block, E, dtype=dtype, device=q.device)
    num = num.scatter_add(2, row_index[..., None].expand(-1, -1, -1, -1, E), p @ tiles(v, nk, cols))
    den = torch.zeros(B, H, nq, block, dtype=dtype, device=q.device).scatter_add(2, row_index, p.sum(-1))
    if mode == "full":
        shift = torch.where(torch.isfinite(low_top)[..., None], torch.exp(low_top[..., None] - top),
                            torch.zeros_like(top))  # [B, H, nq, b]
        num = num + shift[..., None] * low_num[:, :, :, None, :]
        den = den + shift * low_den[..., None]
    out = num / (den[..., None] + MRA_EPS)
    return out.flatten(2, 3)[:, :, :Nq]


def mra_low_part(low, v, idx, block: int):
    """The unselected blocks of each query block I, relative to their largest logit l_I = max_{J unsel} L_IJ
    (low: the low-resolution logits L at the computation's precision):
    (l_I [B, H, nq] (-inf if every block is selected), sum_J e^(L_IJ - l_I) sum_{j in J} v_j [B, H, nq, E],
    sum_J e^(L_IJ - l_I) |J| [B, H, nq])."""
    B, H, nq, nk = low.shape
    selected = torch.zeros(B, H, nq * nk, dtype=torch.bool, device=low.device).scatter(2, idx, True)
    low = low.masked_fill(selected.view(B, H, nq, nk), float("-inf"))
    low_top = low.amax(-1)
    base = torch.where(torch.isfinite(low_top), low_top, torch.zeros_like(low_top))
    w = torch.where(torch.isfinite(low), torch.exp(low - base[..., None]), torch.zeros_like(low))
    v_sums, counts = block_sums(v, block)
    return low_top, grouped_matmul(w, v_sums), w @ counts


def mra_csr(idx: torch.Tensor, nq: int, nk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The selection as CSR per (batch, head): row_ptr [B * H, nq + 1] and block columns [B * H, K], int32."""
    flat = idx.flatten(0, 1).sort(-1).values
    rows = (flat // nk).contiguous()
    bounds = torch.arange(nq + 1, device=idx.device, dtype=rows.dtype).expand(rows.shape[0], -1).contiguous()
    return torch.searchsorted(rows, bounds).int(), (flat % nk).int()


# ---------------------------------------------------------------------- LARA


def lara_attention(q, k, v, *, landmarks: int, alpha: float, noise=None):
    """LARA: out_n = sum_c softmax_c(log weights)_nc f(w_c), f(w) = sum_m xi(k_m, w) v_m / sum_m xi(k_m, w).
    O(N C (D + E) + C^2 D); eval (noise None) uses the proposal means w_c = mu_c: deterministic."""
    dtype = compute_dtype(q)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    count = lara_count(landmarks, q.shape[2], k.shape[2])
    qs, ks, q_bar, mu, w = lara_proposals(q, k, count, noise)
    # log xi(k_m, w_c) [B, H, C, N]: k, v per key/value head (grouped-query attention), w per query head
    log_pk = heads_product(grouped_matmul(w, ks.transpose(-1, -2)), 0.5 * (ks * ks).sum(-1).unsqueeze(-2), -3,
                           torch.sub)
    values = grouped_matmul(torch.softmax(log_pk, -1), v)  # f(w_c): [B, H, C, E]
    return torch.softmax(lara_log_weights(qs, q_bar, mu, w, log_pk, alpha), -1) @ values


# ---------------------------------------------------------------------- RA


def ra_attention(q, k, v, *, noise):
    """RA: out_n = mean_s f(w_ns), w_ns ~ p_n(w) = sum_m softmax(s q_n.k)_m N(w; q'_n + k'_m, I): unbiased
    for softmax attention (E f(w) = softmax(s q_n K^T) V), quadratic; queries in chunks."""
    dtype = compute_dtype(q)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    u, eps = noise
    scale = q.shape[-1] ** -0.25
    qs, ks = q * scale, k * scale
    B, H, Nq, _ = q.shape
    chunk = max(1, RA_BUDGET // (B * H * u.shape[-1] * k.shape[2]))
    outs = []
    for q0 in range(0, Nq, chunk):
        sl = slice(q0, q0 + chunk)
        probs = torch.softmax(grouped_matmul(qs[:, :, sl], ks.transpose(-1, -2)), -1)
        w = ra_samples(qs[:, :, sl], ks, probs, u[:, :, sl], eps[:, :, sl])  # [B, H, c, S, D]
        log_pk = heads_product(grouped_matmul(w, ks.unsqueeze(2).transpose(-1, -2)),
                               0.5 * (ks * ks).sum(-1)[:, :, None, None, :], -4, torch.sub)
        outs.append(grouped_matmul(torch.softmax(log_pk, -1), v.unsqueeze(2)).mean(3))
    return torch.cat(outs, 2)
