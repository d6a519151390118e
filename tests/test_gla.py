"""Gated linear attention with per-dimension gates (GLA, Yang et al. 2023):
W[i, j] = sum_d q_id k_jd exp(G_id - G_jd) on j <= i, G a cumulative log-gate per key dimension.

The chunked algorithm (attncc.rt.gated_linear_attention with a gate row per token) against the dense
definition (differences formed before the exp, masked) and against the naive recurrence of
flash-linear-attention's GLA, re-derived here: S_t = diag(exp(g_t)) S_(t-1) + k_t v_t^T, o_t = q_t S_t,
g_t = G_t - G_(t-1) the per-step log-gate. Then the language: examples/gla.attn and the spellings of
the gate the analysis finds (analysis/row_gates.py), lowered to `linear_gated` with a gate row."""
from dataclasses import replace

import pytest
import sympy
import torch

import attncc
from attncc import rt
from attncc.analysis.row_gates import row_gate_form, row_gate_holds
from attncc.analysis.structure import I, J
from attncc.lang.expr import FLOAT, TExpr
from attncc.ir.graph import N, expr_of
from attncc.lang.operators import fmt
from attncc.tools.compare import compare, make_module, random_inputs

from .conftest import ROOT


def log_gates(b: int, h: int, n: int, d: int, seed: int, strength: float = 1.0) -> torch.Tensor:
    """[b, h, n, d] cumulative log-gates, as GLA makes them: cumsum(log sigmoid(x)) per dimension."""
    x = torch.randn(b, h, n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.cumsum(torch.nn.functional.logsigmoid(x * strength), -2)


def rows(b, h, n, d, e, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, x, generator=gen, dtype=torch.float64) for x in (d, d, e)]


def dense_gla(q, k, v, G, scale: float, normalize: str = "none", eps: float = 0.0) -> torch.Tensor:
    """The definition: W[i, j] = scale sum_d q_id k_jd exp(G_id - G_jd) on j <= i, the per-dimension
    differences masked before the exp ([Nq, N, d] per head), out = W V (or W V / (W 1 + eps))."""
    nq, n = q.shape[2], k.shape[2]
    causal = torch.ones(nq, n, dtype=torch.bool).tril()[..., None]
    decay = torch.where(causal, G[..., :nq, None, :] - G[..., None, :n, :], -torch.inf).exp()
    w = scale * (q[..., :, None, :] * k[..., None, :, :] * decay).sum(-1)
    if normalize == "rows":
        return (w @ v) / (w.sum(-1, keepdim=True) + eps)
    return w @ v


def naive_recurrence(q, k, v, G, scale: float) -> torch.Tensor:
    """S_t = diag(exp(g_t)) S_(t-1) + k_t v_t^T, o_t = scale q_t S_t, g_t = G_t - G_(t-1): one token at a time."""
    b, h, n, d = q.shape
    state = torch.zeros(b, h, d, v.shape[-1], dtype=q.dtype)
    out = []
    for t in range(n):
        step = torch.exp(G[:, :, t] - G[:, :, t - 1]) if t else torch.ones_like(G[:, :, 0])
        state = step[..., None] * state + k[:, :, t, :, None] * v[:, :, t, None, :]
        out.append(scale * torch.einsum("bhd,bhde->bhe", q[:, :, t], state))
    return torch.stack(out, 2)


def chunked(q, k, v, G, scale, normalize="none", eps=0.0, chunk=64):
    nq, n = q.shape[2], k.shape[2]
    mod = torch.full((1, 1, 1, 1), scale, dtype=v.dtype)
    return rt.gated_linear_attention(q, k, v, modulation=mod, gates=(G[..., :nq, :], G[..., :n, :]),
                                     normalize=normalize, eps=eps, chunk=chunk)


@pytest.mark.parametrize("n, chunk", [(1, 64), (37, 16), (130, 64), (200, 32)])
def test_chunked_forward_matches_the_definition_and_the_recurrence(n, chunk):
    q, k, v = rows(2, 2, n, 8, 4)
    G = log_gates(2, 2, n, 8, seed=1)
    got = chunked(q, k, v, G, 8 ** -0.5, chunk=chunk)
    naive = naive_recurrence(q, k, v, G, 8 ** -0.5)
    assert (got - dense_gla(q, k, v, G, 8 ** -0.5)).abs().max() < 1e-9
    assert (got - naive).abs().max() < 1e-9
    got32 = chunked(q.float(), k.float(), v.float(), G.float(), 8 ** -0.5, chunk=chunk)
    assert ((got32.double() - naive).abs().max() / naive.abs().max()) < 1e-5


def test_strong_gates_stay_finite_and_exact():
    """G falling to about -1000 and beyond over 512 tokens (per dimension, different rates): exp(G_i)
    alone underflows and exp(-G_j) overflows in fp32 and fp64; the chunks exponentiate differences only."""
    n = 512
    q, k, v = rows(1, 2, n, 16, 8, seed=2)
    G = log_gates(1, 2, n, 16, seed=3, strength=-4.0)
    G = G * torch.linspace(0.2, 1.5, 16, dtype=torch.float64)  # some dimensions decay slowly, some fast
    assert G.min() < -1000 and G[..., 0].min() > -1000
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-5)):
        Gr = G.to(dtype).double()  # fp32 rounds gates near -1000 by 1e-4: compare on the rounded ones
        want = naive_recurrence(q, k, v, Gr, 0.25)
        got = chunked(q.to(dtype), k.to(dtype), v.to(dtype), G.to(dtype), 0.25)
        assert torch.isfinite(got).all()
        assert ((got.double() - want).abs().max() / want.abs().max()) < tol


def test_rows_normalizer_and_query_key_lengths():
    q = rows(1, 2, 30, 8, 4)[0].exp()  # positive rows: the row sums are well conditioned
    _, k, v = rows(1, 2, 70, 8, 4, seed=1)
    k = k.exp()
    G = log_gates(1, 2, 70, 8, seed=4)
    got = chunked(q, k, v, G, 1.0, "rows", 1e-6, chunk=16)
    assert (got - dense_gla(q, k, v, G, 1.0, "rows", 1e-6)).abs().max() < 1e-9
    q2, _, _ = rows(1, 2, 90, 8, 4, seed=5)  # Nq > N: the later queries read every key
    G2 = log_gates(1, 2, 90, 8, seed=6)
    got = chunked(q2, k, v, G2, 1.0, chunk=16)
    assert (got - dense_gla(q2, k, v, G2, 1.0)).abs().max() < 1e-9


def test_gradients_of_q_k_v_and_the_gates_match_the_definition():
    q, k, v = (x.requires_grad_() for x in rows(1, 2, 70, 8, 4, seed=7))
    G = log_gates(1, 2, 70, 8, seed=8).requires_grad_()
    w = torch.randn(1, 2, 70, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    got = torch.autograd.grad((chunked(q, k, v, G, 0.5, chunk=32) * w).sum(), (q, k, v, G))
    want = torch.autograd.grad((dense_gla(q, k, v, G, 0.5) * w).sum(), (q, k, v, G))
    for name, a, b in zip("qkvG", got, want):
        assert torch.isfinite(a).all() and (a - b).abs().max() < 1e-9, name


def test_strong_gates_have_finite_gradients():
    q, k, v = (x.requires_grad_() for x in rows(1, 1, 256, 8, 4, seed=10))
    G = (log_gates(1, 1, 256, 8, seed=11, strength=-4.0) * 2).requires_grad_()
    assert G.min() < -1000
    grads = torch.autograd.grad(chunked(q, k, v, G, 0.5).float().sum(), (q, k, v, G))
    assert all(torch.isfinite(g).all() for g in grads)


def test_grouped_query_heads_read_their_key_value_head():
    """k, v of 2 heads under 4 query heads (grouped-query attention), the gates per query head."""
    q = rows(1, 4, 50, 8, 4, seed=12)[0]
    _, k, v = rows(1, 2, 50, 8, 4, seed=13)
    G = log_gates(1, 4, 50, 8, seed=14)
    got = chunked(q, k, v, G, 0.5, chunk=16)
    want = dense_gla(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), G, 0.5)
    assert (got - want).abs().max() < 1e-9


# ---------------------------------------------------------------------- the language: examples/gla.attn
SPEC = """attention gated_rows {{
    input G[H, N, D]
    input g[H, N]
    input G2[H, N, D]
    feature phi = elu1
    weight(i, j) = {weight}
    mask(i, j) = {mask}
    normalize {normalize}
}}"""
GATED = {  # a spelling of the per-dimension gate: G(i) as the analysis finds it
    "dot(q[i] * exp(G[h, i]), k[j] * exp(-G[h, j])) * scale": "G[h, i]",
    "dot(exp(G[h, i]) * q[i], exp(-G[h, j]) * k[j]) * 0.5": "G[h, i]",
    "dot(q[i] * exp(0.5 * G[h, i]) * 2.0, k[j] * exp(-0.5 * G[h, j]))": "(0.5 * G[h, i])",
    "dot(q[i] * exp(G[h, i] + G2[h, i]), k[j] * exp(-G2[h, j] - G[h, j]))": "(G[h, i] + G2[h, i])",
    "dot(q[i] * exp(G[h, i]), k[j] * exp(-G[h, j])) * exp(g[h, i] - g[h, j])": "(G[h, i] + g[h, i])",
}
NOT_GATED = [  # (weight, mask): other gates on the two sides, a row that is not the gate, not causal
    ("dot(q[i] * exp(G[h, i]), k[j] * exp(-G2[h, j]))", "j <= i"),
    ("dot(q[i] * exp(G[h, i]), k[j] * exp(G[h, j]))", "j <= i"),
    ("dot(q[i] * exp(G[h, i]), k[j] * exp(-G[h, j]))", "j >= i"),
    ("dot(q[i] * exp(G[h, i]), k[j] * exp(-G[h, j])) * (i - j)", "j <= i"),
]


def _compile(weight: str, mask: str = "j <= i", normalize: str = "none"):
    return attncc.compile(SPEC.format(weight=weight, mask=mask, normalize=normalize))


@pytest.mark.parametrize("weight", sorted(GATED))
def test_gate_rows_are_found_and_proven(weight):
    cls = _compile(weight)
    assert cls.LOWERING == "linear_gated", weight
    graph = cls.compilation.optimized
    (att,) = graph.find("gated_attend")
    assert graph.node(att).attr("gate_rows")
    assert fmt(expr_of(graph, graph.operands(att)[3])) == GATED[weight]


@pytest.mark.parametrize("weight, mask", NOT_GATED)
def test_other_rows_are_not_gates(weight, mask):
    assert _compile(weight, mask).LOWERING != "linear_gated"


def test_gla_plan_is_linear_in_n_with_memory_linear_in_n():
    cls = attncc.compile(str(ROOT / "examples" / "gla.attn"))
    chosen = cls.compilation.plan.chosen
    assert chosen.name == "linear_gated"
    for cost in (chosen.flops, chosen.working, chosen.saved):
        assert sympy.degree(sympy.expand(cost), N) == 1, cost
    assert "linear_gated" in [c.name for c in cls.compilation.plan.candidates]
    assert "tiled" not in [c.name for c in cls.compilation.plan.candidates]  # no dot of the kept rows


@pytest.mark.parametrize("batched", [True, False], ids=["G per batch row", "G shared"])
def test_example_matches_the_recurrence_with_strong_gates(batched):
    """G falling past -1000 over 512 tokens: the torch module in float64 and float32 against the naive
    recurrence (S_t = diag(exp(g_t)) S_(t-1) + k_t v_t^T), with G per batch row or shared."""
    module = attncc.compile(str(ROOT / "examples" / "gla.attn"))()
    q, k, v = rows(2, 2, 512, 8, 4, seed=20)
    G = log_gates(2, 2, 512, 8, seed=21, strength=-6.0)
    G = G if batched else G[0]
    assert G.min() < -1000
    want = naive_recurrence(q, k, v, G.expand(2, 2, 512, 8), 8 ** -0.5)
    assert (module(q, k, v, G=G) - want).abs().max() < 1e-9
    got = module(q.float(), k.float(), v.float(), G=G.float())
    want = naive_recurrence(q, k, v, G.float().double().expand(2, 2, 512, 8), 8 ** -0.5)
    assert torch.isfinite(got).all() and ((got.double() - want).abs().max() / want.abs().max()) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_example_triton_forward_and_backward(dtype):
    """The generated Triton kernels through the module (interpreter): output against the recurrence,
    gradients of q, k, v and G against the torch backend's float64 autograd, G shared across the batch."""
    cls = attncc.compile(str(ROOT / "examples" / "gla.attn"))
    assert cls.TRITON_LOWERING.startswith("chunked gated linear kernel, a gate per dimension")
    assert "backward: generated Triton kernels" in cls.TRITON_LOWERING
    q, k, v = rows(2, 2, 45, 16, 8, seed=22)
    G = log_gates(1, 2, 45, 16, seed=23, strength=-30.0)[0]
    w = torch.randn(2, 2, 45, 8, generator=torch.Generator().manual_seed(24), dtype=torch.float64)

    def grads(module, cast):
        leaves = [x.to(dtype).to(cast).requires_grad_() for x in (q, k, v, G)]
        out = module(*leaves[:3], G=leaves[3])
        return out, torch.autograd.grad((out * w.to(out.dtype)).sum(), leaves)
    triton, torch_ = cls(backend="triton"), cls(backend="torch")
    (out, got), (ref, want) = grads(triton, dtype), grads(torch_, torch.float64)
    assert triton.last_backend == "triton"
    tolerance = {torch.float32: 1e-4, torch.float16: 3e-2}[dtype]
    assert ((out.double() - ref).abs().max() / ref.abs().max()) < tolerance
    for name, a, b in zip("qkvG", got, want):
        assert a.shape == b.shape and ((a.double() - b).abs().max() / b.abs().max()).item() < tolerance, name


def test_scalar_gate_alongside_and_rows_normalizer_match_the_reference():
    """exp(g_i - g_j) beside the per-dimension gate joins it; `normalize rows` with a feature map."""
    specs = ["dot(q[i] * exp(G[h, i]), k[j] * exp(-G[h, j])) * exp(g[h, i] - g[h, j])",
             "dot(phi(q[i]) * exp(G[h, i]), phi(k[j]) * exp(-G[h, j]))"]
    for weight, normalize in zip(specs, ["none", "rows"]):
        cls = _compile(weight, normalize=normalize)
        assert cls.LOWERING == "linear_gated"
        module = make_module(cls, 2, 16, 8)
        q, k, v, inputs = random_inputs(cls, 1, 2, 37, 37, 16, 8)
        for backend, dtype in (("torch", torch.float64), ("triton", torch.float32)):
            result = compare(module, q, k, v, inputs, backend, dtype)
            assert result.ok, f"{weight}: {backend} error {result.error:.2e}"


def test_the_sampled_check_refuses_a_wrong_split():
    """row_gate_holds compares the written dot with the split on random rows: a wrong gate fails it."""
    cls = _compile("dot(q[i] * exp(G[h, i]), k[j] * exp(-G[h, j]))")
    graph = cls.compilation.ir
    dot = next(e for nid in graph.find("attend") for e in expr_of(graph, graph.operands(nid)[0]).walk()
               if e.op == "dot")
    gate = row_gate_form(dot, {"i": I, "j": J})
    assert gate is not None and row_gate_holds(dot, gate, graph.signature)
    doubled = TExpr("mul", (TExpr("const", (), 2.0, FLOAT), gate.gate), None, gate.gate.type)
    assert row_gate_holds(dot, replace(gate, gate=doubled), graph.signature) is False


def test_example_triton_with_grouped_query_heads():
    """k, v of 2 heads under 4 query heads (gates per query head): the Triton kernels read each key/value
    head from its group's programs and the launcher sums dK, dV over the group; against the torch backend."""
    cls = attncc.compile(str(ROOT / "examples" / "gla.attn"))
    q = rows(1, 4, 37, 16, 8, seed=25)[0]
    _, k, v = rows(1, 2, 37, 16, 8, seed=26)
    G = log_gates(1, 4, 37, 16, seed=27, strength=-3.0)
    w = torch.randn(1, 4, 37, 8, generator=torch.Generator().manual_seed(28), dtype=torch.float64)
    results = {}
    for backend, dtype in (("torch", torch.float64), ("triton", torch.float32)):
        module = cls(backend=backend)
        leaves = [x.to(dtype).requires_grad_() for x in (q, k, v, G)]
        out = module(*leaves[:3], G=leaves[3])
        results[backend] = (out, *torch.autograd.grad((out * w.to(dtype)).sum(), leaves))
        assert module.last_backend == backend
    for name, a, b in zip(["out", "q", "k", "v", "G"], results["triton"], results["torch"]):
        assert a.shape == b.shape and ((a.double() - b).abs().max() / b.abs().max()).item() < 1e-4, name
