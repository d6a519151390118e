"""Polynomial kernels (Based, ReBased, (q.k)^n) as tensor-power features: the algebra, the rewrite,
the plan it leads to, and every backend against the dense float64 reference of the spec as written."""
from __future__ import annotations

import pytest
import sympy
import torch
from hypothesis import given, strategies as st

import attncc
from attncc.analysis.kernel import polynomial_in_dot
from attncc.lang.features import tensor_power_features, tensor_power_width
from attncc.ir.graph import N, Nq
from attncc.tools.compare import compare, make_module, random_inputs

from .conftest import ROOT


def spec(weight: str, mask: str | None = None, normalize: str = "rows") -> str:
    lines = [f"    weight(i, j) = {weight}"] + ([f"    mask(i, j) = {mask}"] if mask else [])
    return "attention poly {\n" + "\n".join(lines) + f"\n    normalize {normalize}\n}}\n"


SQUARED = spec("dot(q[i], k[j]) ** 2")  # ReBased's kernel without its affine map
SIGNED = spec("dot(q[i], k[j]) ** 3 * scale - 2 * dot(q[i], k[j]) + 0.5", normalize="none")
BASED = str(ROOT / "examples" / "based.attn")


@given(st.sets(st.integers(0, 4), min_size=1), st.integers(1, 5), st.integers(0, 2 ** 16))
def test_tensor_power_features_reproduce_the_polynomial(degrees, d, seed):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 3, d, generator=g, dtype=torch.float64)
    terms = tuple((n, float(torch.randn((), generator=g))) for n in sorted(degrees))
    fq, fk = tensor_power_features(q, k, terms)
    assert fq.shape[-1] == fk.shape[-1] == tensor_power_width(d, [n for n, _ in terms])
    s = q @ k.T
    expected = sum(c * s ** n for n, c in terms)
    torch.testing.assert_close(fq @ fk.T, expected, rtol=1e-12, atol=1e-12)


def test_based_weight_is_read_as_a_polynomial():
    comp = attncc.build(BASED)
    assert "expand_polynomial" in [name for name, _ in comp.log]
    poly = polynomial_in_dot(attncc.build(spec("1 + dot(q[i], k[j]) + dot(q[i], k[j]) ** 2 / 2")).checked.weight)
    assert sorted(poly) == [0, 1, 2]


@pytest.mark.parametrize("weight", ["exp(dot(q[i], k[j]))", "dot(q[i], k[j]) ** 5",
                                    "dot(q[i], k[j]) ** 2 * (i - j)", "dot(q[i], k[j]) * dot(q[i], k[j]) * i"])
def test_what_is_not_a_constant_coefficient_polynomial_stays_as_written(weight):
    comp = attncc.build(spec(weight, normalize="none"))  # (under rows, exp(dot) is a softmax: stable_exp)
    assert comp.plan.lowering == "tiled"
    assert any(name == "expand_polynomial" and "stays as written" in msg for name, msg in comp.log)


def test_the_plans_are_linear_time_at_length():
    """Based (causal) takes the chunked prefix-sum path, (q.k)^2 (full) phi(Q) (phi(K)^T V); both at a
    length where the quadratic form costs more, with the cost counted at the feature width m."""
    for source, sizes in ((BASED, {"N": 8192, "Nq": 8192, "D": 16}), (SQUARED, {"N": 8192, "Nq": 8192, "D": 16})):
        plan = attncc.build(source, sizes=sizes).plan
        flops = sympy.expand(sympy.sympify(plan.chosen.flops).subs(Nq, N))
        assert sympy.degree(flops, N) == 1, (plan.lowering, flops)
        assert "tensor-power features" in plan.chosen.note


@pytest.mark.parametrize("source,lowering", [(BASED, "linear_chunked"), (BASED, "tiled"), (SQUARED, "linear"),
                                             (SQUARED, "tiled"), (SIGNED, "linear"), (SIGNED, "tiled")],
                         ids=["based-chunked", "based-tiled", "squared-linear", "squared-tiled", "signed-linear",
                              "signed-tiled"])
@pytest.mark.parametrize("backend,dtype", [("torch", torch.float64), ("triton", torch.float32),
                                           ("triton", torch.float16)])
def test_backends_match_the_reference(source, lowering, backend, dtype):
    cls = attncc.compile(source, lowering=lowering)
    module = make_module(cls, heads=2, dim=8, dim_v=8)
    q, k, v, inputs = random_inputs(cls, batch=1, heads=2, nq=37, nk=37, dim=8, dim_v=8)
    q, k = q * 0.5, k * 0.5  # keep (q.k)^3 of a signed, unnormalized weight within fp16's range
    result = compare(module, q, k, v, inputs, backend, dtype)
    assert result.ok, result


@pytest.mark.parametrize("source,lowering", [(BASED, "linear_chunked"), (SQUARED, "linear")], ids=["based", "squared"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_wide_feature_rows_are_split_across_programs(source, lowering, dtype):
    """At d = 16 the tensor-power features are 153 (Based) and 136 ((q.k)^2) wide, over one program's
    feature block (FEATURE_TILE, FMA_FEATURE_TILE): the chunked kernel sums its feature blocks' partial
    num and den in the launcher, the output kernel loops over them; both match the reference."""
    cls = attncc.compile(source, lowering=lowering)
    assert "F_TILE" in cls.compilation.triton_source and "feature_blocks" in cls.compilation.triton_source
    module = make_module(cls, heads=2, dim=16, dim_v=16)
    q, k, v, inputs = random_inputs(cls, batch=1, heads=2, nq=37, nk=37, dim=16, dim_v=16)
    result = compare(module, q * 0.5, k * 0.5, v, inputs, "triton", dtype)
    assert result.ok, result
