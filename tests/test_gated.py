"""Data-dependent scalar gates exp(G(i) - G(j)) (simple GLA): the analysis finds and proves the form,
the plan is the chunked gated recurrence (linear in N), and its output and gradients match the dense
float64 reference and a naive token-by-token recurrence written here."""
import copy

import pytest
import sympy
import torch
from hypothesis import given, settings

import attncc
from attncc.ir.graph import N, expr_of
from attncc.lang.operators import fmt
from attncc.tools.compare import compare, make_module, random_inputs
from attncc.tools.fuzzing import fuzz
from attncc.tools.testing import gate_expressions

from .conftest import ROOT

SPEC = """attention gated {{
    input g[H, N]
    input g2[H, N]
    weight(i, j) = dot(q[i], k[j]) * {modulation}
    mask(i, j) = j <= i
    normalize {normalize}
}}"""
GATED = {  # modulation: G(i) as the analysis finds it
    "scale * exp(g[h, i] - g[h, j])": "g[h, i]",
    "exp(g[h, i]) * exp(-g[h, j]) * 0.5": "g[h, i]",
    "exp(0.5 * (g[h, i] - g[h, j]) + 1.0)": "(0.5 * g[h, i])",
    "exp(g[h, i] + g2[h, i] - g2[h, j] - g[h, j])": "(g[h, i] + g2[h, i])",
}
NOT_GATED = ["exp(g[h, i] - g2[h, j])", "exp(g[h, i] * g[h, j])", "(exp(g[h, i] - g[h, j]) + 1.0)",
             "exp(g[h, i] - g[h, j]) * i"]


def _compile(modulation: str, normalize: str = "none"):
    return attncc.compile(SPEC.format(modulation=modulation, normalize=normalize))


@pytest.mark.parametrize("modulation", sorted(GATED))
def test_gate_forms_are_found_and_proven(modulation):
    cls = _compile(modulation)
    assert cls.LOWERING == "linear_gated"
    graph = cls.compilation.optimized
    (att,) = graph.find("gated_attend")
    assert fmt(expr_of(graph, graph.operands(att)[3])) == GATED[modulation]


@pytest.mark.parametrize("modulation", NOT_GATED)
def test_other_modulations_are_not_gates(modulation):
    assert _compile(modulation).LOWERING != "linear_gated"


def test_simple_gla_plan_is_linear_in_n():
    cls = attncc.compile(str(ROOT / "examples" / "simple_gla.attn"))
    plan = cls.compilation.plan
    assert plan.chosen.name == "linear_gated"
    assert sympy.degree(sympy.expand(plan.chosen.flops), N) == 1


def log_gates(b: int, h: int, n: int, seed: int, strength: float = 1.0) -> torch.Tensor:
    """Cumulative log-gates, as models make them: cumsum(log sigmoid(x)) (non-increasing)."""
    x = torch.randn(b, h, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.cumsum(torch.nn.functional.logsigmoid(x * strength), -1)


def naive_recurrence(q, k, v, g, scale: float) -> torch.Tensor:
    """S_t = exp(g_t - g_(t-1)) S_(t-1) + k_t v_t^T, o_t = scale q_t S_t: one token at a time."""
    b, h, n, d = q.shape
    state = torch.zeros(b, h, d, v.shape[-1], dtype=q.dtype)
    out = []
    for t in range(n):
        step = torch.exp(g[..., t] - g[..., t - 1]) if t else torch.ones_like(g[..., 0])
        state = step[..., None, None] * state + k[:, :, t, :, None] * v[:, :, t, None, :]
        out.append(scale * torch.einsum("bhd,bhde->bhe", q[:, :, t], state))
    return torch.stack(out, 2)


def dense_gated(q, k, v, g, scale: float) -> torch.Tensor:
    """W = scale (q k^T) o exp(g_i - g_j) on j <= i, masked before the exp, times V."""
    n = q.shape[2]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    decay = torch.where(causal, g[..., :, None] - g[..., None, :], 0).exp() * causal
    return (scale * q @ k.transpose(-1, -2) * decay) @ v


def _inputs(b, h, n, d, e, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, x, generator=gen, dtype=torch.float64) for x in (d, d, e)]


@pytest.mark.parametrize("n", [1, 37, 130])
def test_torch_forward_matches_reference_and_recurrence(n):
    cls = attncc.compile(str(ROOT / "examples" / "simple_gla.attn"))
    module = cls()
    q, k, v = _inputs(2, 2, n, 8, 4)
    g = log_gates(2, 2, n, seed=1)
    out64 = module(q, k, v, g=g)
    scale = 8 ** -0.5
    naive = naive_recurrence(q, k, v, g, scale)
    assert (out64 - dense_gated(q, k, v, g, scale)).abs().max() < 1e-9
    assert (out64 - naive).abs().max() < 1e-9
    out32 = module(q.float(), k.float(), v.float(), g=g.float())
    assert ((out32.double() - naive).abs().max() / naive.abs().max()) < 1e-5


def test_strong_gates_do_not_overflow():
    """Log-gates falling to about -3000 over the sequence: exp(G_i) alone underflows, exp(-G_j) overflows;
    the chunks take only in-chunk differences."""
    cls = attncc.compile(str(ROOT / "examples" / "simple_gla.attn"))
    q, k, v = _inputs(1, 2, 200, 8, 4)
    g = log_gates(1, 2, 200, seed=2, strength=-30.0)
    assert g.min() < -1000
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-5)):
        g = g.to(dtype).double()  # float32 rounds gates near -3000 by 1e-4: compare on the rounded ones
        want = naive_recurrence(q, k, v, g, 8 ** -0.5)
        got = cls()(q.to(dtype), k.to(dtype), v.to(dtype), g=g.to(dtype))
        assert torch.isfinite(got).all()
        assert ((got.double() - want).abs().max() / want.abs().max()) < tol


def test_rows_normalizer_and_query_key_lengths_match_the_oracle():
    cls = _compile("exp(g[h, i] - g[h, j])", "rows")
    assert cls.LOWERING == "linear_gated"
    graph = cls.compilation.optimized
    eps = graph.node(graph.find("gated_attend")[0]).attr("eps")
    (q,), (k, v) = _inputs(1, 2, 30, 8, 4)[:1], _inputs(1, 2, 70, 8, 4, seed=1)[1:]
    g = log_gates(1, 2, 70, seed=3)
    got = cls()(q, k, v, g=g, g2=torch.zeros_like(g))
    causal = torch.ones(30, 70, dtype=torch.bool).tril()
    w = (q @ k.transpose(-1, -2)) * torch.where(causal, g[..., :30, None] - g[..., None, :], 0).exp() * causal
    assert (got - (w @ v) / (w.sum(-1, keepdim=True) + eps)).abs().max() < 1e-9


def test_gradients_of_q_k_v_and_the_gate_match_the_dense_reference():
    cls = attncc.compile(str(ROOT / "examples" / "simple_gla.attn"))
    q, k, v = (x.requires_grad_() for x in _inputs(1, 2, 70, 8, 4))
    g = log_gates(1, 2, 70, seed=4).requires_grad_()
    w = torch.randn(1, 2, 70, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    got = torch.autograd.grad((cls()(q, k, v, g=g) * w).sum(), (q, k, v, g))
    want = torch.autograd.grad((dense_gated(q, k, v, g, 8 ** -0.5) * w).sum(), (q, k, v, g))
    for a, b in zip(got, want):
        assert (a - b).abs().max() < 1e-9


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_triton_forward_matches_the_recurrence(dtype):
    """The chunked gated kernel in Triton's interpreter (chunks of 16: several chunks, a ragged last one),
    with gates per batch row, strong enough that exp(-G_j) alone would overflow fp16 and fp32."""
    cls = attncc.compile(str(ROOT / "examples" / "simple_gla.attn"))
    module = cls(backend="triton")
    q, k, v = _inputs(2, 2, 45, 16, 8)
    g = log_gates(2, 2, 45, seed=6, strength=-30.0)
    got = module(q.to(dtype), k.to(dtype), v.to(dtype), g=g.to(dtype))
    assert module.last_backend == "triton"
    want = naive_recurrence(q.to(dtype).double(), k.to(dtype).double(), v.to(dtype).double(),
                            g.to(dtype).double(), 16 ** -0.5)
    tolerance = {torch.float32: 1e-5, torch.float16: 5e-3}[dtype]
    assert ((got.double() - want).abs().max() / want.abs().max()) < tolerance


def test_triton_forward_splits_the_value_columns():
    """48 value columns: two programs per (b, h), each carrying a 32-column block of the gated state."""
    cls = attncc.compile(str(ROOT / "examples" / "simple_gla.attn"))
    module = cls(backend="triton")
    q, k, v = _inputs(1, 2, 37, 16, 48)
    g = log_gates(1, 2, 37, seed=7, strength=-3.0)
    got = module(q, k, v, g=g)
    assert module.last_backend == "triton"
    want = naive_recurrence(q.double(), k.double(), v.double(), g.double(), 16 ** -0.5)
    assert ((got.double() - want).abs().max() / want.abs().max()) < 1e-5


ROWS_TWO_GATES = """attention rows_two_gates {
    input g[H, N]
    input g2[H, N]
    feature phi = elu1
    weight(i, j) = dot(phi(q[i]), phi(k[j])) * exp(0.5 * (g[h, i] - g[h, j]) + g2[h, i] - g2[h, j])
    mask(i, j) = j <= i
    normalize rows
}"""


WRAPPED_GATE = """attention wrapped_gate {
    input g[H, N]
    weight(i, j) = dot(q[i], k[j]) * exp(g[h, i] % 1.5 - g[h, j] % 1.5)
    mask(i, j) = j <= i
    normalize none
}"""  # G = g % 1.5: dG/dg = 1 almost everywhere, through the symbolic derivative


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("spec", ["example", "rows_two_gates", "wrapped_gate"])
def test_triton_backward_matches_the_reference_autograd(spec, dtype):
    """The generated backward kernels (dQ, dK, dV and dG at queries and keys, then the inputs of G through
    the gate) against the dense float64 reference's autograd; Nq != N, a feature map (positive rows, so the
    normalizer is well conditioned) and a gate reading two inputs in the second spec."""
    if spec == "example":
        cls, nq, extra = attncc.compile(str(ROOT / "examples" / "simple_gla.attn")), 45, {}
    elif spec == "wrapped_gate":
        cls, nq, extra = attncc.compile(WRAPPED_GATE), 45, {}
    else:
        cls, nq, extra = attncc.compile(ROWS_TWO_GATES), 30, {"g2": None}
    assert "backward: generated Triton kernels" in cls.TRITON_LOWERING
    q, k, v = _inputs(2, 2, 45, 16, 8, seed=7)
    q = q[:, :, :nq]
    gates = {"g": log_gates(2, 2, 45, seed=8, strength=-3.0)} | {n: log_gates(2, 2, 45, seed=9) for n in extra}
    w = torch.randn(2, 2, nq, 8, generator=torch.Generator().manual_seed(10), dtype=torch.float64)

    def grads(module, cast):  # both from the inputs rounded to dtype: g % 1.5 jumps where rounding crosses 1.5
        leaves = [x.to(dtype).to(cast).requires_grad_() for x in (q, k, v, *gates.values())]
        out = module(*leaves[:3], **dict(zip(gates, leaves[3:])))
        return torch.autograd.grad((out * w.to(out.dtype)).sum(), leaves)
    module = cls(backend="triton")
    reference = cls(backend="torch")
    got, want = grads(module, dtype), grads(reference, torch.float64)
    assert module.last_backend == "triton"
    tolerance = {torch.float32: 1e-4, torch.float16: 3e-2}[dtype]
    for name, a, b in zip(["q", "k", "v", *gates], got, want):
        error = ((a.double() - b).abs().max() / b.abs().max().clamp(min=1)).item()
        assert error < tolerance, f"gradient of {name}: {error:.2e}"


@settings(max_examples=6, deadline=None)
@given(modulation=gate_expressions())
def test_random_gates_take_the_gated_lowering_and_match_the_reference(modulation):
    """Spellings of A exp(G(i) - G(j)) (attncc.tools.testing.gate_expressions): proven, lowered to
    linear_gated, and equal to the dense reference (torch float64, Triton float32 in the interpreter)."""
    cls = _compile(modulation)
    assert cls.LOWERING == "linear_gated", modulation
    module = make_module(cls, 2, 16, 8)
    q, k, v, inputs = random_inputs(cls, 1, 2, 37, 37, 16, 8)
    for backend, dtype in (("torch", torch.float64), ("triton", torch.float32)):
        result = compare(module, q, k, v, inputs, backend, dtype)
        assert result.ok, f"{modulation}: {backend} error {result.error:.2e}"


def test_fuzz_fills_gate_holes_and_every_backend_passes():
    family = """attention fuzz_gated {
        input g[H, N]
        feature phi = elu1
        weight(i, j) = dot(phi(q[i]), phi(k[j])) * (??gate(g))
        mask(i, j) = j <= i
        normalize rows
    }"""
    report = fuzz([family], 3, [("torch", torch.float32), ("triton", torch.float32)], max_tokens=40)
    assert report.failure is None and report.examples >= 3, report.error
    assert "linear_gated" in report.lowerings, report.lowerings


def test_a_learned_amplitude_recomputes_the_backward_through_torch():
    """A = a[h], a table: the kernels do not differentiate it, so the Triton backend says so and
    recomputes the backward through torch autograd; the table's gradient is still right."""
    cls = attncc.compile("""attention learned_amplitude {
        param a[H] = uniform(low=0.5, high=1.5)
        input g[H, N]
        weight(i, j) = dot(q[i], k[j]) * a[h] * exp(g[h, i] - g[h, j])
        mask(i, j) = j <= i
        normalize none
    }""")
    assert cls.LOWERING == "linear_gated" and "recomputation" in cls.TRITON_LOWERING
    q, k, v = _inputs(1, 2, 40, 16, 8, seed=11)
    g = log_gates(1, 2, 40, seed=12)
    grads, first = {}, make_module(cls, 2, 16, 8)
    for backend in ("triton", "torch"):
        module = copy.deepcopy(first)  # the same table values (they are drawn at construction)
        module.backend = backend
        (module(q.float(), k.float(), v.float(), g=g.float()) ** 2).sum().backward()
        grads[backend] = next(module.parameters()).grad
    assert torch.allclose(grads["triton"], grads["torch"], rtol=1e-4)
