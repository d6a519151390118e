"""The walkthroughs of docs/pipeline.md, run as written: each extends the compiler in a few lines and
holds the extension to the oracle end to end."""
from __future__ import annotations

import pytest
import torch

import attncc
from attncc.lang.expr import FLOAT, TExpr
from attncc.lang.features import FeatureMap, register_feature_map, unregister_feature_map
from attncc.lang.normalizers import Normalizer, register_normalizer, unregister_normalizer
from attncc.runtime.backends import Backend, registered_backend
from attncc.tools.compare import compare, make_module, random_inputs

SQUAREPLUS_SPEC = """
attention squareplus_linear {
    feature phi = squareplus
    weight(i, j) = dot(phi(q[i]), phi(k[j]))
    mask(i, j) = j <= i
    normalize rows
}
"""


BACKENDS = [("torch", torch.float64), ("torch", torch.float32), ("triton", torch.float32), ("triton", torch.float16)]


def check_against_oracle(cls, backend: str, dtype: torch.dtype, tokens: int, batch: int = 1):
    """The compiled class on random inputs (random tables) against the float64 oracle: (module, q)."""
    module = make_module(cls, heads=2, dim=16, dim_v=8)
    q, k, v, inputs = random_inputs(cls, batch=batch, heads=2, nq=tokens, nk=tokens, dim=16, dim_v=8)
    result = compare(module, q, k, v, inputs, backend, dtype)
    assert result.ok, result
    return module, q


@pytest.fixture
def squareplus_map():
    # docs/pipeline.md, "Add a feature map": one record; `reference` is the oracle's implementation.
    fmap = register_feature_map(FeatureMap(
        name="squareplus", doc="(x + sqrt(x^2 + 4)) / 2, positive and smooth", kwargs={},
        torch_expr="0.5 * (x + torch.sqrt(x * x + 4.0))",
        triton_expr="0.5 * (x + tl.sqrt(x * x + 4.0))",
        triton_grad="0.5 * (1.0 + x / tl.sqrt(x * x + 4.0))",
        reference=lambda x: (x + (x ** 2 + 4).sqrt()) / 2))
    yield fmap
    unregister_feature_map(fmap.name)


@pytest.mark.parametrize("lowering", ["linear_chunked", "tiled"])
@pytest.mark.parametrize("backend, dtype", BACKENDS)
def test_added_feature_map_matches_the_oracle(squareplus_map, lowering, backend, dtype):
    cls = attncc.compile(SQUAREPLUS_SPEC, lowering=lowering)
    check_against_oracle(cls, backend, dtype, tokens=37)
    assert "squareplus" in cls.compilation.torch_source


def test_added_feature_map_is_a_reserved_name(squareplus_map):
    with pytest.raises(attncc.SpecError, match="built-in name"):
        attncc.compile("attention bad { size squareplus = 2  normalize softmax }")


# docs/pipeline.md, "Add a backend": one record; `run` gets the prepared call.
COMPILED_TORCH = Backend(
    "compiled_torch", describe="the torch forward under torch.compile",
    run=lambda module, q, k, v, ctx: torch.compile(type(module).forward_torch, backend="aot_eager",
                                                   dynamic=False)(module, q, k, v, ctx))


@pytest.mark.parametrize("example", ["alibi", "linear_elu_causal", "context_pool"])
def test_added_backend_matches_the_oracle(example):
    with registered_backend(COMPILED_TORCH):
        cls = attncc.compile(f"examples/{example}.attn")
        module, q = check_against_oracle(cls, "compiled_torch", torch.float32, tokens=24)
        assert module.resolve_backend(q) == "torch"  # not an `auto` candidate
    with pytest.raises(attncc.AttnccError, match="unknown backend"):
        cls(backend="compiled_torch")


SIGMOID_SPEC = """
attention sigmoid_window {
    size window = 8
    score(i, j) = dot(q[i], k[j]) * scale
    bias(i, j) = -0.25 * (i - j)
    mask(i, j) = j <= i and i - j < window
    normalize sigmoid
}
"""


@pytest.fixture
def sigmoid_normalizer():
    # docs/pipeline.md, "Add a normalizer": written like softmax, it means the weights sigmoid(score + bias).
    norm = register_normalizer(Normalizer(
        "sigmoid", online_softmax=False, divides_by_row_sum=False, row_statistic=False, fixed_weights=True,
        score_name="weights", of_score=lambda s: TExpr("call", (s,), "sigmoid", FLOAT)))
    yield norm
    unregister_normalizer(norm.name)


@pytest.mark.parametrize("backend, dtype", BACKENDS)
def test_added_normalizer_matches_the_oracle(sigmoid_normalizer, backend, dtype):
    cls = attncc.compile(SIGMOID_SPEC)
    check_against_oracle(cls, backend, dtype, tokens=41, batch=2)
    assert "sigmoid" in cls.compilation.torch_source


def test_added_normalizer_gradients_match_the_oracle(sigmoid_normalizer):
    cls = attncc.compile(SIGMOID_SPEC)
    module = make_module(cls, heads=2, dim=16, dim_v=8)
    q, k, v, _ = random_inputs(cls, batch=1, heads=2, nq=19, nk=19, dim=16, dim_v=8)
    grads = []
    for run in (module, module.reference):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        run(*leaves).double().square().sum().backward()
        grads.append([t.grad for t in leaves])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_added_normalizer_is_checked_like_the_builtins(sigmoid_normalizer):
    with pytest.raises(attncc.SpecError, match="`weight` is for kernelized attention"):
        attncc.compile("attention bad { weight(i, j) = dot(q[i], k[j])  normalize sigmoid }")
    with pytest.raises(attncc.SpecError, match="did you mean `sigmoid`"):
        attncc.compile("attention bad { normalize sigmoidd }")


def test_a_feature_map_cannot_take_a_function_name():
    with pytest.raises(attncc.AttnccError, match="is a function of the language"):
        register_feature_map(FeatureMap("softplus", "", {}, "x", "x", "1.0", lambda x: x))
