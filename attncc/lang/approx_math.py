"""What defines each declared approximation beyond its formula: MRA's block selection, LARA's proposals
and importance weights, RA's samples, and the seeded draws they use.

The algorithms (attncc/rt/approx.py) and the float64 oracle (attncc/oracle/approx.py) both apply them:
the oracle is exact for the same draw and the same selection, so these are part of the meaning, not of
an implementation. Random numbers come from a CPU generator seeded by (seed, draw).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .features import seeded_generator

PRIOR = 5e3  # added to the low-resolution logits of blocks MRA always keeps (first rows/columns, band)
MRA_EPS = 1e-6  # MRA's normalizer guard, relative to the row's largest term (which is >= 1)


def normal(shape: tuple, seed: int, draw: int, device) -> torch.Tensor:
    return torch.randn(shape, generator=seeded_generator(seed, draw), dtype=torch.float64).to(device)


def uniform(shape: tuple, seed: int, draw: int, device) -> torch.Tensor:
    return torch.rand(shape, generator=seeded_generator(seed, draw), dtype=torch.float64).to(device)


def log_xi(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """log xi(x, w) = w.x - |x|^2 / 2 for rows x [..., n, d] (already scaled) and w [..., c, d]: [..., c, n]."""
    return w @ x.transpose(-1, -2) - 0.5 * (x * x).sum(-1).unsqueeze(-2)


def block_sums(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sums [..., nb, d] over blocks of `block` tokens, token counts [nb]); the last block may be partial."""
    n = x.shape[-2]
    nb = -(-n // block)
    padded = F.pad(x, (0, 0, 0, nb * block - n))
    counts = torch.full((nb,), float(block), dtype=x.dtype, device=x.device)
    counts[-1] = n - (nb - 1) * block
    return padded.unflatten(-2, (nb, block)).sum(-2), counts


def query_heads_of(x: torch.Tensor, heads: int) -> torch.Tensor:
    """Small per-key/value-head summaries x [B, Hkv, n, d] (block means, landmarks: n far below N) for
    each of `heads` query heads: query head h reads key/value head h // (heads / Hkv)."""
    return x if x.shape[1] == heads else x.repeat_interleave(heads // x.shape[1], 1)


def head_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, Hx, n, *rest] read at index [B, H, *k] (each in 0 .. n-1) for H query heads, query head h
    reading head h // (H / Hx) of x: [B, H, *k, *rest], gathered without first expanding x to H heads."""
    B, Hx, n = x.shape[:3]
    H = index.shape[1]
    head = (torch.arange(H, device=x.device) // (H // Hx)).view(1, H, *([1] * (index.dim() - 2)))
    return x.flatten(1, 2)[torch.arange(B, device=x.device).view(B, *([1] * (index.dim() - 1))), head * n + index]


def mra_low_resolution(q: torch.Tensor, k: torch.Tensor, block: int) -> torch.Tensor:
    """L[I, J] = s mean_{i in I} q_i . mean_{j in J} k_j: the low-resolution logits (k's block means
    per query head under grouped-query attention)."""
    (qs, qn), (ks, kn) = block_sums(q, block), block_sums(k, block)
    ks = query_heads_of(ks / kn[:, None], q.shape[1])
    return (qs / qn[:, None]) @ ks.transpose(-1, -2) * q.shape[-1] ** -0.5


def mra_selection(q, k, *, block: int, blocks_per_row: int, first: int,
                  diagonal: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices [B, H, K] into the nq x nk blocks (I * nk + J) that get exact scores, the float64
    low-resolution logits L [B, H, nq, nk] they were chosen from).

    Per (batch, head): the K = blocks_per_row * nq largest of L - rowmax(L) + priors, where the
    priors add PRIOR to the first `first` block rows and columns and to the band |I - J| <= diagonal // 2.
    Computed in float64 from the block means, so every backend and the reference select alike."""
    low = mra_low_resolution(q.double(), k.double(), block)
    nq, nk = low.shape[-2:]
    rows = torch.arange(nq, device=low.device).view(-1, 1)
    cols = torch.arange(nk, device=low.device).view(1, -1)
    prior = torch.zeros(nq, nk, dtype=low.dtype, device=low.device)
    if diagonal > 0:
        prior += PRIOR * ((rows - cols).abs() <= diagonal // 2)
    if first > 0:
        prior += PRIOR * ((rows < first) | (cols < first))
    keyed = (low - low.amax(-1, keepdim=True) + prior).flatten(-2)
    return keyed.topk(min(blocks_per_row * nq, nq * nk), dim=-1, sorted=True).indices, low


def landmarks(x: torch.Tensor, count: int) -> torch.Tensor:
    """Segment means of the rows of x [B, H, n, d]: adaptive average pooling to `count` landmarks."""
    B, H, n, d = x.shape
    return F.adaptive_avg_pool1d(x.reshape(B * H, n, d).transpose(1, 2), count).transpose(1, 2).reshape(B, H, count, d)


def lara_count(landmarks: int, Nq: int, N: int) -> int:
    return max(1, min(landmarks, Nq, N))


def lara_noise(q, k, *, landmarks: int, seed: int, draw: int) -> torch.Tensor:
    """Training draws w_c ~ N(mu_c, I): the noise [B, H, C, D] of draw `draw`."""
    B, H, Nq, D = q.shape
    return normal((B, H, lara_count(landmarks, Nq, k.shape[2]), D), seed, draw, q.device)


def lara_proposals(q, k, count: int, noise):
    """(scaled q', k', query landmarks q_bar', proposal means mu_c = q_bar'_c + k_bar'_c, samples w_c)."""
    scale = q.shape[-1] ** -0.25
    qs, ks = q * scale, k * scale
    q_bar = landmarks(qs, count)
    mu = q_bar + query_heads_of(landmarks(ks, count), q.shape[1])
    w = mu if noise is None else mu + noise.to(mu.dtype)
    return qs, ks, q_bar, mu, w


def lara_log_weights(qs, q_bar, mu, w, log_pk, alpha: float) -> torch.Tensor:
    """log of the self-normalized importance weights [B, H, Nq, C] of sample w_c for query n:
    log alpha_nc + log(xi(q'_n, w_c) sum_m xi(k'_m, w_c)) - log xi(mu_c, w_c), with the multiple
    importance weights alpha_nc = BH_c + alpha (t_cn - mean_c t_cn), BH_c = xi(mu_c, w_c) / sum_c'
    xi(mu_c', w_c) (balance heuristic), t_cn = softmax over queries n of q_bar'_c . q'_n (LARA's 'mis-opt')."""
    log_proposal = log_xi(mu, w)  # [B, H, C, C]: [c, c'] = log xi(mu_c', w_c)
    own = torch.diagonal(log_proposal, dim1=-2, dim2=-1)  # log xi(mu_c, w_c)
    balance = torch.exp(own - torch.logsumexp(log_proposal, -1))
    t = torch.softmax(q_bar @ qs.transpose(-1, -2), -1)  # [B, H, C, Nq]
    alpha_nc = (balance[..., None] + alpha * (t - t.mean(-2, keepdim=True))).transpose(-1, -2)
    log_true = log_xi(qs, w).transpose(-1, -2) + torch.logsumexp(log_pk, -1)[..., None, :]
    return torch.log(alpha_nc.clamp(min=1e-8)) + log_true - own[..., None, :]


def ra_noise(q, k, *, samples: int, seed: int, draw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(u [B, H, Nq, S] uniform: picks the mixture component, eps [B, H, Nq, S, D] standard normal)."""
    B, H, Nq, D = q.shape
    return (uniform((B, H, Nq, samples), seed, 2 * draw, q.device),
            normal((B, H, Nq, samples, D), seed, 2 * draw + 1, q.device))


def ra_samples(qs, ks, probs, u, eps) -> torch.Tensor:
    """w_ns = q'_n + k'_m + eps_ns with m ~ softmax_n by inverse CDF of u_ns: [.., Nq, S, D]."""
    cdf = probs.cumsum(-1)
    comp = torch.searchsorted(cdf.contiguous(), u.to(cdf.dtype).contiguous()).clamp(max=ks.shape[2] - 1)
    return qs.unsqueeze(3) + head_rows(ks, comp) + eps.to(qs.dtype)  # ks may have fewer heads (grouped)
