"""Softmax with attention sinks: `normalize softmax(sink = c)` (docs/language.md section 8).

out_i = sum_j e^s_ij v_j / (sum_j e^s_ij + e^c_i): the reference is held to that formula written
out here, and every backend (torch, Triton's tiled and block-sparse kernels) to the reference, in
the output and in the gradients of q, k, v, the learned table and the float input a sink reads.
examples/sinks.attn (a learned per-head sink) is also run by test_backends and test_gradients."""
import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attncc
from attncc.api import build
from attncc.lang.source import SpecError
from attncc.tools.compare import compare, make_module, random_inputs
from attncc.tools.fuzzing import fuzz

PER_ROW = """attention per_row {
    input c[H, Nq]
    score(i, j) = dot(q[i], k[j]) * scale
    normalize softmax(sink = c[h, i])
}"""  # a sink per head and query, passed at the call (differentiable, like a table)
CONSTANT = """attention constant {
    score(i, j) = dot(q[i], k[j]) * scale
    mask(i, j) = j <= i
    normalize softmax(sink = -1.5)
}"""  # plain causal softmax and a constant sink: not SDPA's formula, so not its lowering
EMPTY_ROWS = """attention empty_rows {
    param s[H] = 0
    size lag = 3
    score(i, j) = dot(q[i], k[j]) * scale - 0.1 * (i - j)
    mask(i, j) = j <= i - lag
    normalize softmax(sink = s[h] + 0.5 * b)
}"""  # queries 0 .. lag - 1 see no key: their output is 0, the sink takes all their mass
STRIDED = """attention strided_sink {
    size block = 16
    size stride = 2
    param s[H] = 0
    mask(i, j) = (i // block == j // block or (i // block - j // block) % stride == 0) and j <= i
    normalize softmax(sink = s[h])
}"""  # a block-sparse layout
DOCUMENTS = """attention documents_sink {
    input doc[N] : int
    param s[H] = 0
    mask(i, j) = doc[i] == doc[j] and j <= i
    normalize softmax(sink = s[h])
}"""  # packed documents: a block layout built per call from the input


@functools.cache
def _class(spec: str, lowering: str | None = None):
    return attncc.compile(spec, lowering=lowering)


def _gradients(module, run, q, k, v, inputs):
    """{name: d(sum(out * w)) / d name} for q, k, v, the float inputs and the learned tables."""
    leaves = {n: t.detach().clone().requires_grad_() for n, t in (("q", q), ("k", k), ("v", v), *inputs.items())}
    leaves |= dict(module.named_parameters())
    out = run(leaves["q"], leaves["k"], leaves["v"], **{n: leaves[n] for n in inputs})
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return out, dict(zip(leaves, torch.autograd.grad((out * w.to(out.dtype)).sum(), list(leaves.values()))))


def _check_backend(cls, backend: str, dtype: torch.dtype, tol: float, nq: int = 21, nk: int = 19):
    """Output and gradients of `backend` in `dtype` against the float64 reference's."""
    module = make_module(cls, 2, 8, 8, seed=3).double()
    q, k, v, inputs = random_inputs(cls, 2, 2, nq, nk, 8, 8, generator=torch.Generator().manual_seed(2))
    inputs = {n: t.double() for n, t in inputs.items()}
    ref, want = _gradients(module, module.reference, q, k, v, inputs)
    module.to(dtype).backend = backend
    out, got = _gradients(module, module, *(t.to(dtype) for t in (q, k, v)), {n: t.to(dtype) for n, t in inputs.items()})
    assert float((out.detach().double() - ref.detach()).abs().max()) <= tol, f"{cls.SPEC_NAME} [{backend}] output"
    for name, g in want.items():
        error = float((got[name].double() - g).abs().max()) / max(1.0, float(g.abs().max()))
        assert error <= tol, f"{cls.SPEC_NAME} [{cls.LOWERING}, {backend}] d/d{name}: error {error:.2e}"
    return ref


@settings(max_examples=10, deadline=None)
@given(nq=st.integers(1, 9), nk=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_reference_is_the_sink_formula(nq, nk, seed):
    """out_i = sum_j e^(s_ij) v_j / (sum_j e^(s_ij) + e^(c[h, i])), written out directly."""
    cls = _class(PER_ROW)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, n, 4, generator=g, dtype=torch.float64) for n in (nq, nk, nk))
    c = 3 * torch.randn(2, nq, generator=g, dtype=torch.float64)
    e = torch.exp(q @ k.transpose(-1, -2) / 2.0)  # scale = 1 / sqrt(4)
    want = (e @ v) / (e.sum(-1, keepdim=True) + torch.exp(c)[None, :, :, None])
    got = make_module(cls, 2, 4, 4).reference(q, k, v, c=c)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend,dtype,tol", [("torch", torch.float64, 1e-10), ("triton", torch.float32, 1e-4)])
@pytest.mark.parametrize("spec", [PER_ROW, EMPTY_ROWS], ids=["per_head_and_query_input", "rows_without_keys"])
def test_backends_and_gradients_match_reference(spec, backend, dtype, tol):
    _check_backend(_class(spec), backend, dtype, tol)


def test_rows_without_keys_are_zero_and_their_sink_takes_everything():
    cls = _class(EMPTY_ROWS)
    ref = _check_backend(cls, "torch", torch.float64, 1e-10)
    assert ref[:, :, :3].abs().max() == 0 and ref[:, :, 3:].abs().min() > 0


@pytest.mark.parametrize("spec,forced,lowering", [(CONSTANT, None, "tiled"), (STRIDED, "block_sparse", "block_sparse"),
                                                  (DOCUMENTS, "token_blocks", "token_blocks")],
                         ids=["constant", "block_sparse", "token_blocks"])
def test_lowerings(spec, forced, lowering):
    """A constant sink keeps plain causal softmax off SDPA (its fused kernels have no sink); the
    block-sparse layouts, fixed or built per call, add it too, in both backends."""
    cls = _class(spec, forced)
    assert cls.LOWERING == lowering
    for backend, dtype in (("torch", torch.float64), ("triton", torch.float32)):
        module = make_module(cls, 2, 8, 8)
        q, k, v, inputs = random_inputs(cls, 1, 2, 40, 40, 8, 8)
        result = compare(module, q, k, v, inputs, backend, dtype)
        assert result.ok, f"{spec.split()[1]} {backend}: {result.error:.2e}"


def test_sink_changes_the_output():
    """The sink is read: the same spec without it gives another result."""
    cls, plain = _class(CONSTANT), _class(CONSTANT.replace("softmax(sink = -1.5)", "softmax"))
    q, k, v, _ = random_inputs(cls, 1, 2, 6, 6, 4, 4)
    with_sink, without = make_module(cls, 2, 4, 4).reference(q, k, v), make_module(plain, 2, 4, 4).reference(q, k, v)
    assert (with_sink.abs() < without.abs()).any() and not torch.allclose(with_sink, without)


@pytest.mark.parametrize("body,message", [
    ("normalize softmax(sink = s[h] * j)", "a sink cannot read the key index `j`"),
    ("normalize softmax(sink = s[h]) approx favor(features = 8)", "does not compute a softmax with a sink"),
    ("normalize softmax(sink = i < 3)", "a sink must be a number"),
    ("normalize softmax(sink = dot(q[i], k[i]))", "`dot` may appear only in `score` or `weight`"),
    ("normalize softmax(sink = t[h])", "unknown table `t`"),
    ("normalize softmax(s[h])", "takes keyword arguments only"),
    ("normalize softmax(sinks = s[h])", "has no argument `sinks`"),
])
def test_sink_errors(body, message):
    spec = f"attention bad {{\n    param s[H] = 0\n    score(i, j) = dot(q[i], k[j]) * scale\n    {body}\n}}"
    with pytest.raises(SpecError, match=message) as info:
        build(spec)
    assert "^" in info.value.render()


@pytest.mark.parametrize("backend,dtype,tol", [("torch", torch.float64, 1e-10), ("triton", torch.float32, 1e-4)])
def test_split_k_decoding_merges_the_sink(backend, dtype, tol):
    """Few queries, many keys: the splits merged, then the sink as one more split of output 0."""
    cls = _class(EMPTY_ROWS, "decode")
    assert cls.LOWERING == "decode"
    _check_backend(cls, backend, dtype, tol, nq=5, nk=90)


def test_torch_compile_fullgraph_carries_the_sink_gradient():
    """The Triton path stays one custom op under torch.compile, the sink's logits one of its inputs."""
    module = _class(EMPTY_ROWS)(H=2, backend="triton")
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    q, k, v = (torch.randn(1, 2, 20, 16, requires_grad=True) for _ in range(3))
    compiled(q, k, v).square().sum().backward()
    got = [t.grad.clone() for t in (q, k, v, module.s)]
    for t in (q, k, v, module.s):
        t.grad = None
    module(q, k, v).square().sum().backward()
    for g, t in zip(got, (q, k, v, module.s)):
        torch.testing.assert_close(g, t.grad, rtol=1e-5, atol=1e-6)
    assert module.s.grad.abs().min() > 0


SINK_FAMILY = """attention fuzz_sink {
    size w = 5
    param s[H] = normal(std=1.0)
    score(i, j) = dot(q[i], k[j]) * scale + ??
    mask(i, j) = ??
    normalize softmax(sink = s[h] + 0.1 * (i % w) - 1)
}"""  # random masks (rows without keys among them) and biases, every lowering each one admits


def test_fuzzed_masks_and_biases_with_a_sink():
    report = fuzz([SINK_FAMILY], 4, [("torch", torch.float32), ("triton", torch.float32)], seed=3, max_tokens=24)
    assert report.failure is None and report.examples >= 4, report.error
    assert {"tiled", "decode"} <= set(report.lowerings), report.lowerings


NO_SINK_HEAD = """attention no_sink_head {
    input c[H]
    mask(i, j) = j < i
    normalize softmax(sink = log(abs(c[h])) + where(h == 0, log(0.0), 0.0))
}"""  # head 0's sink is -inf (no sink); query 0 sees no key: its row is 0 there too, never NaN


@pytest.mark.parametrize("backend,dtype,tol", [("torch", torch.float64, 1e-10), ("triton", torch.float32, 1e-4)])
def test_a_sink_of_minus_infinity_is_no_sink(backend, dtype, tol):
    ref = _check_backend(_class(NO_SINK_HEAD), backend, dtype, tol)
    assert ref[:, :, 0].abs().max() == 0 and torch.isfinite(ref).all()
