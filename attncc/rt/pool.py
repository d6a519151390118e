"""ContextPool's banded pooling of k and v (attncc/lang/pool.py states the mechanism), in torch ops."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


# log(d^2 / (2 sigma^2)) past which exp(-d^2 / (2 sigma^2)) is 0 in float64 already (e^-745): capped
# there, the value is unchanged and exp never overflows (nor its gradient, inf * 0)
LOG_EXPONENT_CAP = 16.0


def gating_head(k: torch.Tensor, head: torch.Tensor, bias: torch.Tensor, sigma: float):
    """(m [B, H, N], log sigma [B, H, N]) from the raw key rows: the gate m_j and the log of the width
    sigma_j = sigma * sigmoid(.) of token j (in log space: sigma = 1e-30 squared underflows float32)."""
    s = k @ head.to(k.dtype).T + bias.to(k.dtype)
    return torch.sigmoid(s[..., 0]), math.log(sigma) + F.logsigmoid(s[..., 1])


def offset_weights(d2: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """g = exp(-d2 / (2 sigma^2)) = exp(-exp(log d2 - 2 log sigma - log 2)) for squared offsets d2 [2R + 1, 1]
    and widths [B, H, 1, N]: finite for any width (d2 = 0 gives 1, never 0 / 0)."""
    log_ratio = torch.log(d2.to(log_sigma.dtype)) - 2 * log_sigma - math.log(2)
    return torch.exp(-torch.exp(log_ratio.clamp(max=LOG_EXPONENT_CAP)))


def context_pool(k, v, head, bias, *, sigma: float, width: int, targets: tuple[str, ...]):
    """Banded ContextPool: token i reads token j = i + dr w + dc (2-D; j = i + dc in 1-D) for the
    offsets of the box that stay on the grid, one grid row offset dr at a time (all dc at once).
    O(N (2R + 1)^(1 or 2) d); never N x N."""
    dtype = torch.float64 if k.dtype == torch.float64 else torch.float32
    N, R = k.shape[2], math.ceil(4 * sigma)
    m, s = gating_head(k.to(dtype), head, bias, sigma)
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
        g = offset_weights(dr * dr + dc * dc, s.unsqueeze(2)) * m[..., jj] * ok  # [B, H, 2R + 1, N]
        den = den + g.sum(2)
        for t in targets:
            num[t] = num[t] + torch.einsum("bhcn,bhcnd->bhnd", g, xs[t][:, :, jj])
    den = torch.where(den == 0, torch.ones_like(den), den).unsqueeze(-1)  # m underflowed to 0
    pooled = {t: (num[t] / den).to({"k": k, "v": v}[t].dtype) for t in targets}
    return pooled.get("k", k), pooled.get("v", v)
