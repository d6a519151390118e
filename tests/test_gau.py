"""GAU layer (FLASH): equals the paper's formulas written out densely, is causal, and trains."""
import torch
from torch.nn import functional as F

import attncc
from attncc.nn.gau import FLASH_SPEC, GAU

from .conftest import ROOT
from .test_flash import _paper_w


def test_default_spec_is_the_flash_example():
    assert " ".join(FLASH_SPEC.split()) in " ".join((ROOT / "examples" / "flash.attn").read_text().split())
    assert attncc.compile(FLASH_SPEC).LOWERING == "mixed_chunk"


def test_matches_dense_formulas():
    torch.manual_seed(0)
    layer = GAU(6, shared_dim=4, c=3).double()
    with torch.no_grad():
        layer.attention.b.normal_()
        layer.attention.a.normal_()
        layer.beta.normal_()
    x = torch.randn(2, 11, 6, dtype=torch.float64)
    u, v = F.silu(layer.to_uv(x)).chunk(2, -1)
    z = F.silu(layer.to_z(x))
    q, k = z * layer.gamma[0] + layer.beta[0], z * layer.gamma[1] + layer.beta[1]
    w = _paper_w(q[:, None], k[:, None], layer.attention.b, layer.attention.a, 3, causal=True)
    want = layer.out(u * (w @ v[:, None].double())[:, 0])
    assert torch.allclose(layer(x), want, atol=1e-10)


def test_causal_and_trainable():
    torch.manual_seed(1)
    layer = GAU(8, shared_dim=4, c=4)
    x = torch.randn(1, 10, 8)
    y = layer(x)
    x2 = x.clone()
    x2[:, 7:] = torch.randn(1, 3, 8)
    assert torch.allclose(layer(x2)[:, :7], y[:, :7], atol=1e-6)  # no token sees a later one
    y.square().mean().backward()
    names = {n for n, p in layer.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert {"to_uv.weight", "to_z.weight", "gamma", "beta", "out.weight", "attention.a"} <= names
