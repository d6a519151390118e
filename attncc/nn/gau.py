"""GAU, the gated attention unit of FLASH (Hua, Dai, Liu, Le: "Transformer Quality in Linear Time",
ICML 2022), as a layer over a compiled attention spec.

For x [B, n, dim], with e = expansion * dim and a shared dimension s:

    U = SiLU(x W_u) [n, e]    V = SiLU(x W_v) [n, e]    Z = SiLU(x W_z) [n, s]
    Q = Z * gamma_q + beta_q    K = Z * gamma_k + beta_k          (per-dim scale and offset of Z)
    O = (U o A(Q, K, V)) W_o   [n, dim]

A is the compiled spec called with one head (q = Q, k = K, v = V); by default FLASH's causal mixed
chunk attention (`FLASH_SPEC`, the same as examples/flash.attn), which the compiler lowers to
chunks of c plus prefix-summed chunk states. Note: the paper gives the linear (cross-chunk) part
its own scale and offset of Z; a spec sees one q and one k, so here both parts share Q and K, and
the linear part's learned per-head scale `a` is the spec's.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..api import compile as compile_spec

FLASH_SPEC = """
attention flash {
    size c = 256
    param b[2 * c - 1] = 0
    param a[H] = 1
    weight(i, j) = where(i // c == j // c, max(dot(q[i], k[j]) / c + b[i - j + c - 1], 0) ** 2, 0)
                 + where(j // c < i // c, a[h] * dot(q[i], k[j]) / N, 0)
    mask(i, j) = j <= i
    normalize none
}
"""


class GAU(nn.Module):
    """Gated attention unit: `GAU(dim)` maps [B, n, dim] to [B, n, dim].

    spec: a spec (text or path) for A, FLASH_SPEC by default; sizes (e.g. c=128) and backend go to it."""

    def __init__(self, dim: int, spec: str | Path = FLASH_SPEC, expansion: int = 2, shared_dim: int = 128,
                 backend: str = "auto", **sizes):
        super().__init__()
        hidden = expansion * dim
        self.dim, self.hidden, self.shared_dim = dim, hidden, shared_dim
        self.to_uv = nn.Linear(dim, 2 * hidden)
        self.to_z = nn.Linear(dim, shared_dim)
        self.gamma = nn.Parameter(torch.randn(2, shared_dim) * 0.02 + 1)  # rows: Q, K
        self.beta = nn.Parameter(torch.zeros(2, shared_dim))
        self.out = nn.Linear(hidden, dim)
        cls = compile_spec(spec, backend=backend)
        fixed = {n: value for n, value in (("H", 1), ("D", shared_dim), ("E", hidden)) if n in cls.NEEDS}
        self.attention = cls(**fixed, **sizes)

    def forward(self, x: torch.Tensor, **inputs) -> torch.Tensor:
        u, v = F.silu(self.to_uv(x)).chunk(2, dim=-1)
        z = F.silu(self.to_z(x))
        q, k = z * self.gamma[0] + self.beta[0], z * self.gamma[1] + self.beta[1]
        a = self.attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), **inputs).squeeze(1)
        return self.out(u * a)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.hidden}, shared_dim={self.shared_dim}"
