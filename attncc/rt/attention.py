"""Skeletons of the torch backend; the generated module fills their holes (scores, masks, f(d)).

Each works on [B, H, tokens, dim] tensors, is differentiable by autograd, and never materializes
an N x N buffer except one query chunk at a time (tiled) or not at all (linear; the FFT, graph and
ring paths are in transforms.py).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

import torch
import torch.nn.functional as F

from ..analysis.blocks import within_band  # noqa: F401  (re-exported for generated code)
from ..analysis.grid import offset_pairs, ring_extent, ring_pairs  # noqa: F401  (re-exported for generated code)
from ..lang.evaluate import input_lookup, lookup  # noqa: F401  (re-exported for generated code)
from ..lang.operators import (  # noqa: F401  (re-exported for generated code)
    float_to_int, floordiv, floormod, popcount, softplus)
from ..lang.normalizers import NORMALIZERS
from .heads import grouped_matmul, heads_product

# What generated code may call as rt.NAME (attncc/rt/__init__.py re-exports exactly these).
__all__ = [
    "LINEAR_CHUNK", "QUERY_CHUNK", "as_4d", "as_float", "batch_index",
    "block_sparse_attention", "causal_linear_attention", "compute_dtype", "finish_rows",
    "float_to_int", "floordiv", "floormod", "grouped_matmul", "heads_product", "input_lookup", "keep_grad", "linear_row_grads",
    "linear_attention", "logical_not", "lookup", "maximum", "minimum", "offset_pairs", "popcount",
    "prefix_chunk_sums", "ring_extent", "ring_pairs", "sdpa_attention", "sink_rows", "softplus",
    "tiled_attention", "toeplitz_row", "with_torch_backward", "within_band",
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
