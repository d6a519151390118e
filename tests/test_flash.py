"""FLASH mixed chunk attention: the form is found by analysis (in equivalent spellings), refused where
it does not hold, and every backend equals the paper's dense W = blockdiag_c(relu^2(Q K^T / c + b))
+ M o (a Q K^T / N) computed here independently of the spec."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attncc

from .conftest import ROOT

LOCAL = "where(i // c == j // c, max(dot(q[i], k[j]) / c + b[i - j + c - 1], 0) ** 2, 0)"
HEAD = "size c = 4\nparam b[2 * c - 1] = 0\nparam a[H] = 1\n"


def _spec(linear: str, mask: str = "") -> str:
    return f"attention f {{\n{HEAD}weight(i, j) = {LOCAL}\n + {linear}\n{mask}\nnormalize none\n}}"


def _paper_w(q, k, b, a, c, causal):
    """W of the paper in float64: relu^2 inside chunks (lower-triangular if causal), plus the linear
    part over all chunks (bidirectional) or strictly earlier chunks (causal)."""
    q, k = q.double(), k.double()
    nq, nk = q.shape[2], k.shape[2]
    i, j = torch.arange(nq).view(-1, 1), torch.arange(nk).view(1, -1)
    qk = q @ k.transpose(-1, -2)
    same = (i // c) == (j // c)
    rel = b.double()[(i - j + c - 1).clamp(0, 2 * c - 2)]
    quad = torch.where(same & ((j <= i) if causal else True), torch.relu(qk / c + rel) ** 2, 0.0)
    across = (j // c < i // c) if causal else torch.ones_like(same)
    lin = torch.where(across, a.double().view(1, -1, 1, 1) * qk / nk, 0.0)
    return quad + lin


BIDIRECTIONAL = (ROOT / "examples" / "flash.attn").read_text().replace("where(j // c < i // c, a[h] * dot(q[i], k[j]) / N, 0)",
                                                                      "a[h] * dot(q[i], k[j]) / N").replace("mask(i, j) = j <= i", "")


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("backend,dtype,tol", [("torch", torch.float64, 1e-10), ("torch", torch.float32, 1e-5),
                                               ("triton", torch.float32, 1e-5)])
@settings(max_examples=4, deadline=None)
@given(c=st.integers(1, 9), nq=st.integers(1, 30), nk=st.integers(1, 30), seed=st.integers(0, 2**16))
def test_matches_paper_dense_w(causal, backend, dtype, tol, c, nq, nk, seed):
    cls = attncc.compile(str(ROOT / "examples" / "flash.attn") if causal else BIDIRECTIONAL)
    assert cls.LOWERING == "mixed_chunk"
    g = torch.Generator().manual_seed(seed)
    module = cls(H=2, c=c, backend=backend)
    with torch.no_grad():
        module.b.copy_(torch.randn(2 * c - 1, generator=g))
        module.a.copy_(torch.randn(2, generator=g))
    q, k = torch.randn(2, 2, nq, 8, generator=g), torch.randn(2, 2, nk, 8, generator=g)
    v = torch.randn(2, 2, nk, 5, generator=g)
    want = _paper_w(q, k, module.b.detach(), module.a.detach(), c, causal) @ v.double()
    got = module(q.to(dtype), k.to(dtype), v.to(dtype)).double()
    assert (got - want).abs().max() <= tol * max(1.0, want.abs().max())


@pytest.mark.parametrize("linear,mask,across", [
    ("where(j // c < i // c, a[h] * dot(q[i], k[j]) / N, 0)", "mask(i, j) = j <= i", "earlier"),
    ("where(i // c > j // c, dot(q[i], k[j]) * a[h], 0)", "", "earlier"),             # swapped sides
    ("where(i // c - j // c >= 1 and j <= i, dot(q[i], k[j]), 0)", "", "earlier"),     # plus an implied conjunct
    ("where(j // c <= i // c, dot(q[i], k[j]), 0)", "", "upto"),
    ("where(j // c <= i // c, dot(q[i], k[j]), 0)", "mask(i, j) = j <= i", "causal"),
    ("dot(q[i], k[j]) * a[h]", "mask(i, j) = i >= j", "causal"),
    ("a[h] * dot(q[i], k[j]) / N", "", "all"),
    ("dot(phi(q[i]), phi(k[j]))", "", "all"),
])
def test_forms_are_found(linear, mask, across):
    feature = "feature phi = elu1\n" if "phi" in linear else ""
    comp = attncc.build(_spec(linear, feature + mask))
    assert comp.plan.lowering == "mixed_chunk"
    (term,) = comp.plan.attrs["mixed"].linear
    assert term.across == across


@pytest.mark.parametrize("linear,mask", [
    ("where(j < i - 3, dot(q[i], k[j]), 0)", ""),                 # a token band, not chunks
    ("where(j // 3 < i // 3, dot(q[i], k[j]), 0)", ""),            # chunks of another size
    ("where(j // c < i // c, dot(q[i], k[j]) * (i - j), 0)", ""),  # modulation reads i, j
    ("where(j // c < i // c, dot(q[i], k[j]) ** 2, 0)", ""),       # not kernelized
    ("dot(q[i], k[j])", "mask(i, j) = i - j < 7"),                 # a window, not chunks
])
def test_non_forms_stay_quadratic(linear, mask):
    comp = attncc.build(_spec(linear, mask))
    assert "mixed" not in comp.plan.attrs
    assert comp.plan.lowering == "tiled"


@pytest.mark.parametrize("linear,mask", [
    ("where(j // c <= i // c, dot(q[i], k[j]), 0)", ""),
    ("dot(q[i], k[j]) * a[h]", "mask(i, j) = i >= j"),
    ("where(j // c < i // c, dot(phi(q[i]), phi(k[j])), 0) + 0.5 * dot(q[i], k[j])", "feature phi = elu1"),
])
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("lowering", ["mixed_chunk", "tiled"])
def test_every_form_matches_reference(linear, mask, backend, lowering):
    """tiled runs the mixed_attend node read back as one weight (MixedForm.weight, mask folded in)."""
    cls = attncc.compile(_spec(linear, mask), lowering=lowering)
    assert cls.LOWERING == lowering and cls.compilation.optimized.find("mixed_attend")
    g = torch.Generator().manual_seed(0)
    module = cls(H=2, c=3, backend=backend)
    with torch.no_grad():
        module.b.normal_(generator=g)
        module.a.normal_(generator=g)
    q, k, v = (torch.randn(1, 2, 17, 8, generator=g) for _ in range(3))
    want = module.reference(q, k, v)
    got = module(q, k, v).double()
    assert (got - want).abs().max() <= 1e-5 * max(1.0, want.abs().max())


def test_rows_normalization_and_gradients():
    """normalize rows: local and linear row sums share one denominator; gradients of q, k, v and
    of the tables equal the dense reference's."""
    cls = attncc.compile(_spec("where(j // c < i // c, dot(phi(q[i]), phi(k[j])), 0)",
                               "feature phi = elu1\nmask(i, j) = j <= i").replace("normalize none", "normalize rows"))
    assert cls.LOWERING == "mixed_chunk"
    g = torch.Generator().manual_seed(1)
    module = cls(H=2, c=3).double()
    with torch.no_grad():
        module.b.normal_(generator=g)
    q, k, v = (torch.randn(1, 2, 11, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = module(q, k, v)
    grads = torch.autograd.grad(out.square().sum(), [q, k, v, module.b])
    from attncc.oracle.dense import dense_attention
    ref = dense_attention(cls.checked, q, k, v, module.params_dict(), {}, module.sizes)
    want = torch.autograd.grad(ref.square().sum(), [q, k, v, module.b])
    assert torch.allclose(out, ref, atol=1e-10)
    for a, b in zip(grads, want):
        assert torch.allclose(a, b, atol=1e-8)
