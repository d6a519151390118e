"""Rows of token-indexed inputs, slices, products and several dot terms in `dot` (lang/rows.py,
frontend/rowtype.py, oracle/rows.py, passes/rows.py), against the reference and independent einsums."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

import attncc
from attncc.lang.source import ShapeError, SpecError

ROOT = Path(__file__).resolve().parents[1]
B, H, D, R = 2, 3, 8, 4


def _compile(body: str, **kw):
    return attncc.compile("attention a {\n" + body + "\n}", **kw)


def _make(M):
    return M(H=H) if "H" in M.NEEDS else M()


def _softmax(s: torch.Tensor, causal: bool = True) -> torch.Tensor:
    if causal:
        n, m = s.shape[-2:]
        s = s.masked_fill(torch.ones(n, m, dtype=torch.bool).tril().logical_not(), float("-inf"))
    return torch.softmax(s, -1)


def _mla_by_einsum(q, k, v, q_rope, k_rope):
    """DeepSeek-V2's decoupled RoPE score, written independently of the spec language."""
    s = torch.einsum("bhid,bhjd->bhij", q, k) + torch.einsum("hir,jr->hij", q_rope, k_rope)
    return _softmax(s / (q.shape[-1] + q_rope.shape[-1]) ** 0.5) @ v


@pytest.mark.parametrize("backend, dtype", [("torch", torch.float64), ("torch", torch.float32),
                                            ("triton", torch.float32), ("triton", torch.float16)])
def test_mla_example_matches_an_einsum(backend, dtype):
    if backend == "triton" and os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1")
    torch.manual_seed(0)
    module = attncc.compile(ROOT / "examples" / "mla.attn", backend=backend)(R=R)
    q, k, v = torch.randn(3, B, H, 12, D, dtype=torch.float64)
    q_rope, k_rope = torch.randn(H, 12, R, dtype=torch.float64), torch.randn(12, R, dtype=torch.float64)
    want = _mla_by_einsum(q, k, v, q_rope, k_rope)
    out = module(q.to(dtype), k.to(dtype), v.to(dtype), q_rope=q_rope, k_rope=k_rope)
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 5e-3}[dtype]
    assert (out.double() - want).abs().max() < tol
    assert (module.reference(q, k, v, q_rope=q_rope, k_rope=k_rope) - want).abs().max() < 1e-12


def test_mla_with_slices_of_one_head_dim_matches_an_einsum():
    """q carries its rope part in its last R columns; k's rope part is one row per token for every head."""
    module = _compile("""
        size R = 4
        input k_rope[N, R]
        score(i, j) = dot(q[i, 0:D - R], k[j, 0:D - R]) * scale + dot(q[i, D - R:], k_rope[j]) * scale
        mask(i, j) = j <= i""", backend="torch")()
    q, k, v = torch.randn(3, B, H, 10, D, dtype=torch.float64)
    k_rope = torch.randn(B, 10, R, dtype=torch.float64)  # with a batch dimension
    s = torch.einsum("bhid,bhjd->bhij", q[..., :D - R], k[..., :D - R]) + \
        torch.einsum("bhir,bjr->bhij", q[..., D - R:], k_rope)
    want = _softmax(s * D ** -0.5) @ v
    assert (module(q, k, v, k_rope=k_rope) - want).abs().max() < 1e-12
    assert (module.reference(q, k, v, k_rope=k_rope) - want).abs().max() < 1e-12


# specs of the family: (body, row inputs by name -> shape without batch, weight by einsum)
FAMILY = {
    "product": ("input X[H, N, D]\nscore(i, j) = dot(q[i] * X[h, i], k[j]) * scale",
                {"X": (H, "n", D)}, lambda q, k, x: torch.einsum("bhid,bhjd->bhij", q * x["X"], k) * D ** -0.5),
    "gate": ("input G[H, N, D]\nscore(i, j) = dot(q[i] * exp(G[h, i]), k[j] * exp(-G[h, j]))",
             {"G": (H, "n", D)}, lambda q, k, x: torch.einsum("bhid,bhjd->bhij", q * x["G"].exp(), k * (-x["G"]).exp())),
    "two terms, sided coefficients": (
        "param s[H] = 0.5\ninput Y[N, 4]\nscore(i, j) = dot(q[i], k[j]) * s[h] + dot(q[i, 0:4], Y[j]) * (j + 1)",
        {"Y": ("n", 4)}, lambda q, k, x: torch.einsum("bhid,bhjd->bhij", q, k) * 0.5
        + torch.einsum("bhid,jd->bhij", q[..., :4], x["Y"]) * torch.arange(1, q.shape[2] + 1, dtype=q.dtype)),
    "let and division": ("input X[Nq, D]\nlet a = (q[i] - X[i]) / 2\nscore(i, j) = dot(a, -k[j])",
                         {"X": ("n", D)}, lambda q, k, x: -torch.einsum("bhid,bhjd->bhij", (q - x["X"]) / 2, k)),
    "map of a product": ("input X[H, N, D]\nfeature phi = elu1\nweight(i, j) = dot(phi(q[i] * X[h, i]), phi(k[j]))\n"
                         "normalize rows(eps = 0)", {"X": (H, "n", D)},
                         lambda q, k, x: torch.einsum("bhid,bhjd->bhij", torch.nn.functional.elu(q * x["X"]) + 1,
                                                      torch.nn.functional.elu(k) + 1)),
}


def _family_inputs(shapes: dict, n: int, generator) -> dict:
    return {name: torch.randn(*(n if d == "n" else d for d in shape), generator=generator, dtype=torch.float64) / 2
            for name, shape in shapes.items()}


def _by_einsum(name, q, k, v, inputs):
    body, _, weight = FAMILY[name]
    w = weight(q, k, inputs)
    if "normalize rows" in body:
        return (w / w.sum(-1, keepdim=True)) @ v
    return _softmax(w, causal=False) @ v


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_family_reference_matches_an_einsum(name):
    g = torch.Generator().manual_seed(1)
    module = _make(_compile(FAMILY[name][0], backend="torch"))
    q, k, v = torch.randn(3, B, H, 9, D, generator=g, dtype=torch.float64)
    inputs = _family_inputs(FAMILY[name][1], 9, g)
    want = _by_einsum(name, q, k, v, inputs)
    assert (module.reference(q, k, v, **inputs) - want).abs().max() < 1e-10
    assert (module(q, k, v, **inputs) - want).abs().max() < 1e-10


@settings(max_examples=6, deadline=None)
@given(name=st.sampled_from(sorted(FAMILY)), n=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_family_torch_matches_the_reference(name, n, seed):
    g = torch.Generator().manual_seed(seed)
    module = _make(_compile(FAMILY[name][0], backend="torch"))
    q, k, v = torch.randn(3, 1, H, n, D, generator=g)
    inputs = _family_inputs(FAMILY[name][1], n, g)
    assert (module(q, k, v, **inputs).double() - module.reference(q, k, v, **inputs)).abs().max() < 1e-4


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                    reason="Triton needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float16, 1e-2)])
@pytest.mark.parametrize("name", ["gate", "two terms, sided coefficients"])
def test_family_triton_matches_the_reference(name, dtype, tol):
    g = torch.Generator().manual_seed(2)
    module = _make(_compile(FAMILY[name][0], backend="triton"))
    q, k, v = torch.randn(3, 1, H, 20, D, generator=g)
    inputs = _family_inputs(FAMILY[name][1], 20, g)
    out = module(q.to(dtype), k.to(dtype), v.to(dtype), **inputs)
    assert module.last_backend == "triton"
    assert (out.double() - module.reference(q, k, v, **inputs)).abs().max() < tol


def test_reference_combines_exponents_before_exp():
    """Cumulative log-gates reach hundreds: exp(-G_j) alone overflows float64's exp near 710."""
    module = _compile("input G[H, N, D]\nweight(i, j) = dot(q[i] * exp(G[h, i]), k[j] * exp(-G[h, j]))\n"
                      "mask(i, j) = j <= i\nnormalize rows(eps = 0)", backend="torch")()
    n = 12
    q, k = torch.rand(2, 1, H, n, D, dtype=torch.float64)
    v = torch.randn(1, H, n, D, dtype=torch.float64)
    G = torch.arange(n, dtype=torch.float64).view(1, n, 1).expand(H, n, D) * -80.0  # decays: G_i - G_j <= 0
    out = module.reference(q, k, v, G=G)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    decay = torch.exp(torch.where(causal, G[..., 0].unsqueeze(-1) - G[..., 0].unsqueeze(-2), float("-inf")))
    w = torch.einsum("bhid,bhjd->bhij", q, k) * decay  # G is the same in every column: one decay a pair
    assert torch.isfinite(out).all()
    assert (out - (w / w.sum(-1, keepdim=True)) @ v).abs().max() < 1e-10


def test_gradients_reach_q_k_a_row_input_and_a_table():
    module = _compile("param s[H] = 0.5\ninput X[H, N, 4]\n"
                      "score(i, j) = dot(q[i, 0:4] * X[h, i], k[j, 0:4]) * s[h] + dot(q[i], k[j]) * s[h]\n"
                      "mask(i, j) = j <= i", backend="torch")(H=2).double()
    q, k, v = torch.randn(3, 1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    X = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v, X: module(q, k, v, X=X), (q, k, v, X))
    module(q, k, v, X=X).sum().backward()
    assert module.s.grad is not None and module.s.grad.abs().sum() > 0


def test_prepared_rows_in_the_plan_and_the_cost():
    comp = attncc.api.build(ROOT / "examples" / "mla.attn")
    assert comp.plan.attrs["prepared_rows"].describe().startswith("q' = (concat(q[i], q_rope[h, i])")
    assert all("prepared rows of width D + R" in c.note for c in comp.plan.candidates)
    assert "def prepare_rows(self, q, k, ctx):" in comp.module_source


def test_widths_unknown_at_compile_time_are_checked_per_call():
    M = _compile("size A = 4\nsize C = 4\ninput X[H, N, A]\ninput Y[N, C]\n"
                 "score(i, j) = dot(X[h, i], Y[j])", backend="torch")
    q, k, v = torch.randn(3, 1, 2, 5, 8)
    with pytest.raises(ShapeError, match="different widths at this call: 4 .* and 5"):
        M(C=5)(q, k, v, X=torch.randn(2, 5, 4), Y=torch.randn(5, 5))


def test_a_slice_past_the_width_at_call_time_is_a_shape_error():
    M = _compile("size W = 4\nscore(i, j) = dot(q[i, 0:W], k[j, 0:W])", backend="torch")
    q, k, v = torch.randn(3, 1, 2, 5, 8)
    M()(q, k, v)
    with pytest.raises(ShapeError, match="slice 0:16 .* outside its width 8"):
        M(W=16)(q, k, v)


def _errors(body: str) -> list:
    with pytest.raises(SpecError) as info:
        _compile(body)
    return info.value.diagnostics


@pytest.mark.parametrize("body, message, hint", [
    ("input X[H, N, D]\nbias(i, j) = X[h, j]", "a row of `X` may appear only inside `dot`", "index all 3"),
    ("score(i, j) = dot(q[i] * k[j], k[j])", "a side of `dot` reads both the query index `i` and the key index `j`",
     "belongs outside the dot"),
    ("score(i, j) = dot(q[i] * (i - j), k[j])", "a side of `dot` reads both", None),
    ("input X[N, D]\nscore(i, j) = dot(X[j], k[j])", "both sides of `dot` read the key index `j`", "dot(q[i], k[j])"),
    ("input X[N, 5]\nscore(i, j) = dot(q[i, 0:4], X[j])", "the sides of `dot` have different widths: (4 - 0) and 5",
     "slice the wider row"),
    ("input X[N, 5]\ninput Y[N, 4]\nscore(i, j) = dot(X[i] * Y[i], k[j])", "the rows of `*` have different widths",
     None),
    ("score(i, j) = dot(q[i, 0:D + 1], k[j, 0:D + 1])", "the slice 0:(D + 1) ends past the row's width D", None),
    ("score(i, j) = dot(q[i, 3:3], k[j, 3:3])", "the slice 3:3 is empty", None),
    ("score(i, j) = dot(q[i, i:D], k[j])", "a slice bound is an integer expression of constants and sizes", None),
    ("input A[N, N]\nscore(i, j) = dot(q[i], A[j])", "`A` is not a row input", "declared `[N, W]`"),
    ("input X[H, Nq, D]\nscore(i, j) = dot(q[i], X[h, j])", "`X` has one row per query token (Nq)", None),
    ("input X[H, N, D]\nscore(i, j) = dot(q[i], X[0, j])", "the head of a row of `X` is `h`", None),
    ("input X[N, D]\nscore(i, j) = dot(q[i], X[j - 1])", "a row of `X` is read at the query token", None),
    ("param P[16, 4]\nscore(i, j) = dot(q[i], P[j])", "a learned table has no rows a `dot` can read", None),
    ("score(i, j) = dot(q[i] + 1, k[j])", "`+` of a row and a number", None),
    ("score(i, j) = dot(q[i] / k[j], k[j])", "a row cannot be divided by a row", None),
    ("score(i, j) = dot(2 / q[i], k[j])", "`/` of a row and a number", None),
    ("mask(i, j) = q[i, 0:2] == 0", "a row of `q` may appear only inside `dot`", None),
    ("input X[N]\nmask(i, j) = X[0:2] > 0", "a slice may appear only in a row inside `dot`", None),
    ("score(i, j) = dot(q[i], k[j]) * dot(q[i], k[j] * 2)", "several `dot` terms must be summed", None),
    ("score(i, j) = dot(q[i], k[j]) * (i - j) + dot(q[i], k[j] * 2)",
     "the coefficient (i - j) of a `dot` term reads both `i` and `j`", None),
    ("let a = q[i]\nbias(i, j) = a", "`a` is a row, usable only as a side of `dot`", None),
    ("let a = q[i] * k[j]\nscore(i, j) = dot(a, k[j])", "the row `a` reads both", None),
    ("feature phi = favor(features = 8, seed = 0)\nweight(i, j) = dot(phi(q[i]), phi(k[j])) + dot(phi(q[i]), phi(k[j] * 2))",
     "a random feature map may be used in one `dot` only", None),
    ("input X[N, D]\nfeature phi = relu\nweight(i, j) = dot(phi(q[i] * X[i]), phi(k[j]))\nnormalize ista",
     "`normalize ista` needs the weight `dot(phi(q[i]), phi(k[j]))` and nothing else", None),
])
def test_errors(body, message, hint):
    found = [d for d in _errors(body) if message in d.message]
    assert found, [d.message for d in _errors(body)]
    assert hint is None or hint in (found[0].hint or "")


def test_the_score_may_read_d_only_where_the_rows_are_d_wide():
    with pytest.raises(attncc.AttnccError, match="reads D outside the dot"):
        _compile("score(i, j) = dot(q[i, 0:D // 2], k[j, 0:D // 2]) + i / D")
    _compile("score(i, j) = dot(q[i, 0:D // 2], k[j, 0:D // 2]) / sqrt(D)")  # a coefficient: folded into q'


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                    reason="Triton needs a GPU or TRITON_INTERPRET=1")
def test_triton_gradients_through_prepared_rows_match_the_reference():
    """The kernels' backward gives the prepared rows' gradients; autograd carries them to q, k and X."""
    M = _compile("input X[H, N, 4]\nscore(i, j) = dot(q[i], k[j]) * scale + dot(q[i, 0:4] * X[h, i], k[j, 4:]) * scale\n"
                 "mask(i, j) = j <= i", backend="triton")
    module = M()
    g = torch.Generator().manual_seed(3)
    leaves = [torch.randn(1, 2, 17, 8, generator=g, requires_grad=True) for _ in range(3)]
    X = torch.randn(2, 17, 4, generator=g, requires_grad=True)
    dout = torch.randn(1, 2, 17, 8, generator=g)
    grads = torch.autograd.grad((module(*leaves, X=X) * dout).sum(), (*leaves, X))
    assert module.last_backend == "triton"
    want = torch.autograd.grad((module.reference(*leaves, X=X) * dout.double()).sum(), (*leaves, X))
    for got, ref in zip(grads, want):
        assert (got.double() - ref).abs().max() < 1e-4


def _side(token: str):
    """Random row expressions of one side: q[i] / k[j], rows of X (per head) and Y (shared), their
    slices, functions, products, sums and scalings."""
    base, per_head, shared = ("q[i]", "X[h, i]", "Y[i]") if token == "i" else ("k[j]", "X[h, j]", "Y[j]")
    leaves = st.sampled_from([base, per_head, shared, f"exp({per_head})", f"sigmoid({shared})",
                              f"({base} * 0.5)", f"({per_head} / (h + 1))", f"(-{shared})"])
    return st.recursive(leaves, lambda rows: st.tuples(rows, st.sampled_from(["*", "+", "-"]), rows).map(
        lambda t: f"({t[0]} {t[1]} {t[2]})"), max_leaves=4)


@settings(max_examples=8, deadline=None)
@given(a=_side("i"), b=_side("j"), c=_side("i"), d=_side("j"), two=st.booleans(), seed=st.integers(0, 2**16))
def test_random_row_expressions_match_the_reference(a, b, c, d, two, seed):
    second = f" + dot({c}, {d}) * (h + 2)" if two else ""
    module = _compile(f"input X[H, N, D]\ninput Y[N, D]\nscore(i, j) = dot({a}, {b}) * scale{second}\n"
                      "mask(i, j) = j <= i", backend="torch")()
    g = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(3, 1, 2, 7, D, generator=g, dtype=torch.float64)
    inputs = {"X": torch.randn(2, 7, D, generator=g, dtype=torch.float64) / 2,
              "Y": torch.randn(7, D, generator=g, dtype=torch.float64) / 2}
    assert (module(q, k, v, **inputs) - module.reference(q, k, v, **inputs)).abs().max() < 1e-9
