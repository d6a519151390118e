"""The dense reference: float64, materializes W[b, h, i, j], straight from the checked spec.

    softmax:     W = mask * exp(s - max_j s)        out = W V / sum_j W      (rows with no key: 0)
      sink c_i:  softmax over the row's logits and one more column c_i, that column dropped:
                 out = W V / (sum_j W + exp(c_i - max_j s))  (rows with no key: 0, the sink takes all)
    rows / none: W = mask * weight                  out = W V / (sum_j W + eps)  |  W V
(a row whose normalizer is exactly 0 gives 0, never NaN)
It shares nothing with the emitted backends except the expression semantics (attncc.lang.evaluate and attncc.lang.operators).
"""
from __future__ import annotations

import torch

from .approx import lara_weights, mra_weights, ra_weights
from .ista import dense_ista
from .pool import dense_pool
from .rows import dense_dot
from ..frontend.check import CheckedSpec, favor_kernelized
from ..lang.evaluate import Env, evaluate
from ..lang.expr import TExpr
from ..lang.features import FEATURE_MAPS, apply_feature_map, random_features
from ..lang.normalizers import normalizer

APPROX_WEIGHTS = ("mra", "lara", "ra")  # approximations with a dense matrix of their own (favor is kernelized)


def query_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """Key or value rows x [B, Hkv, n, d] as [B, heads, n, d]: query head h reads key/value head
    h // (heads / Hkv) (grouped-query attention; heads of one group are adjacent). A copy: the
    reference is dense."""
    return x if x.shape[1] == heads else x.index_select(1, torch.arange(heads, device=x.device) // (heads // x.shape[1]))


def gradient_only_where(x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """x, with its gradient zeroed at masked pairs: a score may be undefined there (inf or NaN, e.g.
    dot / (i - j) on the diagonal), and 0 * inf would poison the gradients of q and k."""
    if x.requires_grad:
        x.register_hook(lambda g: None if g is None else g.masked_fill(~visible, 0.0))
    return x


def plain_row(t: TExpr) -> bool:
    """`q[i]`, `k[j]` or a feature map of one (other rows: attncc/oracle/rows.py)."""
    return t.op in ("qrow", "krow") or (t.op == "feature" and t.args[0].op in ("qrow", "krow"))


def feature_rows(spec: CheckedSpec, t: TExpr, x: torch.Tensor, projections: dict | None) -> torch.Tensor:
    """A dot side `phi(q[i])` / `k[j]` on rows x: through its map (random maps by their projection)."""
    if t.op != "feature":
        return x
    if t.value in FEATURE_MAPS:
        return apply_feature_map(t.value, x)
    return random_features(spec.features[t.value].fn, x, projections[t.value])  # at the precision of x


def dense_weights(spec: CheckedSpec, q, k, params: dict, inputs: dict, sizes: dict, e_dim: int = 0,
                  projections: dict | None = None, noise=None, rows: torch.Tensor | None = None,
                  dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """W[b, h, i, j] in `dtype` (softmax: the normalized probabilities), differentiable in q, k and
    the tables.

    projections: the random-feature projection [m, D] of each declared random map, by name.
    noise: the random draw of a sampling approximation (attncc/lang/approx_math.py).
    rows: query indices to evaluate (a sample of rows; i takes their values), all rows if None."""
    spec = favor_kernelized(spec)
    Hkv, k = k.shape[1], query_heads(k, q.shape[1])  # the reference reads k per query head
    if spec.approx is not None and spec.approx.method in APPROX_WEIGHTS:
        opts = spec.approx.options
        if spec.approx.method == "mra":
            w = mra_weights(q, k, **opts)
        elif spec.approx.method == "lara":
            w = lara_weights(q, k, landmarks=opts["landmarks"], alpha=opts["alpha"], noise=noise)
        else:
            w = ra_weights(q, k, noise=noise)
        return (w if rows is None else w[:, :, rows.long()]).to(dtype)
    _row = lambda t, x: feature_rows(spec, t, x, projections)
    q, k = q.to(dtype), k.to(dtype)
    B, H, Nq, D = q.shape
    N = k.shape[2]
    i = torch.arange(Nq, device=q.device, dtype=torch.int32) if rows is None else \
        rows.to(device=q.device, dtype=torch.int32)
    q = q if rows is None else q[:, :, rows.long()]
    env = pair_env(sizes, {"N": N, "Nq": Nq, "H": H, "D": D, "E": e_dim, "Hkv": Hkv}, i,
                   {n: p.to(dtype) if p.is_floating_point() else p for n, p in params.items()}, inputs, dtype, B)
    shape = (B, H, len(i), N)
    mask = evaluate_mask(spec, env, shape, q.device)

    dims = {name: info.dims for name, info in spec.inputs.items()}

    def dot(t: TExpr) -> torch.Tensor:
        if all(plain_row(s) for s in t.args):
            return gradient_only_where(torch.einsum("bhid,bhjd->bhij", _row(t.args[0], q), _row(t.args[1], k)), mask)
        return gradient_only_where(dense_dot(t, q, k, env, dims, _row), mask)

    env.dot = dot
    if normalizer(spec).online_softmax:
        s = evaluate(spec.logits, env).to(dtype).expand(shape).masked_fill(~mask, float("-inf"))
        if spec.sink is not None:
            return sink_softmax(s, torch.as_tensor(evaluate(spec.sink, env), device=q.device).to(dtype))
        top = s.amax(-1, keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        w = torch.exp(s - top)
        z = w.sum(-1, keepdim=True)
        return w / torch.where(z == 0, torch.ones_like(z), z)
    return torch.where(mask, evaluate(spec.weight, env).to(dtype).expand(shape), torch.zeros((), dtype=dtype))


def sink_softmax(s: torch.Tensor, sink: torch.Tensor) -> torch.Tensor:
    """softmax of each row [s_i0 .. s_iN, c_i] with its last column (the sink c, broadcastable to
    [B, H, Nq, 1]) dropped: exp(s_ij) / (sum_j exp(s_ij) + exp(c_i))."""
    while sink.dim() < 4:
        sink = sink.unsqueeze(0)
    column = sink.expand(*s.shape[:3], 1)
    empty = torch.isneginf(s).all(-1, keepdim=True) & torch.isneginf(column)  # nothing in the denominator
    column = torch.where(empty, torch.zeros_like(column), column)  # ... the row is 0, as without a sink
    return torch.softmax(torch.cat([s, column], dim=-1), dim=-1)[..., :-1]


def pair_env(sizes: dict, rsizes: dict, i: torch.Tensor, params: dict, inputs: dict,
             float_dtype: torch.dtype, batch: int) -> Env:
    """The evaluation environment of the pair grid: query tokens i (int32, on the computation's
    device), every key token j < N, head h < H and batch row b < batch, as [B, H, Nq, N]-broadcastable
    index tensors."""
    grid = lambda n: torch.arange(n, device=i.device, dtype=torch.int32)
    N, H = rsizes["N"], rsizes["H"]
    return Env(sizes=sizes, rsizes=rsizes, i=i.view(1, 1, -1, 1), j=grid(N).view(1, 1, 1, N),
               h=grid(H).view(1, H, 1, 1), b=grid(batch).view(batch, 1, 1, 1), params=params, inputs=inputs,
               float_dtype=float_dtype)


def evaluate_mask(spec: CheckedSpec, env: Env, shape: tuple, device) -> torch.Tensor:
    """The spec's mask as bool of `shape` [B, H, Nq, N] over env's grid (all true without a mask);
    in float32 arithmetic, as kernels evaluate it: one well-defined set (env is left as it was)."""
    if spec.mask is None:
        return torch.ones((), dtype=torch.bool, device=device).expand(shape)
    float_dtype, env.float_dtype = env.float_dtype, torch.float32
    try:
        return evaluate(spec.mask, env).to(device).expand(shape)
    finally:
        env.float_dtype = float_dtype


def dense_mask(spec: CheckedSpec, params: dict, inputs: dict, sizes: dict, shape: tuple) -> torch.Tensor:
    """The pairs the mask keeps, bool [B, H, Nq, N] (shape), with these tables and inputs."""
    B, H, Nq, N = shape
    rsizes = {"N": N, "Nq": Nq, "H": H, "D": sizes.get("D", 0), "E": sizes.get("E", 0)}
    env = pair_env(sizes, rsizes, torch.arange(Nq, dtype=torch.int32), params, inputs, torch.float32, B)
    return evaluate_mask(spec, env, shape, "cpu")


def dense_probabilities(spec: CheckedSpec, q, k, params: dict, inputs: dict, sizes: dict, e_dim: int = 0,
                        projections: dict | None = None, noise=None, rows: torch.Tensor | None = None,
                        dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """P[b, h, i, j] with out = P V: W, divided by its row sums (+ eps) for `normalize rows`
    (D^-1 (M o phi(Q) phi(K)^T) for kernelized specs); arguments as for dense_weights."""
    spec = favor_kernelized(spec)
    w = dense_weights(spec, q, k, params, inputs, sizes, e_dim, projections, noise, rows, dtype)
    if normalizer(spec).divides_by_row_sum:
        z = w.sum(-1, keepdim=True) + spec.eps
        w = w / torch.where(z == 0, torch.ones_like(z), z)  # a row with nothing to normalize: 0
    return w


def dense_attention(spec: CheckedSpec, q, k, v, params: dict, inputs: dict, sizes: dict,
                    projections: dict | None = None, noise=None) -> torch.Tensor:
    """out[b, h, i, :] in float64."""
    spec = favor_kernelized(spec)
    if spec.pool is not None:  # ContextPool: k and/or v pooled by the dense matrix first (attncc/oracle/pool.py)
        k, v = dense_pool(spec.pool, k, v, params)
    v = query_heads(v, q.shape[1])  # grouped-query attention: k is read per query head in dense_weights
    if not normalizer(spec).fixed_weights:  # ista: the unrolled solver, naively (attncc/oracle/ista.py)
        phi_q = feature_rows(spec, spec.weight.args[0], q.double(), projections)
        phi_k = feature_rows(spec, spec.weight.args[1], query_heads(k, q.shape[1]).double(), projections)
        return dense_ista(spec, phi_q, phi_k, v)
    v = v.double()
    return dense_probabilities(spec, q, k, params, inputs, sizes, v.shape[-1], projections, noise) @ v
