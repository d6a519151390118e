"""Grouped-query attention in the generated Triton kernels (Triton's interpreter on the CPU): q with H
heads, k and v with Hkv heads dividing H, query head h reading key/value head h // (H / Hkv) inside the
kernels (no expanded copy). Forward and gradients against the torch backend in float64 on k and v
expanded with repeat_interleave (here, in the test only), whose autograd sums each group's gradients."""
import copy

import pytest
import torch

import attncc
from attncc.tools.compare import make_module, random_inputs

from .conftest import ROOT

DECODE = """attention decode {
    param slope[H] = alibi
    score(i, j) = dot(q[i], k[j]) * scale - slope[h] * (i + N - Nq - j)
    mask(i, j) = j <= i + N - Nq
    normalize softmax
}"""
HEAD_TABLE = """attention head_table {
    param rpe[H, 33] = normal(mean=0.0, std=1.0)
    score(i, j) = dot(q[i], k[j]) * scale + rpe[h, i - j + 16]
    mask(i, j) = abs(i - j) <= 16
}"""  # a per-head table: its gradient atomics per query head, dK / dV summed over the group
MRA = "attention a { normalize softmax approx mra(block = 16, blocks_per_row = 2, first = 1, diagonal = 1) }"
CASES = {  # name: (spec, lowering, sizes, (Nq, N), backward kernels)
    "causal": ("causal", None, {}, (37, 37), True),
    "alibi": ("alibi", None, {}, (37, 30), True),
    "head_table": (HEAD_TABLE, None, {}, (40, 40), True),
    "window": ("sliding_window", None, {"window": 5}, (50, 50), True),
    "block_sparse": ("block_diagonal", None, {"chunk": 16}, (50, 40), True),
    "token_blocks": ("document", "token_blocks", {}, (40, 40), True),
    "linear": ("linear_elu", "linear", {}, (37, 20), True),
    "linear_chunked": ("linear_elu_causal", None, {}, (37, 37), True),
    "retention": ("retention", None, {}, (37, 37), True),
    "gated": ("simple_gla", None, {}, (37, 37), True),
    "gla": ("gla", None, {}, (37, 37), True),  # a gate per dimension
    "decode": (DECODE, "decode", {}, (3, 40), True),
    "fft": ("toeplitz_linear", "fft", {}, (30, 30), False),
    "rings": ("ripple", "rings", {}, (36, 36), False),
    "mixed_chunk": ("flash", None, {"c": 16}, (40, 40), False),
    "mra": (MRA, None, {}, (40, 40), False),
}
PARAMS = [(case, kv) for case in sorted(CASES) for kv in (1, 2)]
TOLERANCE = {torch.float32: 1e-4, torch.float16: 3e-2}
B, H, D, E = 2, 4, 16, 8


def _compile(spec, lowering):
    return attncc.compile(spec if "{" in spec else str(ROOT / "examples" / f"{spec}.attn"), lowering=lowering)


def _inputs(cls, nq, n, kv_heads):
    q, k, v, inputs = random_inputs(cls, B, H, nq, n, D, E, generator=torch.Generator().manual_seed(0))
    for name, tokens in (("g", -1), ("G", -2)):  # cumulative log-gates: non-increasing along the tokens
        if name in inputs:
            gates = torch.rand(inputs[name].shape, generator=torch.Generator().manual_seed(2))
            inputs[name] = -gates.cumsum(tokens) * 0.3
    return q, k[:, :kv_heads].contiguous(), v[:, :kv_heads].contiguous(), inputs


def _call(module, q, k, v, inputs):
    return module(q, k, v, **inputs)


def _reference(module, q, k, v, inputs):
    group = q.shape[1] // k.shape[1]
    return module(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), **inputs)


def _run(call, module, q, k, v, inputs, dtype, backward):
    leaves = [x.detach().to(dtype).requires_grad_(backward) for x in (q, k, v)]
    out = call(module, *leaves, inputs)
    if not backward:
        return [out.detach()]
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (out * w.to(out.dtype)).sum().backward()
    return [out.detach()] + [x.grad for x in leaves] + [p.grad for p in module.parameters() if p.grad is not None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case, kv_heads", PARAMS)
def test_grouped_heads_match_expanded_torch(case, kv_heads, dtype):
    spec, lowering, sizes, (nq, n), backward = CASES[case]
    cls = _compile(spec, lowering)
    assert ("backward: generated Triton kernels" in cls.TRITON_LOWERING) == backward, cls.TRITON_LOWERING
    module = make_module(cls, H, D, E, **sizes)
    module.backend = "triton"
    reference = copy.deepcopy(module).double()
    reference.backend = "torch"
    q, k, v, inputs = _inputs(cls, nq, n, kv_heads)
    assert lowering is None or module.lowering_at(n) == lowering
    got = _run(_call, module, q, k, v, inputs, dtype, backward)
    want = _run(_reference, reference, q, k, v, inputs, torch.float64, backward)
    assert [g.shape for g in got] == [r.shape for r in want]
    if backward:
        assert got[2].shape == k.shape and got[3].shape == v.shape
    for i, (g, r) in enumerate(zip(got, want)):
        error = ((g.double() - r).abs().max() / r.abs().max().clamp(min=1)).item()
        what = ("out", "dq", "dk", "dv")[i] if i < 4 else f"table gradient {i - 4}"
        assert error < TOLERANCE[dtype], f"{case} Hkv={kv_heads} {dtype} {what}: {error:.2e}"



TRITON_MEMORY_CASES = [("alibi", "tiled"), ("alibi", "decode"), ("block_diagonal", "block_sparse"),
                       ("document", "token_blocks"), ("linear_elu", "linear"), ("linear_elu_causal", "linear_chunked"),
                       ("retention", "linear_chunked"), ("simple_gla", "linear_gated"), ("toeplitz_linear", "fft"),
                       ("flash", "mixed_chunk"), ("mra2", "mra")]


@pytest.mark.parametrize("name,lowering", TRITON_MEMORY_CASES, ids=[f"{n}-{lw}" for n, lw in TRITON_MEMORY_CASES])
def test_no_expanded_copy_of_k_or_v_in_the_triton_forward(name, lowering):
    """Hkv = 1: no op of the Triton forward (launchers, torch parts, the custom op) creates a tensor as large
    as k expanded to the H query heads (tests/test_gqa.py's detector, on the Triton backend)."""
    from .test_gqa import _kv_copies
    B, heads, N, dim = 1, 6, 256, 16
    cls = _compile(name, lowering)
    module = make_module(cls, heads, dim, dim, kv_heads=1, **({"c": 32} if name == "flash" else {}))
    module.backend = "triton"
    nq = 5 if lowering in ("tiled", "decode", "block_sparse", "token_blocks") else N
    q, k, v, inputs = random_inputs(cls, B, heads, nq, N, dim, dim, kv_heads=1)
    q, k, v = q.float(), k.float(), v.float()
    with torch.no_grad():
        found = _kv_copies(lambda: module(q, k, v, **inputs), B, heads, N, dim)
    assert module.last_lowering == lowering and module.last_backend == "triton"
    assert not found, f"{name} @ {lowering} made [B, H, N, D]-sized tensors: {found[:3]}"
