"""Gated linear attention at run time: the chunked recurrence of a data-dependent decay on j <= i,
  scalar gates     W[i, j] = (phi(q_i) . psi(k_j)) exp(G_i - G_j)    (simple GLA, Mamba-2's SSD, gated RetNet)
  per-dimension    W[i, j] = sum_d phi(q_i)_d psi(k_j)_d exp(G_id - G_jd)    (GLA, Yang et al. 2023)

Exponentials are only ever taken of differences of gates a chunk apart or less, with the later
token's gate first (so of numbers <= 0 for non-increasing G): exp(G_i) and exp(-G_j) separately
overflow once the cumulative log-gates reach a few hundred."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention import LINEAR_CHUNK, compute_dtype, finish_rows
from .heads import grouped_matmul, heads_product

__all__ = ["gated_linear_attention", "lookup_grad", "row_input_grad"]


def gated_linear_attention(pq, pk, v, *, modulation, gates, normalize: str, eps: float,
                           chunk: int = LINEAR_CHUNK) -> torch.Tensor:
    """out_i = phi(q_i) S_i / (phi(q_i) z_i + eps), S_i = sum_{j <= i} exp(G_i - G_j) phi(k_j) [v_j, 1]^T,
    in chunks of C tokens with R_c the key gate at chunk c's last position:
      inside chunk c    (phi(q_i) . psi(k_j)) exp(G_i - G_j), j <= i
      across chunks    queries read exp(G_i - R_(c-1)) phi(q_i) S_(c-1), and
                       S_c = exp(R_c - R_(c-1)) S_(c-1) + sum_b exp(R_c - G_b) psi(k_b) [v_b, 1]^T.
    gates = (G at the queries [., ., Nq, w], G at the keys [., ., N, w]) with w = 1 (a scalar gate) or
    w = m (a gate per feature dimension: the exponentials above per column d, S_c's rows decayed apiece,
    _gla_chunks); modulation A [., ., 1, 1] or None."""
    dtype = compute_dtype(v)
    B, H, Nq, m = pq.shape
    N, E = pk.shape[2], v.shape[-1]
    L = -(-max(Nq, N) // chunk) * chunk
    rows = lambda x, n: F.pad(x.to(dtype), (0, 0, 0, L - n)).view(x.shape[0], x.shape[1], L // chunk, chunk, x.shape[-1])
    v1 = torch.cat([v.to(dtype), torch.ones_like(v[..., :1], dtype=dtype)], -1)  # the row sums ride along
    qc, kc, vc = rows(pq, Nq), rows(pk, N), rows(v1, N)
    if gates[0].shape[-1] > 1:
        num = _gla_chunks(qc, kc, vc, _chunked_gate_rows(gates, B, H, L, chunk, dtype))
    else:
        gq, gk = (_chunked_gate(g, B, H, n, L, chunk, dtype) for g, n in zip(gates, (Nq, N)))
        num = _gated_chunks(qc, kc, vc, gq, gk)
    num = num.reshape(B, H, L, E + 1)[:, :, :Nq]
    num, den = num[..., :-1], num[..., -1]
    if modulation is not None:
        num, den = num * modulation, den * modulation.squeeze(-1)
    return finish_rows(num, den, normalize, eps).to(v.dtype)


def _chunked_gate(g, B: int, H: int, n: int, L: int, chunk: int, dtype) -> torch.Tensor:
    """[B, H|1, L / C, C]: the gate of n tokens, padded by repeating the last (padded rows are zero); one
    head when the gate is the same for every head."""
    g = g.to(dtype).expand(B, g.shape[1], n, 1)[..., 0]
    return F.pad(g, (0, L - n), mode="replicate").view(B, g.shape[1], L // chunk, chunk)


def _gated_chunks(qc, kc, vc, gq, gk) -> torch.Tensor:
    """[B, H, chunks, C, E + 1]: sum_{j <= i} exp(G_i - G_j) (q_i . k_j) v_j, per chunk row. k and v may
    have fewer heads than q (grouped-query attention); the states are per key/value head unless the
    gates are per query head, and then each chunk's keys are scaled per query head one chunk at a time."""
    chunk = qc.shape[3]
    tri = torch.tril(torch.ones(chunk, chunk, dtype=torch.bool, device=qc.device))
    within = torch.where(tri, gq[..., :, None] - gk[..., None, :], 0).exp() * tri  # masked before exp
    intra = grouped_matmul(grouped_matmul(qc, kc.transpose(-1, -2)) * within, vc)
    ends = gk[..., -1]  # R_c
    starts = torch.cat([gk[:, :, :1, 0], ends[:, :, :-1]], -1)  # R_(c-1); chunk 0 reads a zero state
    q_scale, k_scale = (gq - starts[..., None]).exp(), (ends[..., None] - gk).exp()
    carry = (ends - starts).exp()
    def update(c):  # sum_b exp(R_c - G_b) psi(k_b) [v_b, 1]^T of chunk c (every chunk: c = slice(None))
        return grouped_matmul(heads_product(kc[:, :, c], k_scale[:, :, c, :, None], -3).transpose(-1, -2), vc[:, :, c])
    if k_scale.shape[1] <= kc.shape[1]:  # keys scaled at their own heads: every chunk's update at once
        updates = update(slice(None))  # [B, Hkv, chunks, m, E + 1]
        update = lambda c: updates[:, :, c]  # noqa: E731
    S = max(kc.shape[1], k_scale.shape[1])
    states = [qc.new_zeros(qc.shape[0], S, kc.shape[-1], vc.shape[-1])]
    for c in range(qc.shape[2] - 1):  # S_c: the one sequential step, on m x (E + 1) states
        states.append(carry[:, :, c, None, None] * states[-1] + update(c))
    return intra + grouped_matmul(heads_product(qc, q_scale[..., None], -4), torch.stack(states, 2))


# ---------------------------------------------------------------------- a gate per dimension (GLA)
def _chunked_gate_rows(gates, B: int, H: int, L: int, chunk: int, dtype) -> torch.Tensor:
    """[B, H, L / C, C, m]: one gate sequence for queries and keys (G is one function of the token: the
    keys' N rows, then the queries' past N if Nq > N), padded by repeating the last row. One sequence,
    still non-increasing where the padding starts, keeps every exponent <= 0."""
    gq, gk = gates
    g = torch.cat([gk, gq[..., gk.shape[-2]:, :]], -2) if gq.shape[-2] > gk.shape[-2] else gk
    g = g.to(dtype).expand(B, H, g.shape[-2], g.shape[-1])
    return F.pad(g, (0, 0, 0, L - g.shape[-2]), mode="replicate").view(B, H, L // chunk, chunk, g.shape[-1])


def _intra_dims(qc, kc, g, sub: int = 16) -> torch.Tensor:
    """[B, H, chunks, C, C]: sum_d q_id k_jd exp(G_id - G_jd) on j <= i inside each chunk, in sub-blocks
    of `sub` rows (flash-linear-attention's chunk_gla scheme, re-derived). With R_a the gate at the
    first row of sub-block a, a pair (i in a, j before a) is (q_i o exp(G_i - R_a)) . (k_j o
    exp(R_a - G_j)), a product of two matrices whose exponents are both <= 0; pairs in the same
    sub-block take the difference G_i - G_j per dimension ([sub, sub, m] per sub-block). Memory
    O(C m) per token, never the [C, C, m] differences of the whole chunk."""
    chunk = qc.shape[3]
    sub = sub if chunk % sub == 0 else chunk
    s = chunk // sub
    ref = g[..., ::sub, :]  # [., chunks, s, m]: R_a
    qs = qc * (g - ref.repeat_interleave(sub, -2)).exp()
    before = (torch.arange(chunk, device=qc.device) < (torch.arange(s, device=qc.device) * sub)[:, None])[..., None]
    ks = kc[..., None, :, :] * torch.where(before, ref[..., :, None, :] - g[..., None, :, :], -torch.inf).exp()
    off = qs.unflatten(-2, (s, sub)) @ ks.transpose(-1, -2)  # [., s, sub, C]: zero from sub-block a on
    qa, ka, ga = (x.unflatten(-2, (s, sub)) for x in (qc, kc, g))
    tri = torch.tril(torch.ones(sub, sub, dtype=torch.bool, device=qc.device))[..., None]
    decay = torch.where(tri, ga[..., :, None, :] - ga[..., None, :, :], -torch.inf).exp()  # [., s, sub, sub, m]
    diag = (qa[..., :, None, :] * ka[..., None, :, :] * decay).sum(-1)  # [., s, sub, sub]
    eye = torch.eye(s, dtype=qc.dtype, device=qc.device)[:, None, :, None]
    blocks = off.unflatten(-1, (s, sub)) + diag[..., :, :, None, :] * eye  # [., a, i, b, j]
    return blocks.reshape(*qc.shape[:3], chunk, chunk)


def _gla_chunks(qc, kc, vc, g) -> torch.Tensor:
    """[B, H, chunks, C, E + 1]: the in-chunk pairs (_intra_dims) plus what the earlier chunks' state
    gives, sum_{j in earlier chunks} (q_i o exp(G_i - R)) . (k_j o exp(R - G_j)) [v_j, 1] with R the
    previous chunk end's gate row: each chunk's state kept at its end, its rows decayed apiece. The
    gates are per query head, so keys and values of fewer heads (grouped-query attention) are read at
    every query head of their group (the gated keys are per query head in any case)."""
    groups = qc.shape[1] // kc.shape[1]
    kc, vc = (x.repeat_interleave(groups, 1) if groups > 1 else x for x in (kc, vc))
    intra = _intra_dims(qc, kc, g) @ vc
    ends = g[..., -1, :]  # R_c: [B, H, chunks, m]
    starts = torch.cat([g[:, :, :1, 0], ends[:, :, :-1]], 2)  # R_(c-1); chunk 0 reads a zero state
    q_scale, k_scale = (g - starts[..., None, :]).exp(), (ends[..., None, :] - g).exp()
    carry = (ends - starts).exp()
    updates = (kc * k_scale).transpose(-1, -2) @ vc  # [B, H, chunks, m, E + 1]
    states = [torch.zeros_like(updates[:, :, 0])]
    for c in range(updates.shape[2] - 1):  # S_c: the one sequential step, on m x (E + 1) states
        states.append(carry[:, :, c, :, None] * states[-1] + updates[:, :, c])
    return intra + (qc * q_scale) @ torch.stack(states, 2)


def lookup_grad(table: torch.Tensor, indices, ndims: int, values: torch.Tensor) -> torch.Tensor:
    """d(sum(values * input_lookup(table, indices, ndims))) / d(table): values added at the clamped
    entries the lookup reads (a leading batch dimension of the table read per batch row)."""
    batched = table.dim() > ndims
    dims = table.shape[1:] if batched else table.shape
    idx = [torch.as_tensor(ix, device=table.device).long().clamp(0, n - 1) for ix, n in zip(indices, dims)]
    if batched:
        idx = [torch.arange(table.shape[0], device=table.device).view(-1, 1, 1, 1)] + idx
    *idx, values = torch.broadcast_tensors(*idx, values.to(device=table.device, dtype=table.dtype))
    return torch.zeros_like(table).index_put_(tuple(idx), values, accumulate=True)


def row_input_grad(x: torch.Tensor, ndims: int, per_head: bool, dg: torch.Tensor) -> torch.Tensor:
    """d(sum(dg * input_rows(x, ndims, per_head, n))) / dx for dg [B, H, n, W]: summed over the batch
    rows and heads x is broadcast along (no batch dimension, or not per head), zero past its n rows."""
    grad = torch.zeros_like(x)
    view = grad.unsqueeze(0) if x.dim() == ndims else grad
    view = view if per_head else view.unsqueeze(1)
    dg = dg.sum(0, keepdim=True) if view.shape[0] == 1 else dg
    dg = dg.sum(1, keepdim=True) if view.shape[1] == 1 else dg
    view[:, :, :dg.shape[2]] += dg.to(grad.dtype)
    return grad
