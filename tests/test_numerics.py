"""Hostile numbers: huge logits, long sequences, vanishing normalizers never give NaN or inf."""
import pytest
import torch

import attncc
from attncc.tools.compare import make_module

from .conftest import ROOT

SOFTMAX = ["softmax", "causal", "alibi", "sliding_window", "document"]
RUNS = [("torch", torch.float32), ("torch", torch.float16), ("torch", torch.bfloat16),
        ("triton", torch.float32), ("triton", torch.float16)]


def _module(name):
    return make_module(attncc.compile(str(ROOT / "examples" / f"{name}.attn")), 2, 16, 16)


@pytest.mark.parametrize("backend,dtype", RUNS, ids=[f"{b}-{str(d)[6:]}" for b, d in RUNS])
@pytest.mark.parametrize("name", SOFTMAX)
def test_huge_logits_stay_finite_and_exact(name, backend, dtype):
    """|score| up to 1e4: the max is subtracted before exp in every backend."""
    m = _module(name)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=g) for _ in range(3))
    q = q / q.norm(dim=-1, keepdim=True) * 200.0  # |q . k| * scale up to about 1e4
    k = k / k.norm(dim=-1, keepdim=True) * 200.0
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    inputs = {"doc": torch.arange(40) // 7} if name == "document" else {}
    m.backend = backend
    with torch.no_grad():
        out = m(q, k, v, **inputs)
    assert torch.isfinite(out).all()
    ref = m.reference(q, k, v, **inputs)  # the reference of the rounded inputs
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert float((out.double() - ref).abs().max()) <= tol * float(ref.abs().max())


@pytest.mark.parametrize("name,dtype", [("causal", torch.float16), ("linear_elu_causal", torch.float16),
                                        ("linear_elu", torch.bfloat16), ("sliding_window", torch.bfloat16)])
def test_long_sequences_stay_finite(name, dtype):
    m = _module(name)
    q, k, v = (torch.randn(1, 1, 8192, 16).mul(3).to(dtype) for _ in range(3))
    with torch.no_grad():
        assert torch.isfinite(m(q, k, v)).all()


VANISHING = """attention vanishing {
    feature phi = relu
    weight(i, j) = dot(phi(q[i]), phi(k[j]))
    mask(i, j) = j <= i
    normalize rows(eps = EPS)
}"""


@pytest.mark.parametrize("lowering", ["tiled", "linear_chunked"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("eps", ["0", "1e-6"])
def test_vanishing_normalizers_are_guarded(eps, backend, lowering):
    """relu features of negative queries are exactly 0: the row normalizer vanishes."""
    cls = attncc.compile(VANISHING.replace("EPS", eps), lowering=lowering)
    m = cls(backend=backend)
    q = -torch.rand(1, 1, 20, 16)  # phi(q) = 0 for every query
    k, v = torch.randn(1, 1, 20, 16), torch.randn(1, 1, 20, 16)
    out = m(q, k, v)
    assert torch.equal(out, torch.zeros_like(out))
    q[0, 0, 10:] *= -1  # half the rows now see keys
    out = m(q, k, v)
    assert torch.isfinite(out).all() and torch.allclose(out.double(), m.reference(q, k, v), atol=1e-4)
