"""Tensor descriptors (TMA) in the tiled forward: the launcher's choice (attncc/runtime/tma.py) and the
USE_TMA variant's meaning. Triton's interpreter runs descriptor loads too (and checks their alignment),
so the variant that sm_90 gets is held to the reference here, with the feature test forced on; that it
compiles to TMA copies for sm_90 is checked by the compile gate (tests/test_compile_gate.py)."""
from __future__ import annotations

import pytest
import torch

import attncc
from attncc.runtime import tma
from attncc.tools.compare import make_module, random_inputs
from attncc.tools.gpu_compile import record_launches

from .conftest import ROOT


def test_describable_needs_a_contiguous_last_dim_and_16_byte_strides():
    assert tma.describable(torch.zeros(2, 3, 70, 24, dtype=torch.float16))  # rows of 48 bytes
    assert not tma.describable(torch.zeros(2, 3, 70, 4, dtype=torch.float16))  # rows of 8 bytes
    assert not tma.describable(torch.zeros(2, 3, 24, 70, dtype=torch.float32).transpose(-1, -2))
    assert not tma.describable(torch.zeros(2, 3, 70, 33, dtype=torch.float32)[..., :32])  # rows of 132 bytes
    assert not tma.describable(torch.zeros(2 * 3 * 70 * 32 + 1, dtype=torch.float16)[1:].view(2, 3, 70, 32))


def test_the_pointer_path_off_cuda_and_in_the_interpreter():
    cls = attncc.compile(ROOT / "examples" / "causal.attn")
    forward = [launch for launch in record_launches(cls, torch.bfloat16, 64, backward=False)
               if launch.kernel == "_attn_fwd"]
    assert forward and all(dict(launch.constexprs)["USE_TMA"] is False for launch in forward)
    assert not tma.usable(torch.zeros(1, 1, 16, 16))
    assert tma.interpreting()


@pytest.mark.parametrize("name, dtype", [("causal", torch.float32), ("causal", torch.float16),
                                         ("alibi", torch.float32), ("hypercube", torch.float32)])
def test_the_tma_variant_matches_the_reference(name, dtype, monkeypatch):
    """USE_TMA forced on, forward and backward: the query tile past Nq and the columns past D come zero
    from the descriptors (Nq = N = 70, d = 24 of BLOCK_D 32, e = 40 of 64); full tiles of the band and
    of the layout load their rows through them, the partial ones through pointers."""
    cls = attncc.compile(ROOT / "examples" / f"{name}.attn")
    module = make_module(cls, heads=2, dim=24, dim_v=40, seed=1)
    q, k, v, inputs = random_inputs(cls, 2, 2, 70, 70, 24, 40)
    q, k, v = (t.to(dtype) for t in (q, k, v))
    dout = torch.randn(2, 2, 70, 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    module.backend = "torch"
    exact = [t.double().requires_grad_() for t in (q, k, v)]
    reference = module(*exact, **inputs)
    reference_grads = torch.autograd.grad(reference, exact, dout)
    chosen = []
    monkeypatch.setattr(tma, "usable", lambda *tensors: chosen.append(len(tensors)) or True)
    module.backend = "triton"
    inexact = [t.requires_grad_() for t in (q, k, v)]
    out = module(*inexact, **inputs)
    grads = torch.autograd.grad(out, inexact, dout.to(dtype))
    assert chosen == [3, 4], "the forward and backward launchers did not both ask for tensor descriptors"
    tolerance = 2e-2 if dtype == torch.float16 else 1e-4
    torch.testing.assert_close(out.double(), reference.detach(), atol=tolerance, rtol=tolerance)
    for grad, expected in zip(grads, reference_grads):
        torch.testing.assert_close(grad.double(), expected, atol=5 * tolerance, rtol=5 * tolerance)
    q, k, v = (t.detach() for t in (q, k, v))
    # the variant really reads through descriptors: the interpreter refuses a 4-byte row stride
    with pytest.raises(Exception, match="16-byte"):
        module(q.transpose(-1, -2).contiguous().transpose(-1, -2), k, v, **inputs)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["causal", "alibi"])
def test_sm_90_takes_the_tma_path_and_matches(name):
    """On an H100 / H200 the launcher chooses the descriptors for contiguous bf16 tensors; the output
    matches the torch backend. (Not run without a GPU.)"""
    if torch.cuda.get_device_capability()[0] != 9 or tma.interpreting():
        pytest.skip("tensor descriptors are chosen on sm_90 only, compiled (TRITON_INTERPRET=0)")
    cls = attncc.compile(ROOT / "examples" / f"{name}.attn")
    module = make_module(cls, heads=4, dim=128, dim_v=128, seed=2).cuda()
    q, k, v, inputs = random_inputs(cls, 2, 4, 1000, 1000, 128, 128, device="cuda")
    q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    assert tma.usable(q, k, v) and not tma.usable(q[..., 1:], k, v)  # base off 16 bytes
    module.backend = "torch"
    reference = module(q.double(), k.double(), v.double(), **inputs)
    module.backend = "triton"
    torch.testing.assert_close(module(q, k, v, **inputs).double(), reference, atol=3e-2, rtol=3e-2)
