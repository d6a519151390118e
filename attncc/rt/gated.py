"""Gated linear attention at run time: the chunked recurrence of a data-dependent scalar decay,
W[i, j] = phi(q_i) psi(k_j) exp(G_i - G_j) on j <= i (simple GLA, Mamba-2's SSD, gated RetNet).

Exponentials are only ever taken of differences of gates a chunk apart or less: exp(G_i) and
exp(-G_j) separately overflow once the cumulative log-gates reach a few hundred."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention import LINEAR_CHUNK, compute_dtype, finish_rows
from .heads import grouped_matmul, heads_product

__all__ = ["gated_linear_attention", "lookup_grad"]


def gated_linear_attention(pq, pk, v, *, modulation, gates, normalize: str, eps: float,
                           chunk: int = LINEAR_CHUNK) -> torch.Tensor:
    """out_i = phi(q_i) S_i / (phi(q_i) z_i + eps), S_i = sum_{j <= i} exp(G_i - G_j) phi(k_j) [v_j, 1]^T,
    in chunks of C tokens with R_c the key gate at chunk c's last position:
      inside chunk c    (phi(q_i) . psi(k_j)) exp(G_i - G_j), j <= i
      across chunks    queries read exp(G_i - R_(c-1)) phi(q_i) S_(c-1), and
                       S_c = exp(R_c - R_(c-1)) S_(c-1) + sum_b exp(R_c - G_b) psi(k_b) [v_b, 1]^T.
    gates = (G at the queries [., ., Nq, 1], G at the keys [., ., N, 1]); modulation A [., ., 1, 1] or None."""
    dtype = compute_dtype(v)
    B, H, Nq, m = pq.shape
    N, E = pk.shape[2], v.shape[-1]
    L = -(-max(Nq, N) // chunk) * chunk
    rows = lambda x, n: F.pad(x.to(dtype), (0, 0, 0, L - n)).view(x.shape[0], x.shape[1], L // chunk, chunk, x.shape[-1])
    v1 = torch.cat([v.to(dtype), torch.ones_like(v[..., :1], dtype=dtype)], -1)  # the row sums ride along
    qc, kc, vc = rows(pq, Nq), rows(pk, N), rows(v1, N)
    gq, gk = (_chunked_gate(g, B, H, n, L, chunk, dtype) for g, n in zip(gates, (Nq, N)))
    num = _gated_chunks(qc, kc, vc, gq, gk).reshape(B, H, L, E + 1)[:, :, :Nq]
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
