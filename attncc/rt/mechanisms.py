"""Torch skeletons of the named mechanisms (FLASH mixed chunks, VARS ISTA, ContextPool pooling).

Re-exported by attncc.rt (`rt.` in generated code). Each is differentiable by
autograd and never forms an N x N buffer.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .attention import compute_dtype, finish_rows, prefix_chunk_sums
from .heads import grouped_matmul


def _grouped(x: torch.Tensor, length: int, chunk: int, dtype) -> torch.Tensor:
    """[B, H, n, d] -> [B, H, length / chunk, chunk, d], zero-padded to `length` tokens."""
    B, H, n, d = x.shape
    return F.pad(x.to(dtype), (0, 0, 0, length - n)).view(B, H, length // chunk, chunk, d)


def chunk_states(pq, pk, v, chunk: int, across: str):
    """(num [B, H, L, E], den [B, H, L]) of one linear term over L = G chunk tokens:
    num_i = phi(q_i) S_g(i), S_g = sum of the chunk states psi(K_h)^T V_h over h in the key set
    (all: every h; earlier: h < g; upto: h <= g); causal: token prefix sums (j <= i)."""
    if across == "causal":
        return prefix_chunk_sums(pq, pk, v)
    states = torch.einsum("bhgjm,bhgje->bhgme", pk, v)
    zs = pk.sum(3)
    if across == "all":
        states, zs = states.sum(2, keepdim=True), zs.sum(2, keepdim=True)
    else:
        inclusive_s, inclusive_z = torch.cumsum(states, 2), torch.cumsum(zs, 2)
        states, zs = (inclusive_s, inclusive_z) if across == "upto" else (inclusive_s - states, inclusive_z - zs)
    num = grouped_matmul(pq, states)  # states per key/value head (and chunk, or one for every chunk)
    den = grouped_matmul(pq, zs.unsqueeze(-1)).squeeze(-1)
    return num, den


def mixed_linear_sums(q, k, v, *, chunk: int, linear: list, dtype):
    """(num [B, H, Nq, E], den [B, H, Nq]) of the linear terms: each (pq, pk, amplitude, across)."""
    B, H, Nq, _ = q.shape
    N, E = k.shape[2], v.shape[-1]
    L = -(-max(Nq, N) // chunk) * chunk
    vg = _grouped(v, L, chunk, dtype)
    num = torch.zeros(B, H, L, E, dtype=dtype, device=q.device)
    den = torch.zeros(B, H, L, dtype=dtype, device=q.device)
    for pq, pk, amplitude, across in linear:
        n, d = chunk_states(_grouped(pq, L, chunk, dtype), _grouped(pk, L, chunk, dtype), vg, chunk, across)
        n, d = n.reshape(B, H, L, E), d.reshape(B, H, L)
        if amplitude is not None:
            amplitude = amplitude.to(dtype)
            n, d = n * amplitude, d * amplitude.squeeze(-1)
        num, den = num + n, den + d
    return num[:, :, :Nq], den[:, :, :Nq]


def mixed_chunk_attention(q, k, v, ctx, *, chunk: int, local: Callable, mask: Callable | None, linear: list,
                          normalize: str, eps: float) -> torch.Tensor:
    """FLASH mixed chunk attention: out = normalize(blockdiag_c(mask o X) V + sum_t linear_t).

    local(qc, kc, i, j, h, ctx, keep) is X on [B, H, G, c, c] blocks (i, j absolute token indices
    [1, 1, G, c, 1] and [1, 1, G, 1, c], h [1, H, 1, 1, 1]); mask(i, j, h, ctx) the rest of the
    local guard and the spec's mask there. linear: (phi(Q), psi(K), A [1|B, H, 1, 1] | None, across)."""
    if chunk < 1:
        raise ValueError(f"chunk size must be >= 1, got {chunk}")
    dtype = compute_dtype(q)
    B, H, Nq, _ = q.shape
    N, E = k.shape[2], v.shape[-1]
    L = -(-max(Nq, N) // chunk) * chunk
    G = L // chunk
    qg, kg, vg = (_grouped(x, L, chunk, dtype) for x in (q, k, v))
    pos = torch.arange(L, device=q.device, dtype=torch.int32).view(G, chunk)
    i, j = pos.view(1, 1, G, chunk, 1), pos.view(1, 1, G, 1, chunk)
    h = torch.arange(H, device=q.device, dtype=torch.int32).view(1, H, 1, 1, 1)
    shape = (B, H, G, chunk, chunk)
    keep = (i < Nq) & (j < N)
    if mask is not None:
        keep = keep & mask(i, j, h, ctx)
    keep = keep.expand(shape)
    w = torch.where(keep, local(qg, kg, i, j, h, ctx, keep).to(dtype).expand(shape), torch.zeros((), dtype=dtype,
                                                                                              device=q.device))
    num = grouped_matmul(w, vg).reshape(B, H, L, E)[:, :, :Nq]
    den = w.sum(-1).reshape(B, H, L)[:, :, :Nq]
    lin_num, lin_den = mixed_linear_sums(q, k, v, chunk=chunk, linear=linear, dtype=dtype)
    return finish_rows(num + lin_num, den + lin_den, normalize, eps).to(v.dtype)


def unit_columns(x: torch.Tensor) -> torch.Tensor:
    """x [B, H, n, m] with every column divided by its norm over the n tokens (a zero column stays 0)."""
    norms = torch.linalg.vector_norm(x, dim=2, keepdim=True)
    return x / torch.where(norms == 0, torch.ones_like(norms), norms)


def ista_attention(pq, pk, v, *, steps: int, lam: float) -> torch.Tensor:
    """VARS: out = Phi_Q z_T after T ISTA steps on the m x m Gram matrix (attncc/oracle/ista.py has the math):
    Phi = features with unit columns (queries and keys each by their own norms), G = Phi_K^T Phi_K, b = Phi_K^T V, L = |G|_F,
    z_{t+1} = S_{lam/L}(z_t - (G z_t - b) / L). O(N m (m + e) + T m^2 e); no N x N buffer."""
    dtype = compute_dtype(v)
    pq, pk, vv = pq.to(dtype), pk.to(dtype), v.to(dtype)
    pq, pk = unit_columns(pq), unit_columns(pk)
    gram = pk.transpose(-1, -2) @ pk
    b = pk.transpose(-1, -2) @ vv
    step = torch.linalg.matrix_norm(gram).unsqueeze(-1).unsqueeze(-1)
    step = torch.where(step == 0, torch.ones_like(step), step)
    z = torch.zeros_like(b)
    for _ in range(steps):
        u = z - (gram @ z - b) / step
        z = torch.sign(u) * torch.relu(u.abs() - lam / step)
    return grouped_matmul(pq, z).to(v.dtype)
