"""Skeletons of the torch backend; the generated module fills their holes (scores, masks, f(d)).

Each works on [B, H, tokens, dim] tensors, is differentiable by autograd, and never materializes
an N x N buffer except one query chunk at a time (tiled) or not at all (linear, fft).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F

from ..analysis.blocks import within_band  # noqa: F401  (re-exported for generated code)
from ..analysis.grid import offset_pairs, ring_extent, ring_pairs  # noqa: F401  (re-exported for generated code)
from ..lang.evaluate import input_lookup, lookup  # noqa: F401  (re-exported for generated code)
from ..lang.operators import (  # noqa: F401  (re-exported for generated code)
    float_to_int, floordiv, floormod, popcount, softplus)
from ..lang.normalizers import NORMALIZERS
from ..lang.source import ShapeError
from .heads import grouped_matmul, heads_product

# What generated code may call as rt.NAME (attncc/rt/__init__.py re-exports exactly these).
__all__ = [
    "CPU_FEATURE_TILE", "GPU_FEATURE_TILE", "GPU_GROUP_BUDGET", "GROUP_BUDGET", "LINEAR_CHUNK", "QUERY_CHUNK",
    "RingGeometry", "as_4d", "as_float", "batch_index",
    "block_sparse_attention", "causal_linear_attention", "compute_dtype", "fft_length", "finish_rows",
    "float_to_int", "floordiv", "floormod", "graph_attention", "grouped_matmul", "graph_transform", "grid_offsets",
    "grid_toeplitz_attention", "grid_transform", "heads_product", "input_lookup", "keep_grad", "kernel_blocks", "kernel_products",
    "linear_row_grads",
    "linear_attention", "logical_not", "lookup", "maximum", "minimum", "offset_pairs", "popcount",
    "prefix_chunk_sums", "ring_attention", "ring_coordinates", "ring_extent", "ring_geometry", "ring_pairs",
    "sdpa_attention", "sink_rows", "softplus",
    "summed_area_table", "tiled_attention", "toeplitz_attention", "toeplitz_row", "toeplitz_transform",
    "with_torch_backward", "within_band",
]

QUERY_CHUNK = 256
LINEAR_CHUNK = 64
# Set by attncc.runtime.distributed.context_parallel while it runs: how key states pass between the ranks
# holding slices of the tokens (total: a sum over every rank; prefix: over the ranks before this
# one). A module global, not a ContextVar: torch.compile traces reads of globals.
state_exchange = None


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def minimum(*xs):
    out = xs[0]
    for x in xs[1:]:
        out = torch.minimum(torch.as_tensor(out), torch.as_tensor(x))
    return out


def maximum(*xs):
    out = xs[0]
    for x in xs[1:]:
        out = torch.maximum(torch.as_tensor(out), torch.as_tensor(x))
    return out


def batch_index(ctx, like: torch.Tensor) -> torch.Tensor:
    """The batch index b as an int32 [B, 1, 1, 1] tensor on the device of `like` (an index tensor)."""
    return torch.arange(ctx.B, dtype=torch.int32, device=like.device).view(-1, 1, 1, 1)


def logical_not(x):
    return torch.logical_not(torch.as_tensor(x))


def as_float(x, dtype: torch.dtype) -> torch.Tensor:
    """x as a float tensor: a float tensor as it is, an int or bool tensor or any Python number in
    `dtype` (the computation's: a Python float must not round through torch's default float32)."""
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.to(dtype)
    return torch.tensor(x, dtype=dtype)


def keep_grad(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """x, whose gradient is zeroed where `keep` is false: a score may be undefined (inf, NaN) at
    masked pairs, e.g. dot / (i - j) on the diagonal, and 0 * inf there would poison q and k."""
    if keep is not None and x.requires_grad:
        x.register_hook(lambda g: g if g is None else torch.where(keep, g, g.new_zeros(())))
    return x


def as_4d(x, dtype: torch.dtype) -> torch.Tensor:
    """A value of an index expression (scalar, or broadcastable to [B, H, Nq, N]) as a 4-d float tensor
    (ints and Python numbers in `dtype`, the computation's)."""
    x = as_float(x, dtype)
    return x.reshape(*([1] * (4 - x.dim())), *x.shape) if x.dim() < 4 else x


def toeplitz_row(x, length: int, dtype: torch.dtype) -> torch.Tensor:
    """f(d) evaluated on an [.., length, 1] grid, as a float [1|B, 1|H, length] tensor."""
    x = as_4d(x, dtype)
    return x.expand(*x.shape[:2], length, 1)[..., 0]


def pair_scores(q, k, v, ctx, q0: int, q1: int, keys, *, scores: Callable, mask: Callable | None):
    """(s, m, vc) of queries [q0, q1) against the keys at positions `keys` (a slice or an index
    tensor): the scores [B, H, cq, ck] in the compute dtype, the mask on that grid (None: no mask)
    and the keys' value rows."""
    dtype = compute_dtype(q)
    B, H = q.shape[:2]
    grid = lambda a, b: torch.arange(a, b, device=q.device, dtype=torch.int32)  # ints are 32-bit, as in kernels
    i, h = grid(q0, q1).view(1, 1, -1, 1), grid(0, H).view(1, H, 1, 1)
    if isinstance(keys, slice):
        j, kc, vc = grid(keys.start, keys.stop).view(1, 1, 1, -1), k[:, :, keys], v[:, :, keys]
    else:
        j, kc, vc = keys.view(1, 1, 1, -1).int(), k.index_select(2, keys), v.index_select(2, keys)
    qc, kc, vc = q[:, :, q0:q1].to(dtype), kc.to(dtype), vc.to(dtype)
    shape = (B, H, q1 - q0, j.shape[-1])
    m = mask(i, j, h, ctx).expand(shape) if mask is not None else None
    return scores(qc, kc, i, j, h, ctx, m).to(dtype).expand(shape), m, vc


def sink_rows(sink: Callable, ctx, q: torch.Tensor, q0: int = 0, q1: int | None = None) -> torch.Tensor:
    """The sink logits of queries [q0, q1) (all by default): sink(i, h, ctx) -> [B|1, H, rows, 1] in
    the compute dtype, on q's device; differentiable in the tables the sink reads."""
    H, q1 = q.shape[1], q.shape[2] if q1 is None else q1
    grid = lambda a, b: torch.arange(a, b, device=q.device, dtype=torch.int32)
    c = sink(grid(q0, q1).view(1, 1, -1, 1), grid(0, H).view(1, H, 1, 1), ctx).to(q.device, compute_dtype(q))
    return c.expand(c.shape[0], H, q1 - q0, 1)


def _attend(q, k, v, ctx, q0: int, q1: int, keys, *, scores: Callable, mask: Callable | None,
            normalize: str, eps: float, sink: Callable | None = None) -> torch.Tensor:
    """Queries [q0, q1) against the keys at positions `keys` (a slice or an index tensor): the dense
    formula on that slab, in the compute dtype. A sink joins each row as one more logit, valueless."""
    s, m, vc = pair_scores(q, k, v, ctx, q0, q1, keys, scores=scores, mask=mask)
    dtype = s.dtype
    if NORMALIZERS[normalize].online_softmax:
        if m is not None:
            s = s.masked_fill(~m, float("-inf"))
        top = s.amax(-1, keepdim=True).detach()
        extra = None  # the logit of the extra key every row holds (eps or the sink), if any
        if eps:  # exp(s) weights under `rows` (passes/stable_exp.py): eps joins the sum as a key of logit log(eps)
            extra = torch.tensor(math.log(eps), dtype=dtype, device=s.device)
        elif sink is not None:
            extra = sink_rows(sink, ctx, q, q0, q1)
        if extra is not None:
            top = torch.maximum(top, extra.detach())
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        w = torch.exp(s - top)
        z = w.sum(-1, keepdim=True)
        if extra is not None:
            z = z + torch.exp(extra - top)
        return grouped_matmul(w, vc) / torch.where(z == 0, torch.ones_like(z), z)
    w = torch.where(m, s, torch.zeros((), dtype=dtype, device=s.device)) if m is not None else s
    return finish_rows(grouped_matmul(w, vc), w.sum(-1), normalize, eps)


def tiled_attention(q, k, v, ctx, *, scores: Callable, mask: Callable | None, key_range: Callable,
                    normalize: str, eps: float, chunk: int = QUERY_CHUNK, sink: Callable | None = None) -> torch.Tensor:
    """out = normalize(mask o scores) V, one chunk of queries at a time over the keys it can see.

    scores(qc, kc, i, j, h, ctx, keep) -> [B|1, H|1, cq, ck]; mask(i, j, h, ctx) -> bool, same grid;
    key_range(q0, q1, ctx) -> (k0, k1): keys outside [k0, k1) are proven masked for queries [q0, q1);
    sink(i, h, ctx) -> [B|1, H|1, cq, 1]: softmax's valueless extra logit of each row (a chunk that
    sees no key is 0 with or without it).
    """
    outs = []
    for q0, q1, keys in query_chunks(q, k, ctx, key_range, chunk):
        outs.append(_attend(q, k, v, ctx, q0, q1, keys, scores=scores, mask=mask, normalize=normalize, eps=eps,
                            sink=sink) if keys is not None else no_keys(q, v, q0, q1))
    return torch.cat(outs, dim=2).to(v.dtype)


def query_chunks(q, k, ctx, key_range: Callable, chunk: int):
    """(q0, q1, keys) for each chunk [q0, q1) of `chunk` queries: keys, the slice of the keys it may
    see (key_range, clipped to the N keys), or None when it sees none."""
    Nq, N = q.shape[2], k.shape[2]
    for q0 in range(0, Nq, chunk):
        q1 = min(Nq, q0 + chunk)
        k0, k1 = key_range(q0, q1, ctx)
        k0, k1 = max(0, k0), min(N, k1)
        yield q0, q1, (slice(k0, k1) if k0 < k1 else None)


def no_keys(q, v, q0: int, q1: int) -> torch.Tensor:
    """The output rows of queries [q0, q1) that see no key: 0."""
    B, H = q.shape[:2]
    return q.new_zeros(B, H, q1 - q0, v.shape[-1], dtype=compute_dtype(q))


def block_sparse_attention(q, k, v, ctx, *, layout: torch.Tensor, block: int, scores: Callable,
                           mask: Callable | None, normalize: str, eps: float,
                           sink: Callable | None = None) -> torch.Tensor:
    """out = normalize(mask o scores) V, one query block at a time over the key blocks its layout row
    lists (layout: bool [ceil(Nq / block), ceil(N / block)], exact for the mask's block conjuncts)."""
    if torch.compiler.is_compiling():  # a row's key list has a data-dependent length, which one graph
        # cannot hold: every key of the row, masked (exact, as the mask is; the layout only skips work)
        return tiled_attention(q, k, v, ctx, scores=scores, mask=mask, key_range=lambda q0, q1, ctx: (0, ctx.N),
                               normalize=normalize, eps=eps, sink=sink)
    B, H, Nq, _ = q.shape
    N, E = k.shape[2], v.shape[-1]
    offsets = torch.arange(block, device=q.device)
    outs = []
    for row in range(layout.shape[0]):
        q0, q1 = row * block, min(Nq, (row + 1) * block)
        cols = layout[row].nonzero()[:, 0]
        keys = (cols[:, None] * block + offsets).flatten()
        keys = keys[keys < N]
        if keys.numel() == 0:
            outs.append(q.new_zeros(B, H, q1 - q0, E, dtype=compute_dtype(q)))
            continue
        outs.append(_attend(q, k, v, ctx, q0, q1, keys, scores=scores, mask=mask, normalize=normalize, eps=eps,
                            sink=sink))
    return torch.cat(outs, dim=2).to(v.dtype)


def sdpa_attention(q, k, v, *, causal: bool, scale: float | None = None) -> torch.Tensor:
    """Plain softmax(q k^T * scale) v (scale None: 1/sqrt(d) of q's width) with a full or causal
    (j <= i, top-left aligned) mask: torch's fused kernels (FlashAttention on GPU); k, v of fewer
    heads than q by torch's own grouped-query path."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=k.shape[1] != q.shape[1])


def finish_rows(num, den, normalize: str, eps: float):
    """num / (den + eps) for `rows` (0 where that is exactly 0), num for `none`."""
    if not NORMALIZERS[normalize].divides_by_row_sum:
        return num
    den = den.unsqueeze(-1) + eps
    return num / torch.where(den == 0, torch.ones_like(den), den)


def linear_row_grads(den, dout, out, mod, normalize: str, eps: float):
    """(inv, dden) [B, H, Nq] fp32 of linear attention's rows, out = mod num / Z with Z = mod den + eps
    (1 where that is 0), from the unmodulated denominators `den` and mod [B, H] (or [B, H, 1, 1]):
    inv = mod / Z, dden = -(dO . out) inv (0 where Z was 0); `none`: inv = mod, dden = 0. The backward
    kernels' own reading of them (emit/triton_backward_linear.py) when den is a sum over programs."""
    B, H = den.shape[:2]
    mod = mod.reshape(B, H, 1).float()
    if not NORMALIZERS[normalize].divides_by_row_sum:
        return (mod.expand_as(den).contiguous(), torch.zeros_like(den))
    zz = den * mod + eps
    inv = mod / torch.where(zz == 0, torch.ones_like(zz), zz)
    dden = torch.where(zz == 0, torch.zeros_like(zz), -(dout.float() * out.float()).sum(-1) * inv)
    return inv.contiguous(), dden.contiguous()


def linear_attention(pq, pk, v, *, modulation, normalize: str, eps: float) -> torch.Tensor:
    """out = phi(Q) (phi(K)^T V) / (phi(Q) phi(K)^T 1 + eps), times a scalar modulation."""
    dtype = compute_dtype(v)
    pq, pk, vv = pq.to(dtype), pk.to(dtype), v.to(dtype)
    kv, ks = torch.einsum("bhnm,bhne->bhme", pk, vv), pk.sum(2)
    exchange = state_exchange
    if exchange is not None:  # context parallel: phi(K)^T [V, 1] of every rank's keys
        total = exchange.total(torch.cat([kv, ks.unsqueeze(-1)], -1))
        kv, ks = total[..., :-1], total[..., -1]
    num = grouped_matmul(pq, kv)  # the states are per key/value head: k and v are never expanded
    den = grouped_matmul(pq, ks.unsqueeze(-1)).squeeze(-1)
    if modulation is not None:
        num, den = num * modulation, den * modulation.squeeze(-1)
    return finish_rows(num, den, normalize, eps).to(v.dtype)


def causal_linear_attention(pq, pk, v, *, modulation, normalize: str, eps: float, decay=None,
                            chunk: int = LINEAR_CHUNK) -> torch.Tensor:
    """out_i = phi(q_i) S_i / (phi(q_i) z_i + eps), S_i = sum_{j <= i} gamma^(i - j) phi(k_j) v_j^T
    (gamma = 1 without a decay), in chunks: quadratic (masked, decayed) inside a chunk, the carried
    state across chunks: S <- gamma^C S + sum_b gamma^(C - 1 - b) phi(k_b) v_b^T."""
    dtype = compute_dtype(v)
    B, H, Nq, m = pq.shape
    N, E = pk.shape[2], v.shape[-1]
    L = -(-max(Nq, N) // chunk) * chunk
    pad = lambda x, n: F.pad(x.to(dtype), (0, 0, 0, L - n)).view(x.shape[0], x.shape[1], L // chunk, chunk, x.shape[-1])
    qc, kc, vc = pad(pq, Nq), pad(pk, N), pad(v, N)
    gamma = None if decay is None else decay.to(dtype)
    initial = _initial_state(pk.to(dtype), v.to(dtype), gamma)
    if decay is None:  # every chunk's state at once: an exclusive prefix sum over chunks
        num, den = prefix_chunk_sums(qc, kc, vc, initial)
    else:
        num, den = _decayed_chunks(qc, kc, vc, gamma, initial)
    num, den = num.reshape(B, H, L, E)[:, :, :Nq], den.reshape(B, H, L)[:, :, :Nq]
    if modulation is not None:
        num, den = num * modulation, den * modulation.squeeze(-1)
    return finish_rows(num, den, normalize, eps).to(v.dtype)


def _initial_state(pk, v, gamma):
    """[B, H, m, E + 1]: the state [S, z] that the keys before these tokens leave, or None (the first
    tokens). Under context parallelism the earlier ranks' slices: each rank sends its own
    sum_j gamma^(n - 1 - j) phi(k_j) [v_j, 1]^T, the state its n tokens leave (gamma = 1 undecayed)."""
    exchange = state_exchange
    if exchange is None:
        return None
    n = pk.shape[2]
    if gamma is not None:  # a decay per query head makes this rank's keys per query head ([B, H, n, m])
        pk = heads_product(pk, torch.pow(gamma, torch.arange(n - 1, -1, -1, device=pk.device, dtype=pk.dtype).view(-1, 1)), -3)
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], -1)
    return exchange.prefix(grouped_matmul(pk.transpose(-1, -2), v1), n, gamma)


def prefix_chunk_sums(qc, kc, vc, initial=None):
    """Chunked causal sums without decay: [B, H, chunks, C, .] in, (num, den) per chunk row out."""
    chunk = qc.shape[3]
    states = torch.einsum("bhcnm,bhcne->bhcme", kc, vc)
    zs = kc.sum(3)
    prefix, zprefix = torch.cumsum(states, dim=2) - states, torch.cumsum(zs, dim=2) - zs
    if initial is not None:
        prefix, zprefix = prefix + initial[:, :, None, :, :-1], zprefix + initial[:, :, None, :, -1]
    tri = torch.tril(torch.ones(chunk, chunk, dtype=torch.bool, device=qc.device))
    intra = grouped_matmul(qc, kc.transpose(-1, -2)).masked_fill(~tri, 0)
    num = grouped_matmul(intra, vc) + grouped_matmul(qc, prefix)
    den = intra.sum(-1) + grouped_matmul(qc, zprefix.unsqueeze(-1)).squeeze(-1)
    return num, den


def _decayed_chunks(qc, kc, vc, gamma, initial=None):
    """Chunked causal sums with decay gamma^(i - j), walking chunks with the carried state (a closed-form
    prefix sum would divide by gamma^(C c), which under- or overflows). The state is per key/value head,
    or per query head when the decay is (then each chunk's keys, scaled per query head, are too)."""
    B, _, nc, chunk, m = qc.shape
    E, dtype = vc.shape[-1], qc.dtype
    H = max(kc.shape[1], gamma.shape[1])  # the heads of the state
    pos = torch.arange(chunk, device=qc.device, dtype=dtype)
    steps = (pos[:, None] - pos[None, :]).clamp(min=0)
    within = torch.where(pos[:, None] >= pos[None, :], torch.pow(gamma, steps), 0)  # [.., C, C]
    q_decay, k_decay = torch.pow(gamma, pos[:, None] + 1), torch.pow(gamma, chunk - 1 - pos[:, None])
    carry = torch.pow(gamma, chunk)
    state = torch.zeros(B, H, m, E, dtype=dtype, device=qc.device)
    z = torch.zeros(B, H, m, 1, dtype=dtype, device=qc.device)
    if initial is not None:
        state, z = state + initial[..., :-1], z + initial[..., -1:]
    nums, dens = [], []
    for c in range(nc):
        q_, k_, v_ = qc[:, :, c], kc[:, :, c], vc[:, :, c]
        intra = grouped_matmul(q_, k_.transpose(-1, -2)) * within
        nums.append(grouped_matmul(intra, v_) + q_decay * grouped_matmul(q_, state))
        dens.append(intra.sum(-1, keepdim=True) + q_decay * grouped_matmul(q_, z))
        decayed = heads_product(k_, k_decay, -3)
        state = carry * state + grouped_matmul(decayed.transpose(-1, -2), v_)
        z = carry * z + decayed.sum(2).unsqueeze(-1)
    return torch.stack(nums, 2), torch.stack(dens, 2)[..., 0]


GROUP_BUDGET = 1 << 22  # elements of one feature group's largest buffer on CPUs (stays in cache)
GPU_GROUP_BUDGET = 1 << 26  # on GPUs: few, large groups (launches and re-reads cost more than memory)
# Feature columns per step of the Triton contraction kernels: one on GPUs (registers hold a
# [BLOCK_M, BLOCK_L, BLOCK_E] tile per corner), many on the CPU, where Triton's interpreter pays per step.
GPU_FEATURE_TILE, CPU_FEATURE_TILE = 1, 16


def kernel_blocks(pk, v, transform: Callable, *, cells: int, budget: int = GROUP_BUDGET, split_columns: bool = True,
                  heads: int | None = None):
    """Yield (l0, e0, y) with y [ml, B, H, ne, Nq] = T (phi(K)_l o [V, 1]_e) for the features
    l0 .. l0+ml-1 and the value columns e0 .. e0+ne-1 (column E is the ones of the row sums): a linear
    map T over key tokens (`transform`, [.., N] -> [.., Nq]) applied to a block of (feature, value
    column) pairs at once. Blocks are sized so that the largest buffer (`cells` elements per column)
    stays within `budget` elements: whole features while one fits, else (split_columns) a few value
    columns of one feature, never less than one column of one feature (B H cells elements). The
    peak is therefore a few times max(budget, B H cells): linear in the tokens, whatever m and E.
    `heads`: of the transform's output when it has more than the keys (a filter per query head)."""
    dtype = compute_dtype(v)
    B, H, _, m = pk.shape
    H = heads or H
    E = v.shape[-1]
    ones = torch.ones(*v.shape[:-1], 1, dtype=dtype, device=v.device)
    v1 = torch.cat([v.to(dtype), ones], -1).transpose(-1, -2)  # [B, H, E+1, N]
    pk = pk.to(dtype).permute(3, 0, 1, 2)  # [m, B, H, N]
    column = max(1, B * H * cells)
    columns = E + 1 if not split_columns else max(1, min(E + 1, budget // column))
    group = max(1, budget // (column * columns)) if columns == E + 1 else 1
    for e0 in range(0, E + 1, columns):
        for l0 in range(0, m, group):
            yield l0, e0, transform(pk[l0:l0 + group, :, :, None, :] * v1[:, :, e0:e0 + columns])


def kernel_products(pk, v, transform: Callable, *, cells: int, budget: int = GROUP_BUDGET):
    """Yield (l0, y) with y [ml, B, H, E+1, Nq] = T (phi(K)_l o [V, 1]) for the features l0 .. l0+ml-1,
    every value column at once (what the Triton contraction kernels read): kernel_blocks by whole
    features, at least one feature per group."""
    for l0, _, y in kernel_blocks(pk, v, transform, cells=cells, budget=budget, split_columns=False):
        yield l0, y


def _kernel_sums(pq, pk, v, transform: Callable, *, normalize: str, eps: float, cells: int) -> torch.Tensor:
    """num_i = sum_l phi(q_i)_l [T (phi(K)_l o [V, 1])]_i (kernel_blocks), then the normalization.
    Features and value columns go in blocks small enough to stay in cache, which matters more on
    CPUs than the number of calls, and bounds the peak memory (see kernel_blocks)."""
    dtype = compute_dtype(v)
    B, H, Nq, _ = pq.shape
    E = v.shape[-1]
    pq = pq.to(dtype).permute(3, 0, 1, 2)  # [m, B, H, Nq]
    sums: dict[int, torch.Tensor] = {}  # value column e0 -> its block's sum over features [B, H, ne, Nq]
    for l0, e0, y in kernel_blocks(pk, v, transform, cells=cells, heads=pq.shape[1]):
        part = heads_product(pq[l0:l0 + y.shape[0], :, :, None, :], y, -3).sum(0)  # y: per key/value head or per query head
        sums[e0] = part if e0 not in sums else sums[e0] + part
    out = torch.cat([sums[e0] for e0 in sorted(sums)], 2).transpose(-1, -2)
    return finish_rows(out[..., :E], out[..., E], normalize, eps).to(v.dtype)


def fft_length(n: int) -> int:
    return 1 << math.ceil(math.log2(max(2, n)))


def toeplitz_transform(f, nq: int, n: int, dtype) -> tuple[Callable, int]:
    """(T, cells): T u = sum_j f(i - j) u_j for i < nq, j < n (a linear convolution over tokens) by
    FFT on a zero-padded (circulant-embedded) length; f: [1|B, 1|H, nq + n - 1] holding f(d) for
    d = -(n-1) .. nq-1."""
    # outputs need g[t - j] for 0 <= t - j <= nq + n - 2 only: a circular length >= nq + n - 1 never wraps
    n_fft = fft_length(nq + n - 1)
    g = torch.fft.rfft(f.to(dtype), n=n_fft, dim=-1)[:, :, None, :]  # [1|B, 1|H, 1, F]

    def convolve(u):
        return torch.fft.irfft(heads_product(torch.fft.rfft(u, n=n_fft, dim=-1), g, -3), n=n_fft, dim=-1)[..., n - 1:n - 1 + nq]
    return convolve, n_fft


def toeplitz_attention(pq, pk, v, f, *, normalize: str, eps: float) -> torch.Tensor:
    """num_i = sum_l phi(q_i)_l sum_j f(i - j) phi(k_j)_l [v_j, 1]: one linear convolution over tokens
    per (feature, value column), by FFT (toeplitz_transform)."""
    transform, cells = toeplitz_transform(f, pq.shape[2], pk.shape[2], compute_dtype(v))
    return _kernel_sums(pq, pk, v, transform, normalize=normalize, eps=eps, cells=cells)


def graph_transform(adj, kind: str, options: dict, nq: int, n: int, dtype) -> tuple[Callable, int]:
    """(T, cells): T u = G u for the graph kernel G of adj (attncc.graphs), through products with adj
    (sparse when adj is); G is never formed."""
    from ..lang.graph_kernels import graph_attention_transform
    if nq != n:
        raise ShapeError(f"a graph kernel relates tokens to tokens: queries ({nq}) and keys ({n}) must be "
                         "the same tokens")
    return graph_attention_transform(kind, adj, options, dtype), n


def graph_attention(pq, pk, v, adj, kind: str, options: dict, *, normalize: str, eps: float) -> torch.Tensor:
    """W = G o phi(Q) phi(K)^T for a graph kernel G of adj: the m (e + 1) products G (phi(K)_l o [V, 1])."""
    transform, cells = graph_transform(adj, kind, options, pq.shape[2], pk.shape[2], compute_dtype(v))
    return _kernel_sums(pq, pk, v, transform, normalize=normalize, eps=eps, cells=cells)


def grid_offsets(nq: int, n: int, width: int, device=None):
    """(dr [1, 1, Lr, 1], dc [1, 1, 1, Lc]): every offset between a query and a key cell of the grid,
    dr in -(Rk-1) .. Rq-1, dc in -(w-1) .. w-1, for Rq, Rk = rows of Nq, N tokens."""
    rq, rk = -(-nq // width), -(-n // width)
    dr = torch.arange(-(rk - 1), rq, dtype=torch.int32, device=device).view(1, 1, -1, 1)
    dc = torch.arange(-(width - 1), width, dtype=torch.int32, device=device).view(1, 1, 1, -1)
    return dr, dc


def grid_transform(f, nq: int, n: int, width: int, dtype) -> tuple[Callable, int]:
    """(T, cells): tokens row-major on a grid of `width` columns, T u = sum_j f(dr, dc) u_j, a 2-D
    linear convolution of the key grid (zero-padded past n) with f, by 2-D FFT.

    f: [1|B, 1|H, Rk + Rq - 1, 2 w - 1] holding f(dr, dc) on grid_offsets(nq, n, w)."""
    rq, rk = -(-nq // width), -(-n // width)
    shape = (fft_length(rq + rk - 1), fft_length(2 * width - 1))
    g = torch.fft.rfft2(f.to(dtype), s=shape)[:, :, None]  # [1|B, 1|H, 1, Fr, Fc]

    def convolve(u):
        grid = torch.nn.functional.pad(u, (0, rk * width - n)).unflatten(-1, (rk, width))
        y = torch.fft.irfft2(heads_product(torch.fft.rfft2(grid, s=shape), g, -4), s=shape)
        return y[..., rk - 1:rk - 1 + rq, width - 1:2 * width - 1].flatten(-2)[..., :nq]
    return convolve, shape[0] * shape[1]


def grid_toeplitz_attention(pq, pk, v, f, width: int, *, normalize: str, eps: float) -> torch.Tensor:
    """f(dr, dc) 2-level block Toeplitz: every T_f product is a 2-D FFT convolution (grid_transform)."""
    transform, cells = grid_transform(f, pq.shape[2], pk.shape[2], width, compute_dtype(v))
    return _kernel_sums(pq, pk, v, transform, normalize=normalize, eps=eps, cells=cells)


def ring_coordinates(t, width: int, metric: str):
    """Token t -> (a, b) on the plane where the ring distance is Chebyshev: (row, column) itself, or
    for Manhattan the rotated (r + c, r - c + w - 1), since |dr| + |dc| = max(|dr + dc|, |dr - dc|)."""
    r, c = t // width, t % width
    return (r, c) if metric == "chebyshev" else (r + c, r - c + width - 1)


@dataclass(frozen=True)
class RingGeometry:
    """Keys on the (rows + 1) x (cols + 1) summed-area table of the ring plane (ring_coordinates):
    key j sits at cell (a_j + 1) (cols + 1) + b_j + 1; a query's coordinates are (a_q, b_q)."""
    rows: int
    cols: int
    cell: torch.Tensor
    a_q: torch.Tensor
    b_q: torch.Tensor

    @property
    def cells(self) -> int:
        return (self.rows + 1) * (self.cols + 1)


def ring_geometry(nq: int, n: int, width: int, metric: str, device=None) -> RingGeometry:
    a_k, b_k = ring_coordinates(torch.arange(n, device=device), width, metric)
    # the largest (a, b) of a key, from n alone: no data-dependent size (torch.compile keeps one graph)
    rows, cols = ((n - 1) // width + 1, min(n, width)) if metric == "chebyshev" else (-(-n // width) + width - 1,) * 2
    a_q, b_q = ring_coordinates(torch.arange(nq, device=device), width, metric)
    return RingGeometry(rows, cols, a_k * (cols + 1) + b_k + cols + 2, a_q, b_q)


def summed_area_table(u, geo: RingGeometry, dim: int = -1) -> torch.Tensor:
    """u [.., N, ..] (tokens along `dim`) -> its summed-area table [.., cells, ..] on the ring plane:
    entry (A, B) holds the sum of the keys with a_j < A and b_j < B."""
    dim = dim % u.dim()
    shape = list(u.shape)
    shape[dim] = geo.cells
    table = u.new_zeros(shape).index_copy(dim, geo.cell, u)
    return table.unflatten(dim, (geo.rows + 1, geo.cols + 1)).cumsum(dim).cumsum(dim + 1).flatten(dim, dim + 1)


def ring_attention(pq, pk, v, g, width: int, metric: str, *, normalize: str, eps: float) -> torch.Tensor:
    """f(i, j) = g(i, rho(i, j)) with rho a ring distance on a grid of `width` columns (ripple):

        sum_j g(i, rho) x_j = sum_{rho < T} (g(i, rho) - g(i, rho + 1)) box_i(rho) + g(i, T) total

    with box_i(rho) = the keys within distance rho of i, four reads of a summed-area table, and
    g(i, rho) = g(i, T) for rho >= T (the last column of g). O(N T m e) after an O(N m e) table.

    g: [1|B, 1|H, Nq, T + 1] holding g(i, rho) for rho = 0 .. T."""
    geo = ring_geometry(pq.shape[2], pk.shape[2], width, metric, v.device)
    rows, cols = geo.rows, geo.cols
    g = g.to(compute_dtype(v))
    T = g.shape[-1] - 1
    weights = [(g[..., r] - g[..., r + 1]).unsqueeze(-2) for r in range(T)] + [g[..., T].unsqueeze(-2)]  # [.., 1, Nq]

    def corner(a, b):
        return a.clamp(0, rows) * (cols + 1) + b.clamp(0, cols)

    def ring_sums(u):
        table = summed_area_table(u, geo)
        y = heads_product(weights[T], table[..., -1:], -3)  # every key, at the saturated weight
        for r in range(T):
            a0, a1, b0, b1 = geo.a_q - r, geo.a_q + r + 1, geo.b_q - r, geo.b_q + r + 1
            box = (table[..., corner(a1, b1)] - table[..., corner(a0, b1)] - table[..., corner(a1, b0)]
                   + table[..., corner(a0, b0)])
            y = y + heads_product(weights[r], box, -3)
        return y
    return _kernel_sums(pq, pk, v, ring_sums, normalize=normalize, eps=eps, cells=geo.cells + pq.shape[2])


class _RecomputeBackward(torch.autograd.Function):
    """Forward by a Triton launcher; backward by re-running the torch backend under autograd."""

    @staticmethod
    def forward(fctx, triton_fn, torch_fn, ctx, names, q, k, v, *tables):
        fctx.fns = (torch_fn, ctx, names)
        fctx.save_for_backward(q, k, v, *tables)
        return triton_fn(q, k, v, ctx)

    @staticmethod
    def backward(fctx, grad):
        torch_fn, ctx, names = fctx.fns
        saved = fctx.saved_tensors
        needs = fctx.needs_input_grad[4:]
        with torch.enable_grad():
            leaves = [x.detach().requires_grad_(need) for x, need in zip(saved, needs)]
            q, k, v, *tables = leaves
            params = {**ctx.params, **{n: t for n, t in zip(names, tables) if n in ctx.params}}
            inputs = {**ctx.inputs, **{n: t for n, t in zip(names, tables) if n not in ctx.params}}
            out = torch_fn(q, k, v, replace(ctx, params=params, inputs=inputs))
            wanted = [x for x, need in zip(leaves, needs) if need]
            got = iter(torch.autograd.grad(out, wanted, grad, allow_unused=True))
        return (None, None, None, None, *[next(got) if need else None for need in needs])


def with_torch_backward(triton_fn: Callable, torch_fn: Callable, q, k, v, ctx) -> torch.Tensor:
    """Run triton_fn; if anything needs a gradient, make its backward the torch backend's."""
    tables = [(n, t) for n, t in ctx.params.items()] + \
             [(n, t) for n, t in ctx.inputs.items() if t.is_floating_point()]
    leaves = (q, k, v, *(t for _, t in tables))
    if not (torch.is_grad_enabled() and any(x.requires_grad for x in leaves)):
        return triton_fn(q, k, v, ctx)
    return _RecomputeBackward.apply(triton_fn, torch_fn, ctx, [n for n, _ in tables], *leaves)
