"""What a user would run instead of an attncc module, per example family (for `attncc bench`).

  sdpa   torch.nn.functional.scaled_dot_product_attention on the flash backend; full and causal
         softmax only (the flash backend takes no mask)
  flex   torch FlexAttention with the family's mask_mod / score_mod and a BlockMask; compiled with
         dynamic=False on CUDA (eager off CUDA, where it materializes the scores)
  fla    flash-linear-attention chunk kernels: chunk_linear_attn (causal elu+1 linear attention),
         chunk_retention (decay (1 - 2^(-5-h))^(i-j)); inputs in fla's [B, T, H, K] layout
  naive  the textbook dense formula in the input dtype, materializing the N x N scores / weights
  fft    naive torch FFT for Toeplitz-modulated kernelized attention: phi(k) v^T (N x m x e) and
         phi(k) convolved with f(i - j) along the tokens by torch.fft, then contracted with phi(q)

The mask_mods and score_mods are written by hand, as a user would write them for Flex; they double
as the naive masks (evaluated on broadcast index grids) and are tested against attncc's reference masks.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

Mod = Callable  # mask_mod(b, h, q_idx, kv_idx) -> bool; score_mod(score, b, h, q_idx, kv_idx) -> float


def causal(b, h, i, j):
    return j <= i


def _window(m, inputs) -> Mod:
    w = m.sizes["window"]
    return lambda b, h, i, j: (i - j).abs() <= w


def _document(m, inputs) -> Mod:
    doc = inputs["doc"]
    doc = doc if doc.dim() == 2 else doc.expand(1, -1)
    return lambda b, h, i, j: (doc[b, i] == doc[b, j]) & (j <= i)


def _hypercube(m, inputs) -> Mod:
    """popcount(gray(i // block) ^ gray(j // block)) <= 1, i.e. x & (x - 1) == 0 (no popcount needed)."""
    block = m.sizes["block"]

    def mask(b, h, i, j):
        gi, gj = i // block, j // block
        x = (gi ^ (gi >> 1)) ^ (gj ^ (gj >> 1))
        return (x & (x - 1)) == 0
    return mask


def _chunked(m, inputs) -> Mod:
    c = m.sizes["chunk"]
    return lambda b, h, i, j: (i // c == j // c) & (j <= i)


def _strided(m, inputs) -> Mod:
    block, stride = m.sizes["block"], m.sizes["stride"]

    def mask(b, h, i, j):
        bi, bj = i // block, j // block
        return ((bi == bj) | ((bi - bj) % stride == 0)) & (j <= i)
    return mask


def _alibi_score(m, inputs) -> Mod:
    slope = m.slope.detach()
    return lambda score, b, h, i, j: score - slope[h].to(score.dtype) * (i - j)


def _decay(heads: int, n: int, device, dtype) -> torch.Tensor:
    """retention's (1 - 2^(-5-h))^(i - j) on [1, H, n, n] (masked to j <= i by the family's mask)."""
    h = torch.arange(heads, device=device, dtype=dtype)
    gamma = 1.0 - 2.0 ** (-5.0 - h)
    idx = torch.arange(n, device=device)
    dist = (idx[:, None] - idx[None, :]).clamp_min(0).to(dtype)
    return gamma.view(1, -1, 1, 1) ** dist


def toeplitz_rpe(m, n: int, dtype=torch.float32) -> torch.Tensor:
    """c[t + n - 1] = exp(rpe[t + max_len - 1]) for t = i - j in [-(n - 1), n - 1] (indices clamped, as attncc)."""
    t = torch.arange(-(n - 1), n, device=m.rpe.device) + m.sizes["max_len"] - 1
    return torch.exp(m.rpe.detach()[t.clamp(0, m.rpe.shape[0] - 1)].to(dtype))


def _rings(m, n: int, device, dtype) -> torch.Tensor:
    """ripple's exp(ring[h, min(chebyshev distance on the width-wide grid, rings)]) on [H, n, n]."""
    w, idx = m.sizes["width"], torch.arange(n, device=device)
    dist = torch.maximum((idx[:, None] // w - idx[None, :] // w).abs(), (idx[:, None] % w - idx[None, :] % w).abs())
    return torch.exp(m.ring.detach().to(dtype)[:, dist.clamp_max(m.sizes["rings"])])


@dataclass(frozen=True)
class Family:
    """How to write one example with the baselines. Softmax families: mask / score mods. Kernelized
    families (normalize rows | none): the feature map of q and k, an optional mask and modulation."""

    softmax: bool
    mask: Callable | None = None  # (module, inputs) -> mask_mod
    score: Callable | None = None  # (module, inputs) -> score_mod
    sdpa_causal: bool | None = None  # SDPA's flash backend computes it (is_causal)
    feature: str | None = None  # "elu1", "identity" or "random" (the module's own random features)
    modulation: str | None = None  # "toeplitz" (f(i - j) = exp(rpe)), "decay" (retention), "rings" (ripple)
    fla: str | None = None  # "linear" or "retention"


FAMILIES: dict[str, Family] = {
    "softmax": Family(True, sdpa_causal=False),
    "causal": Family(True, mask=lambda m, x: causal, sdpa_causal=True),
    "sliding_window": Family(True, mask=_window),
    "alibi": Family(True, mask=lambda m, x: causal, score=_alibi_score),
    "document": Family(True, mask=_document),
    "hypercube": Family(True, mask=_hypercube),
    "block_diagonal": Family(True, mask=_chunked),
    "strided": Family(True, mask=_strided),
    "linear_elu": Family(False, feature="elu1"),
    "linear_elu_causal": Family(False, mask=lambda m, x: causal, feature="elu1", fla="linear"),
    "retention": Family(False, mask=lambda m, x: causal, feature="identity", modulation="decay", fla="retention"),
    "toeplitz_linear": Family(False, feature="elu1", modulation="toeplitz"),
    "performer": Family(False, feature="random"),
    "rpe_performer": Family(False, feature="random", modulation="toeplitz"),
    "ripple": Family(False, feature="elu1", modulation="rings"),
}


def grid_mask(mask_mod: Mod, batch: int, heads: int, nq: int, n: int, device, rows: slice | None = None):
    """mask_mod evaluated on broadcast int32 index grids: a bool tensor broadcastable to [B, H, Nq, N]."""
    ar = lambda k: torch.arange(k, device=device, dtype=torch.int32)
    i = ar(nq)[rows] if rows is not None else ar(nq)
    return mask_mod(ar(batch).view(-1, 1, 1, 1), ar(heads).view(1, -1, 1, 1), i.view(1, 1, -1, 1),
                    ar(n).view(1, 1, 1, -1))


def features(fam: Family, m, q, k):
    if fam.feature == "random":
        return m.featurize(q, k)
    if fam.feature == "elu1":
        return F.elu(q) + 1, F.elu(k) + 1
    return q, k


def naive(fam: Family, m, inputs: dict, q, k, v):
    """The dense formula in q's dtype: softmax(s + score_mod, masked) v, or (phi(q) phi(k)^T o M) v / rowsum."""
    B, H, Nq, D = q.shape
    N = k.shape[2]
    mask = grid_mask(fam.mask(m, inputs), B, H, Nq, N, q.device) if fam.mask else None
    if fam.softmax:
        s = (q @ k.transpose(-1, -2)) * D ** -0.5
        if fam.score:
            s = grid_mask(lambda b, h, i, j: fam.score(m, inputs)(s, b, h, i, j), B, H, Nq, N, q.device).to(s.dtype)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        return torch.softmax(s, dim=-1) @ v
    pq, pk = features(fam, m, q, k)
    w = pq @ pk.transpose(-1, -2)
    exact = torch.float64 if w.dtype == torch.float64 else torch.float32  # of the modulation
    if fam.modulation == "decay":
        w = w * _decay(H, N, q.device, exact).to(w.dtype)
    elif fam.modulation == "toeplitz":
        idx = torch.arange(N, device=q.device)
        w = w * toeplitz_rpe(m, N, exact)[idx[:, None] - idx[None, :] + N - 1].to(w.dtype)
    elif fam.modulation == "rings":
        w = w * _rings(m, N, q.device, exact).to(w.dtype)
    if mask is not None:
        w = w.masked_fill(~mask, 0.0)
    if m.checked.normalize == "none":
        return w @ v
    return (w @ v) / (w.sum(-1, keepdim=True) + m.checked.eps)


def fft_naive(fam: Family, m, q, k, v):
    """Toeplitz kernelized attention through torch.fft in float32, the straightforward way:
    y_i = sum_j f(i - j) x_j for x_j = [phi(k_j) v_j^T, phi(k_j)] (N x (m e + m) per head)."""
    pq, pk = (t.float() for t in features(fam, m, q, k))
    v = v.float()
    B, H, N, mf = pk.shape
    e = v.shape[-1]
    length = 2 * N
    x = torch.cat([(pk[..., :, None] * v[..., None, :]).flatten(-2), pk], dim=-1)
    c = toeplitz_rpe(m, N)  # f(t) for t = -(N-1)..N-1; circular kernel: g[t] = f(t), g[length + t] = f(t < 0)
    g = torch.zeros(length, device=q.device)
    g[:N] = c[N - 1:]
    g[length - (N - 1):] = c[:N - 1]
    y = torch.fft.irfft(torch.fft.rfft(x, n=length, dim=2) * torch.fft.rfft(g).view(1, 1, -1, 1), n=length, dim=2)[:, :, :N]
    num = torch.einsum("bhim,bhime->bhie", pq, y[..., :mf * e].reshape(B, H, N, mf, e))
    den = torch.einsum("bhim,bhim->bhi", pq, y[..., mf * e:])[..., None]
    return (num / (den + m.checked.eps)).to(q.dtype)


def sdpa(fam: Family, q, k, v):
    """(fn, backend name): SDPA forced to the flash backend where this build and device have it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def flash():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=fam.sdpa_causal)
    try:
        flash()
        return flash, "flash"
    except RuntimeError:
        return (lambda: F.scaled_dot_product_attention(q, k, v, is_causal=fam.sdpa_causal)), "default (no flash)"


_FLEX = {}


def flex_function(compiled: bool):
    """flex_attention, compiled once per process with dynamic=False and raised recompile limits
    (every mask and length recompiles; past the limit dynamo would fall back to the slow eager path)."""
    from torch.nn.attention.flex_attention import flex_attention
    if not compiled:
        def eager(*args, **kwargs):
            with warnings.catch_warnings():  # "called without torch.compile()": that is the point here
                warnings.simplefilter("ignore", UserWarning)
                return flex_attention(*args, **kwargs)
        return eager
    if "fn" not in _FLEX:
        import torch._dynamo
        for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                     "accumulated_cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(4096, getattr(torch._dynamo.config, name)))
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX["fn"]


def flex(fam: Family, m, inputs: dict, q, k, v, compiled: bool):
    """(fn, make_block_mask): Flex with the family's mods; make_block_mask() builds the BlockMask
    (timed on its own: it is the per-call mask construction a Flex user pays)."""
    from torch.nn.attention.flex_attention import create_block_mask
    B, H, Nq, _ = q.shape
    N = k.shape[2]
    mask_mod = fam.mask(m, inputs) if fam.mask else None
    score_mod = fam.score(m, inputs) if fam.score else None
    per_batch = fam.mask is _document

    def make_block_mask():
        if mask_mod is None:
            return None
        return create_block_mask(mask_mod, B if per_batch else None, None, Nq, N, device=q.device)
    block_mask = make_block_mask()
    fn = flex_function(compiled)
    return (lambda: fn(q, k, v, score_mod=score_mod, block_mask=block_mask)), (make_block_mask if mask_mod else None)


def fla(fam: Family, q, k, v):
    """(fn, unpack): fla's chunk kernel on [B, T, H, K] inputs (transposed once, outside the timing);
    unpack(out) returns [B, H, T, V]. Raises ImportError when fla is not installed."""
    if fam.fla == "linear":
        from fla.ops.linear_attn import chunk_linear_attn
        pq, pk = ((F.elu(t) + 1).transpose(1, 2).contiguous() for t in (q, k))
        vt = v.transpose(1, 2).contiguous()
        return (lambda: chunk_linear_attn(pq, pk, vt, scale=1.0, normalize=True)[0]), lambda o: o.transpose(1, 2)
    from fla.ops.retention import chunk_retention
    qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    return (lambda: chunk_retention(qt, kt, vt, scale=1.0)[0]), lambda o: o.transpose(1, 2)
