"""Generated Triton backward kernels (run by Triton's interpreter on the CPU): gradients of q, k, v and
of the tables the score reads equal those of the torch backend in float64; the custom op compiles."""
import copy

import pytest
import torch

import attncc
from attncc.tools.compare import make_module, random_inputs

from .conftest import ROOT

BIASED = """attention biased {
    input shift[N]
    param rpe[33] = normal(mean=0.0, std=1.0)
    score(i, j) = dot(q[i], k[j]) * scale + shift[j] * 0.5 + rpe[i - j + 16] + tanh(dot(q[i], k[j]))
    mask(i, j) = abs(i - j) <= 16
}"""
CALCULUS = """attention calculus {
    param t[H] = uniform(low=0.5, high=1.5)
    score(i, j) = sigmoid(dot(q[i], k[j]) * scale) * 2.0 + abs(dot(q[i], k[j])) * 0.1 + max(dot(q[i], k[j]) * scale, -0.5) + where(i > j, dot(q[i], k[j]) * scale, 0.0) + (dot(q[i], k[j]) * 0.1) ** 2 + 2.0 ** (dot(q[i], k[j]) * 0.1) + t[h] ** 1.5 * 0.1 + sqrt(t[h] + 1.0) * log(t[h] + 1.0) * min(dot(q[i], k[j]) * scale, 0.3) + (dot(q[i], k[j]) * 0.2) % 1.5
    mask(i, j) = j <= i
}"""  # every derivative rule of attncc.lang.derivative
CASES = {  # name: (spec, lowering, sizes, (B, H, Nq, N, D, E)); lengths past one 16-token tile
    "softmax": ("softmax", None, {}, (1, 2, 20, 37, 16, 8)),
    "causal": ("causal", None, {}, (2, 1, 37, 37, 8, 16)),
    "window": ("sliding_window", None, {"window": 5}, (1, 2, 50, 50, 16, 8)),  # tiles outside the band skipped
    "alibi": ("alibi", None, {}, (1, 2, 37, 30, 16, 8)),
    "block_sparse": ("block_diagonal", None, {"chunk": 16}, (1, 2, 50, 40, 16, 8)),
    "biased": (BIASED, None, {}, (2, 2, 40, 40, 16, 8)),
    "calculus": (CALCULUS, None, {}, (1, 2, 37, 37, 16, 8)),
    "linear_causal": ("linear_elu_causal", None, {}, (2, 1, 37, 37, 16, 8)),
    "linear_causal_nq_ne_n": ("linear_elu_causal", None, {}, (1, 2, 20, 37, 16, 8)),
    "retention": ("retention", None, {}, (1, 2, 37, 37, 16, 8)),
    "linear": ("linear_elu", "linear", {}, (1, 2, 37, 20, 16, 8)),
    # 48 value columns: two column blocks of the forward's state (E_TILE 32), the backward reads both
    "linear_value_blocks": ("linear_elu", "linear", {}, (1, 1, 37, 20, 16, 48)),
    "retention_value_blocks": ("retention", None, {}, (1, 1, 37, 37, 16, 48)),
    # feature columns split across programs (FEATURE_TILE 128, fp32 64): Based's 153 tensor-power
    # features at d = 16 (both dtypes); 80 columns, fp32 only (decayed too): partial dV and forward den
    "based_feature_blocks": ("based", None, {}, (1, 2, 37, 37, 16, 8)),
    "linear_causal_feature_blocks": ("linear_elu_causal", None, {}, (1, 2, 37, 37, 80, 8)),
    "retention_feature_blocks": ("retention", None, {}, (1, 1, 37, 37, 80, 8)),
    "weighted_rows": ("toeplitz_linear", "tiled", {}, (1, 2, 37, 20, 16, 8)),  # feature maps, a table, rows
    "weighted_none": ("retention", "tiled", {}, (1, 2, 37, 37, 16, 8)),
}
TOLERANCE = {torch.float32: 1e-4, torch.float16: 3e-2}


def _compile(spec, lowering):
    return attncc.compile(spec if "{" in spec else str(ROOT / "examples" / f"{spec}.attn"), lowering=lowering)


def _grads(module, q, k, v, inputs, dtype):
    """Gradients of sum(out * w) for a fixed random w: q, k, v, float inputs, then the module's tables."""
    leaves = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
    floats = {n: t.detach().to(torch.float64 if dtype == torch.float64 else torch.float32).requires_grad_()
              for n, t in inputs.items() if t.is_floating_point()}
    out = module(*leaves, **{**inputs, **floats})
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (out * w.to(out.dtype)).sum().backward()
    return [x.grad for x in leaves] + [t.grad for t in floats.values()] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_match_torch_float64(case, dtype):
    spec, lowering, sizes, (b, h, nq, nk, d, e) = CASES[case]
    cls = _compile(spec, lowering)
    assert "backward: generated Triton kernels" in cls.TRITON_LOWERING
    module = make_module(cls, h, d, e, **sizes)
    module.backend = "triton"
    reference = copy.deepcopy(module).double()
    reference.backend = "torch"
    q, k, v, inputs = random_inputs(cls, b, h, nq, nk, d, e, generator=torch.Generator().manual_seed(0))
    got = _grads(module, q, k, v, inputs, dtype)
    want = _grads(reference, q, k, v, inputs, torch.float64)
    assert len(got) == len(want) and all(g is not None for g in got)
    for i, (g, r) in enumerate(zip(got, want)):
        error = ((g.double() - r).abs().max() / r.abs().max().clamp(min=1)).item()
        assert error < TOLERANCE[dtype], f"{case} {dtype} gradient {i}: relative error {error:.2e}"


def test_table_gradients_come_from_the_kernels():
    """The custom op's backward, not recomputation: the autograd node is the op's."""
    cls = _compile("alibi", None)
    q = torch.randn(1, 2, 10, 16, requires_grad=True)
    out = cls(H=2, backend="triton")(q, q, q)
    assert "attncc_triton_attention" in out.grad_fn.name(), out.grad_fn.name()


def test_specs_without_backward_kernels_recompute_through_torch():
    spec = """attention decayed {
        feature phi = elu1
        param t[H] = uniform(low=0.05, high=0.5)
        weight(i, j) = dot(phi(q[i]), phi(k[j])) * exp(-t[h] * (i - j))
        mask(i, j) = j <= i
    }"""
    power = "attention p { score(i, j) = (dot(q[i], k[j]) * 0.1) ** (dot(q[i], k[j]) * 0.1) }"
    for source, lowering, backward in ((spec, "linear_chunked", "recomputation through the torch backend"),
                                       (power, "tiled", "recomputation through the torch backend's autograd (a power"),
                                       ("toeplitz_linear", "fft", "recomputation through the torch backend's "
                                        "autograd (no backward kernel for the fft lowering)"),
                                       ("lara", "lara", "torch autograd")):
        assert f"backward: {backward}" in _compile(source, lowering).TRITON_LOWERING
    cls = _compile(spec, "linear_chunked")
    module = make_module(cls, 2, 8, 8)
    module.backend = "triton"
    reference = copy.deepcopy(module).double()
    reference.backend = "torch"
    q, k, v, _ = random_inputs(cls, 1, 2, 20, 20, 8, 8)
    for g, r in zip(_grads(module, q, k, v, {}, torch.float32), _grads(reference, q, k, v, {}, torch.float64)):
        assert torch.allclose(g.double(), r, rtol=1e-4, atol=1e-5)


def test_torch_compile_fullgraph():
    """The Triton path is one opaque custom op: no graph break, and its registered backward runs.
    (aot_eager: the graph holds nothing but the op, so inductor would add only its C++ compile time.)"""
    cls = _compile("alibi", None)
    module = cls(H=2, backend="triton")
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    q, k, v = (torch.randn(1, 2, 20, 16, requires_grad=True) for _ in range(3))
    compiled(q, k, v).square().sum().backward()
    got = [t.grad.clone() for t in (q, k, v)] + [module.slope.grad.clone()]
    for t in (q, k, v, module.slope):
        t.grad = None
    module(q, k, v).square().sum().backward()
    for g, r in zip(got, [q.grad, k.grad, v.grad, module.slope.grad]):
        assert torch.allclose(g, r, rtol=1e-5, atol=1e-6)


def test_inspect_says_which_backward(capsys):
    from attncc.cli import main
    main(["inspect", str(ROOT / "examples" / "alibi.attn")])
    assert "triton backward: generated Triton kernels (FlashAttention-2" in capsys.readouterr().out
    main(["inspect", str(ROOT / "examples" / "lara.attn")])
    assert "triton backward: torch autograd (the forward runs in torch)" in capsys.readouterr().out
    main(["inspect", str(ROOT / "examples" / "toeplitz_linear.attn"), "--lowering", "fft"])
    assert "triton backward: recomputation through the torch backend's autograd" in capsys.readouterr().out


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_on_gpu_bf16(case):
    spec, lowering, sizes, _ = CASES[case]
    cls = _compile(spec, lowering)
    module = make_module(cls, 4, 64, 64, **sizes).cuda()
    module.backend = "triton"
    reference = copy.deepcopy(module).double()
    reference.backend = "torch"
    q, k, v, inputs = random_inputs(cls, 2, 4, 300, 300, 64, 64, device="cuda")
    for g, r in zip(_grads(module, q, k, v, inputs, torch.bfloat16), _grads(reference, q, k, v, inputs, torch.float64)):
        assert ((g.double() - r).abs().max() / r.abs().max().clamp(min=1)).item() < 5e-2
