"""Efficient algorithms of the declared softmax approximations (approx.py), in torch ops.

Notation per head: s = D^-1/2, x' = x D^-1/4 (so q'.k' = s q.k), xi(x, w) = exp(w.x' - |x'|^2 / 2),
the positive random feature with E_{w ~ N(0, I)}[xi(q, w) xi(k, w)] = exp(s q.k).
Random numbers come from a CPU generator seeded by (seed, draw) (features.seeded_generator), so a
draw is the same on every device; the dense reference (approx_reference.py) reads the same draw.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .features import seeded_generator
from .torch_algorithms import compute_dtype

PRIOR = 5e3  # added to the low-resolution logits of blocks MRA always keeps (first rows/columns, band)
MRA_EPS = 1e-6  # MRA's normalizer guard, relative to the row's largest term (which is >= 1)
RA_BUDGET = 1 << 23  # RA: elements of the [B, H, queries, samples, N] scores held at once


def normal(shape: tuple, seed: int, draw: int, device) -> torch.Tensor:
    return torch.randn(shape, generator=seeded_generator(seed, draw), dtype=torch.float64).to(device)


def uniform(shape: tuple, seed: int, draw: int, device) -> torch.Tensor:
    return torch.rand(shape, generator=seeded_generator(seed, draw), dtype=torch.float64).to(device)


def log_xi(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """log xi(x, w) = w.x - |x|^2 / 2 for rows x [..., n, d] (already scaled) and w [..., c, d]: [..., c, n]."""
    return w @ x.transpose(-1, -2) - 0.5 * (x * x).sum(-1).unsqueeze(-2)


# ---------------------------------------------------------------------- MRA-2
def block_sums(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sums [..., nb, d] over blocks of `block` tokens, token counts [nb]); the last block may be partial."""
    n = x.shape[-2]
    nb = -(-n // block)
    padded = F.pad(x, (0, 0, 0, nb * block - n))
    counts = torch.full((nb,), float(block), dtype=x.dtype, device=x.device)
    counts[-1] = n - (nb - 1) * block
    return padded.unflatten(-2, (nb, block)).sum(-2), counts


def mra_low_resolution(q: torch.Tensor, k: torch.Tensor, block: int) -> torch.Tensor:
    """L[I, J] = s mean_{i in I} q_i . mean_{j in J} k_j: the low-resolution logits."""
    (qs, qn), (ks, kn) = block_sums(q, block), block_sums(k, block)
    return (qs / qn[:, None]) @ (ks / kn[:, None]).transpose(-1, -2) * q.shape[-1] ** -0.5


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
    tiles = lambda x, n, at: torch.gather(F.pad(x, (0, 0, 0, n * block - x.shape[2])).unflatten(2, (n, block)), 2,
                                          at[..., None, None].expand(-1, -1, -1, block, x.shape[-1]))
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
    return low_top, w @ v_sums, w @ counts


def mra_csr(idx: torch.Tensor, nq: int, nk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The selection as CSR per (batch, head): row_ptr [B * H, nq + 1] and block columns [B * H, K], int32."""
    flat = idx.flatten(0, 1).sort(-1).values
    rows = (flat // nk).contiguous()
    bounds = torch.arange(nq + 1, device=idx.device, dtype=rows.dtype).expand(rows.shape[0], -1).contiguous()
    return torch.searchsorted(rows, bounds).int(), (flat % nk).int()


# ---------------------------------------------------------------------- LARA
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
    mu = q_bar + landmarks(ks, count)
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


def lara_attention(q, k, v, *, landmarks: int, alpha: float, noise=None):
    """LARA: out_n = sum_c softmax_c(log weights)_nc f(w_c), f(w) = sum_m xi(k_m, w) v_m / sum_m xi(k_m, w).
    O(N C (D + E) + C^2 D); eval (noise None) uses the proposal means w_c = mu_c: deterministic."""
    dtype = compute_dtype(q)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    count = lara_count(landmarks, q.shape[2], k.shape[2])
    qs, ks, q_bar, mu, w = lara_proposals(q, k, count, noise)
    log_pk = log_xi(ks, w)  # [B, H, C, N]
    values = torch.softmax(log_pk, -1) @ v  # f(w_c): [B, H, C, E]
    return torch.softmax(lara_log_weights(qs, q_bar, mu, w, log_pk, alpha), -1) @ values


# ---------------------------------------------------------------------- RA
def ra_noise(q, k, *, samples: int, seed: int, draw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(u [B, H, Nq, S] uniform: picks the mixture component, eps [B, H, Nq, S, D] standard normal)."""
    B, H, Nq, D = q.shape
    return (uniform((B, H, Nq, samples), seed, 2 * draw, q.device),
            normal((B, H, Nq, samples, D), seed, 2 * draw + 1, q.device))


def ra_samples(qs, ks, probs, u, eps) -> torch.Tensor:
    """w_ns = q'_n + k'_m + eps_ns with m ~ softmax_n by inverse CDF of u_ns: [.., Nq, S, D]."""
    cdf = probs.cumsum(-1)
    comp = torch.searchsorted(cdf.contiguous(), u.to(cdf.dtype).contiguous()).clamp(max=ks.shape[2] - 1)
    picked = torch.gather(ks.unsqueeze(2).expand(-1, -1, comp.shape[2], -1, -1), 3,
                          comp[..., None].expand(-1, -1, -1, -1, ks.shape[-1]))
    return qs.unsqueeze(3) + picked + eps.to(qs.dtype)


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
        probs = torch.softmax(qs[:, :, sl] @ ks.transpose(-1, -2), -1)
        w = ra_samples(qs[:, :, sl], ks, probs, u[:, :, sl], eps[:, :, sl])  # [B, H, c, S, D]
        log_pk = w @ ks.unsqueeze(2).transpose(-1, -2) - 0.5 * (ks * ks).sum(-1)[:, :, None, None, :]
        outs.append((torch.softmax(log_pk, -1) @ v.unsqueeze(2)).mean(3))
    return torch.cat(outs, 2)
