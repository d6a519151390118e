"""What a user would run instead of an attncc module, per example family (for `attncc bench`).

  sdpa   torch.nn.functional.scaled_dot_product_attention on the flash backend; full and causal
         softmax only (the flash backend takes no mask)
  flex   torch FlexAttention with the family's mask_mod / score_mod and a BlockMask; compiled with
         dynamic=False on CUDA (eager off CUDA, where it materializes the scores)
  fla    flash-linear-attention chunk kernels: chunk_linear_attn (causal elu+1 linear attention),
         chunk_retention (decay (1 - 2^(-5-h))^(i-j)); inputs in fla's [B, T, H, K] layout;
         for the issue 14 variants chunk_simple_gla, chunk_gla and parallel_based (VARIANTS below)
  naive  the textbook dense formula in the input dtype, materializing the N x N scores / weights
  fft    naive torch FFT for Toeplitz-modulated kernelized attention: phi(k) v^T (N x m x e) and
         phi(k) convolved with f(i - j) along the tokens by torch.fft, then contracted with phi(q)

Grouped k, v (fewer heads than q): SDPA and Flex get `enable_gqa=True`, naive expands them with
repeat_interleave (what a user without grouped kernels writes), fla's kernels take none (skipped).
A baseline that has no form of a spec raises Unavailable (a row with the reason, never dropped).

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


class Unavailable(Exception):
    """This baseline has no form of this spec (the message says why); the table shows it, never drops it."""


def expand_kv(q, k, v):
    """k, v repeated to q's heads (query head h reads kv head h // (H / Hkv)): naive torch's GQA."""
    group = q.shape[1] // k.shape[1]
    return (k, v) if group == 1 else (k.repeat_interleave(group, 1), v.repeat_interleave(group, 1))


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
    sdpa_bias: bool = False  # SDPA with the mask and score_mod materialized as a float attn_mask [H, N, N]
    custom: Callable | None = None  # (baseline, module, inputs, q, k, v, compiled) -> (fn, unpack, note)
    offers: tuple = ()  # with custom: the baselines it builds or explains (raising Unavailable), report order


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
    if fam.custom is not None:
        fn, unpack, _ = fam.custom("naive", m, inputs, q, k, v, False)
        return unpack(fn())
    k, v = expand_kv(q, k, v)
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


def sdpa(fam: Family, q, k, v, m=None, inputs=None, scale=None):
    """(fn, backend name): SDPA forced to the flash backend where this build and device have it
    (`enable_gqa` for grouped k, v); with fam.sdpa_bias, the mask and score_mod as a float attn_mask
    built once outside the timing, on torch's choice of backend (flash takes no mask)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    opts = {"enable_gqa": True} if k.shape[1] != q.shape[1] else {}
    if scale is not None:
        opts["scale"] = scale
    if fam.sdpa_bias:
        B, H, Nq, _ = q.shape
        bias = grid_mask(lambda b, h, i, j: fam.score(m, inputs)(torch.zeros((), device=q.device), b, h, i, j),
                         1, H, Nq, k.shape[2], q.device).to(q.dtype)
        bias = bias.masked_fill(~grid_mask(fam.mask(m, inputs), 1, H, Nq, k.shape[2], q.device), float("-inf"))
        return (lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias, **opts)), \
            "default (the mask and score_mod as a float bias [H, N, N] built outside the timing)"

    def flash():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=fam.sdpa_causal, **opts)
    try:
        flash()
        return flash, "flash"
    except RuntimeError:
        return (lambda: F.scaled_dot_product_attention(q, k, v, is_causal=fam.sdpa_causal, **opts)), \
            "default (no flash)"


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


def flex(fam: Family, m, inputs: dict, q, k, v, compiled: bool, scale=None, lse=False):
    """(fn, make_block_mask): Flex with the family's mods (`enable_gqa` for grouped k, v);
    make_block_mask() builds the BlockMask (timed on its own: the per-call mask construction a Flex
    user pays). lse: fn returns (out, logsumexp of each row's scores)."""
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
    opts = {"enable_gqa": k.shape[1] != q.shape[1], "scale": scale}
    if lse:
        opts.update(_lse_request())

    def call():
        out = fn(q, k, v, score_mod=score_mod, block_mask=block_mask, **opts)
        return out if not lse else (out[0], out[1].lse if hasattr(out[1], "lse") else out[1])
    return call, (make_block_mask if mask_mod else None)


def _lse_request() -> dict:
    """Flex's request for the row logsumexp: return_aux=AuxRequest(lse=True) where this torch has it
    (return_lse is deprecated there), else return_lse=True."""
    try:
        from torch.nn.attention.flex_attention import AuxRequest
        return {"return_aux": AuxRequest(lse=True)}
    except ImportError:
        return {"return_lse": True}


def fla(fam: Family, q, k, v):
    """(fn, unpack): fla's chunk kernel on [B, T, H, K] inputs (transposed once, outside the timing);
    unpack(out) returns [B, H, T, V]. Raises ImportError when fla is not installed."""
    if k.shape[1] != q.shape[1]:
        raise Unavailable("fla's chunk kernels take k, v with q's heads")
    if fam.fla == "linear":
        from fla.ops.linear_attn import chunk_linear_attn
        pq, pk = ((F.elu(t) + 1).transpose(1, 2).contiguous() for t in (q, k))
        vt = v.transpose(1, 2).contiguous()
        return (lambda: chunk_linear_attn(pq, pk, vt, scale=1.0, normalize=True)[0]), lambda o: o.transpose(1, 2)
    from fla.ops.retention import chunk_retention
    qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    return (lambda: chunk_retention(qt, kt, vt, scale=1.0)[0]), lambda o: o.transpose(1, 2)


# ---------------------------------------------------------------------- issue 14's variants
# Each variant's baselines are written out by custom(baseline, m, inputs, q, k, v, compiled) ->
# (fn, unpack, note): the inputs a baseline needs in its own layout are prepared once, outside the timing.

def _t(x):
    """[B, H, T, K] -> fla's [B, T, H, K], contiguous."""
    return x.transpose(1, 2).contiguous()


def _untranspose(out):
    return out.transpose(1, 2)


def _exact(q):
    """Where gates and mixing weights are computed: float64 for float64 inputs, else float32."""
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _same_heads(q, k):
    if k.shape[1] != q.shape[1]:
        raise Unavailable("fla's kernels take k, v with q's heads")


def _per_step(g, axis: int):
    """Cumulative log-gates back to fla's per-step ones: g_t - g_(t-1) along the token axis."""
    return torch.diff(g, dim=axis, prepend=torch.zeros_like(g.narrow(axis, 0, 1)))


def _batched(x, batch: int, dims: int):
    """An input given without its batch axis, broadcast to [B, ...]."""
    return x if x.dim() == dims + 1 else x.expand(batch, *x.shape)


def _gated_naive(q, k, v, gate, scale: float):
    """sum_d q_id k_jd exp(G_id - G_jd) masked to j <= i, times v, no normalizer. gate [B, H, N, D or 1]
    is the cumulative log-gate. Materialized as q exp(G - c) (k exp(c - G))^T in float64, c the middle
    of G's range per (b, h, d): factors stay within exp(+-range / 2) (fine to N = 16k at realistic
    gates; beyond, inf in masked entries only, overwritten); j <= i products are <= 1."""
    gate = gate.double()
    c = (gate.amax(2, keepdim=True) + gate.amin(2, keepdim=True)) / 2
    w = (q.double() * torch.exp(gate - c)) @ (k.double() * torch.exp(c - gate)).transpose(-1, -2)
    n = q.shape[2]
    causal_ = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    return ((w * scale).masked_fill(~causal_, 0.0) @ v.double()).to(q.dtype)


def _simple_gla(name, m, inputs, q, k, v, compiled):
    B, H, N, D = q.shape
    g = _batched(inputs["g"], B, 2).to(_exact(q))  # [B, H, N] cumulative
    if name == "naive":
        k, v = expand_kv(q, k, v)
        def run():
            w = (q @ k.transpose(-1, -2)).to(g.dtype) * D ** -0.5
            decay = torch.exp((g[..., :, None] - g[..., None, :]).clamp_max(0)).tril()
            return (w * decay).to(q.dtype) @ v
        return run, lambda o: o, "dense: scores x exp(g_i - g_j) [B, H, N, N]"
    _same_heads(q, k)
    from fla.ops.simple_gla import chunk_simple_gla
    qt, kt, vt, gt = _t(q), _t(k), _t(v), _per_step(g.float(), -1).transpose(1, 2).contiguous()  # g: [B, T, H] per step
    return (lambda: chunk_simple_gla(qt, kt, vt, g=gt, scale=D ** -0.5)[0]), _untranspose, \
        "chunk_simple_gla, per-step log-gates"


def _gla(name, m, inputs, q, k, v, compiled):
    B, H, N, D = q.shape
    G = _batched(inputs["G"], B, 3).float()  # [B, H, N, D] cumulative
    if name == "naive":
        k, v = expand_kv(q, k, v)
        return (lambda: _gated_naive(q, k, v, G, D ** -0.5)), lambda o: o, "dense factorized, float64"
    _same_heads(q, k)
    from fla.ops.gla import chunk_gla
    qt, kt, vt, gt = _t(q), _t(k), _t(v), _t(_per_step(G, 2))
    return (lambda: chunk_gla(qt, kt, vt, g=gt, scale=D ** -0.5)[0]), _untranspose, "chunk_gla, per-step log-gates"


def _based(name, m, inputs, q, k, v, compiled):
    D = q.shape[-1]
    if name == "naive":
        k, v = expand_kv(q, k, v)

        def run():
            s = (q @ k.transpose(-1, -2)) * D ** -0.5
            w = (1 + s + s * s / 2).tril()
            return (w @ v) / (w.sum(-1, keepdim=True) + m.checked.eps)
        return run, lambda o: o, "dense 1 + s + s^2 / 2"
    _same_heads(q, k)
    from fla.ops.based import parallel_based  # fused_chunk_based takes feature dims up to 16 only
    qt, kt, vt = _t(q), _t(k), _t(v)
    return (lambda: parallel_based(qt, kt, vt, scale=D ** -0.5, use_norm=True)), _untranspose, \
        "parallel_based (quadratic; fused_chunk_based needs d <= 16)"


def _sinks(name, m, inputs, q, k, v, compiled):
    fam = FAMILIES["sinks"]
    sink = m.sink.detach()
    if name == "sdpa":
        raise Unavailable("SDPA has no sink term (a logit in the denominator that takes no value)")
    if name == "flex":  # no sink in Flex: rescale by the row's logsumexp, o * sigmoid(lse - sink)
        fn, make_mask = flex(fam, m, inputs, q, k, v, compiled, lse=True)

        def run():
            out, lse = fn()
            return out * torch.sigmoid(lse.float() - sink.float().view(1, -1, 1)).unsqueeze(-1).to(out.dtype)
        return run, lambda o: o, "no sink in Flex: o * sigmoid(lse - sink[h]) from return_aux lse"
    kk, vv = expand_kv(q, k, v)
    B, H, N, D = q.shape
    mask = grid_mask(fam.mask(m, inputs), B, H, N, N, q.device)

    def run():
        s = ((q @ kk.transpose(-1, -2)) * D ** -0.5).masked_fill(~mask, float("-inf"))
        s = torch.cat([s, sink.to(s.dtype).view(1, H, 1, 1).expand(B, H, N, 1)], -1)
        return torch.softmax(s, -1)[..., :N] @ vv
    return run, lambda o: o, "dense, the sink as an extra column"


def _mla(name, m, inputs, q, k, v, compiled):
    """The decoupled RoPE part as extra columns: [q, q_rope] . [k, k_rope] / sqrt(D + R), what
    DeepSeek's code feeds to its attention kernel (concatenated once, outside the timing)."""
    B, H, N, D = q.shape
    qr = _batched(inputs["q_rope"], B, 3).to(q.dtype)
    R = qr.shape[-1]
    kr = _batched(inputs["k_rope"], B, 2).to(q.dtype)[:, None].expand(B, k.shape[1], N, R)  # shared by heads
    qc, kc = torch.cat([q, qr], -1), torch.cat([k, kr], -1)
    scale = (D + R) ** -0.5
    fam = FAMILIES["causal"]
    if name == "sdpa":
        fn, kind = sdpa(fam, qc, kc, v, scale=scale)
        return fn, lambda o: o, f"on [q, q_rope], [k, k_rope]; backend: {kind}"
    if name == "flex":
        return flex(fam, m, inputs, qc, kc, v, compiled, scale=scale)[0], lambda o: o, "on [q, q_rope], [k, k_rope]"
    kk, vv = expand_kv(qc, kc, v)
    mask = grid_mask(causal, 1, 1, N, N, q.device)
    return (lambda: torch.softmax(((qc @ kk.transpose(-1, -2)) * scale).masked_fill(~mask, float("-inf")), -1) @ vv), \
        lambda o: o, "dense on the concatenated rows"


def _diff_transformer(name, m, inputs, q, k, v, compiled):
    """Two causal softmax maps over the halves of q, k (scale 1 / sqrt(D / 2)), o1 - lam[h] o2."""
    half = q.shape[-1] // 2
    lam = m.lam.detach().to(q.dtype).view(1, -1, 1, 1)
    halves = [(q[..., s].contiguous(), k[..., s].contiguous()) for s in (slice(0, half), slice(half, None))]
    fam = FAMILIES["causal"]
    if name == "sdpa":
        (f1, kind), (f2, _) = (sdpa(fam, qh, kh, v) for qh, kh in halves)
        return (lambda: f1() - lam * f2()), lambda o: o, f"two SDPA calls; backend: {kind}"
    if name == "flex":
        f1, f2 = (flex(fam, m, inputs, qh, kh, v, compiled)[0] for qh, kh in halves)
        return (lambda: f1() - lam * f2()), lambda o: o, "two Flex calls"
    mask = grid_mask(causal, 1, 1, q.shape[2], k.shape[2], q.device)
    vv = expand_kv(q, k, v)[1]

    def one(qh, kh):
        kh = expand_kv(qh, kh, kh)[0]
        return torch.softmax(((qh @ kh.transpose(-1, -2)) * half ** -0.5).masked_fill(~mask, float("-inf")), -1) @ vv
    return (lambda: one(*halves[0]) - lam * one(*halves[1])), lambda o: o, "dense, two softmax maps"


def _gated_mix(name, m, inputs, q, k, v, compiled):
    """sigmoid(mix[h]) softmax-causal + (1 - sigmoid(mix[h])) elu1-linear-causal."""
    a = torch.sigmoid(m.mix.detach().to(_exact(q))).to(q.dtype).view(1, -1, 1, 1)
    lin_fam = FAMILIES["linear_elu_causal"]
    if name == "fla":
        soft, _ = sdpa(FAMILIES["causal"], q, k, v)
        lin, unpack = fla(lin_fam, q, k, v)
        return (lambda: a * soft() + (1 - a) * unpack(lin())), lambda o: o, \
            "SDPA flash (softmax map) + fla chunk_linear_attn (linear map)"
    soft = lambda: naive(FAMILIES["causal"], m, inputs, q, k, v)  # noqa: E731
    eps = m.checked.maps["lin"].eps
    lin = lambda: _linear_naive(q, k, v, eps)  # noqa: E731
    return (lambda: a * soft() + (1 - a) * lin()), lambda o: o, "dense, both maps"


def _linear_naive(q, k, v, eps: float):
    k, v = expand_kv(q, k, v)
    w = ((F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-1, -2)).tril()
    return (w @ v) / (w.sum(-1, keepdim=True) + eps)


def _sink_window(m, inputs) -> Mod:
    w = m.sizes["window"]
    return lambda b, h, i, j: (j <= i) & (i - j < w)


FAMILIES.update({
    "gqa": Family(True, mask=lambda m, x: causal, score=_alibi_score, sdpa_bias=True),
    "sinks": Family(True, mask=_sink_window, custom=_sinks, offers=("sdpa", "flex", "naive")),
    "mla": Family(True, mask=lambda m, x: causal, custom=_mla, offers=("sdpa", "flex", "naive")),
    "diff_transformer": Family(True, custom=_diff_transformer, offers=("sdpa", "flex", "naive")),
    "gated_mix": Family(True, custom=_gated_mix, offers=("fla", "naive")),
    "simple_gla": Family(False, mask=lambda m, x: causal, custom=_simple_gla, offers=("fla", "naive")),
    "gla": Family(False, mask=lambda m, x: causal, custom=_gla, offers=("fla", "naive")),
    "based": Family(False, mask=lambda m, x: causal, custom=_based, offers=("fla", "naive")),
})
