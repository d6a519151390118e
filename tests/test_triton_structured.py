"""Triton backend of the structured lowerings (fft, fft2, graph, rings): generated kernels after the
torch transforms equal the dense reference in fp32 and fp16, over one or many feature groups, and the
generated source says which part runs in torch."""
import pytest
import torch

import attncc
from attncc import rt
from attncc.tools.compare import compare, make_module, random_inputs

from .conftest import ROOT
from .test_grid import FORMS

STRUCTURED = [("rpe_performer", "fft"), ("toeplitz_linear", "fft"), ("grid_rpe", "fft2"), ("ripple", "fft2"),
              ("ripple", "rings"), ("gkat", "graph")]


def _compile(name, lowering):
    cls = attncc.compile(ROOT / "examples" / f"{name}.attn", lowering=lowering)
    assert cls.LOWERING == lowering
    return cls


def _assert_matches(cls, dtype, nq, nk, seed=0):
    nk = nq if cls.GRAPHS else nk
    module = make_module(cls, 2, 4, 12, seed=seed)  # 4 features: the interpreter runs a loop step per feature
    q, k, v, inputs = random_inputs(cls, 1, 2, nq, nk, 4, 12, generator=torch.Generator().manual_seed(seed))
    result = compare(module, q, k, v, inputs, "triton", dtype)
    assert result.ok, f"{cls.SPEC_NAME} {cls.LOWERING} {dtype} {nq}x{nk}: {result.error:.3e} > {result.tolerance:.0e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name,lowering", STRUCTURED)
def test_structured_triton_matches_reference(name, lowering, dtype):
    nq, nk = (37, 21) if dtype == torch.float32 else (19, 40)
    _assert_matches(_compile(name, lowering), dtype, nq, nk)


@pytest.mark.parametrize("budget,tile", [(1, 1), (rt.GROUP_BUDGET, 2)])
@pytest.mark.parametrize("name,lowering", STRUCTURED)
def test_feature_groups_and_tiles(name, lowering, budget, tile, monkeypatch):
    """One feature per group (every launch but the last carries num and den through the fp32 buffer)
    and one feature per step (the GPU's tiling); or one group and several steps of two features."""
    groups = []
    real = rt.kernel_products

    def counted(*args, **kwargs):
        for l0, y in real(*args, **kwargs):
            groups.append(y.shape[0])
            yield l0, y
    monkeypatch.setattr(rt, "GROUP_BUDGET", budget)
    monkeypatch.setattr(rt, "CPU_FEATURE_TILE", tile)
    monkeypatch.setattr(rt, "kernel_products", counted)
    _assert_matches(_compile(name, lowering), torch.float32, 23, 23, seed=3)
    assert len(groups) > 1 if budget == 1 else len(groups) == 1


@pytest.mark.parametrize("form", ["manhattan_min", "ring_unbounded", "ring_window", "offsets"])
def test_grid_forms_in_triton(form):
    """Manhattan rings with query-dependent weights, rings without saturation, a ring mask, offsets."""
    body = FORMS[form][0]
    for lowering in ("rings", "fft2"):
        try:
            cls = attncc.compile(f"attention g {{\nsize w = 5\nfeature phi = elu1\n{body}\n}}", lowering=lowering)
        except attncc.AttnccError:  # not every form has both lowerings
            continue
        _assert_matches(cls, torch.float32, 27, 18)


@pytest.mark.parametrize("name,lowering", STRUCTURED)
def test_generated_source_says_what_runs_in_torch(name, lowering):
    comp = attncc.build(ROOT / "examples" / f"{name}.attn", lowering=lowering)
    kernel = "_ring_contract" if lowering == "rings" else "_contract"
    assert f"def {kernel}(" in comp.triton_source and "@triton.jit" in comp.triton_source
    assert "# torch: phi(K) o [V, 1] and" in comp.triton_source
    assert f"# Triton ({kernel}): phi(Q)," in comp.triton_source
    assert "forward_torch(self, q, k, v, ctx)" not in comp.triton_source.split("def forward_triton")[0]


def test_gradients_through_the_triton_forward():
    cls = _compile("toeplitz_linear", "fft")
    module = make_module(cls, 2, 8, 8)
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 17, 8, generator=g, requires_grad=True) for _ in range(3))
    grads = []
    for backend in ("triton", "torch"):
        module.backend = backend
        grads.append(torch.autograd.grad(module(q, k, v).square().sum(), (q, k, v)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
