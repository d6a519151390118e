"""The layer form: a compiled spec inside multi-head attention projections, a drop-in for
torch.nn.MultiheadAttention."""
import pytest
import torch

import attncc
from attncc import AttnccError, ShapeError

from .conftest import ROOT

SOFTMAX = str(ROOT / "examples" / "softmax.attn")
DOCUMENT = str(ROOT / "examples" / "document.attn")


def x_of(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias,kdim,vdim", [(True, None, None), (False, None, None), (True, 6, 10)])
def test_softmax_layer_is_multihead_attention_with_its_weights(batch_first, bias, kdim, vdim):
    torch.manual_seed(0)
    opts = dict(bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first, dtype=torch.float64)
    mha = torch.nn.MultiheadAttention(16, 4, **opts)
    layer = attncc.layer(SOFTMAX, 16, 4, **opts)
    layer.load_state_dict(mha.state_dict())
    shape = (lambda n, d: (3, n, d)) if batch_first else (lambda n, d: (n, 3, d))
    q, k, v = x_of(*shape(7, 16)), x_of(*shape(5, kdim or 16), seed=1), x_of(*shape(5, vdim or 16), seed=2)
    pad = torch.arange(5) >= torch.tensor([5, 2, 4])[:, None]  # right padding, one sequence whole
    for kw in ({}, {"key_padding_mask": pad}):
        want, want_w = mha(q, k, v, need_weights=True, average_attn_weights=False, **kw)
        got, got_w = layer(q, k, v, need_weights=True, average_attn_weights=False, **kw)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(got_w, want_w)
    torch.testing.assert_close(layer(q, k, v, need_weights=True)[1], mha(q, k, v)[1])


def test_unbatched_inputs_and_gradients_match_multihead_attention():
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(8, 2, dtype=torch.float64)
    layer = attncc.layer(attncc.compile(SOFTMAX), 8, 2, dtype=torch.float64)  # a compiled class
    layer.load_state_dict(mha.state_dict())
    x = x_of(6, 8).requires_grad_()
    want, _ = mha(x, x, x)
    got, weights = layer(x)
    assert weights is None
    torch.testing.assert_close(got, want)
    (g_want,) = torch.autograd.grad(want.sum(), x)
    (g_got,) = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(g_got, g_want)
    grads = torch.autograd.grad(layer(x)[0].square().sum(), [layer.in_proj_weight, layer.out_proj.weight])
    assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("spec,sizes", [("sliding_window", {"window": 2}), ("alibi", {}), ("performer", {}),
                                        ("linear_elu_causal", {})])
def test_layer_is_projections_around_the_core_reference(spec, sizes):
    torch.manual_seed(0)
    layer = attncc.layer(str(ROOT / "examples" / f"{spec}.attn"), 12, 3, batch_first=True, **sizes).double().eval()
    x = x_of(2, 9, 12)
    wq, wk, wv = layer.in_proj_weight.split(12)
    bq, bk, bv = layer.in_proj_bias.split(12)
    heads = lambda t: t.view(2, 9, 3, 4).transpose(1, 2)
    core = layer.attention.reference(heads(x @ wq.T + bq), heads(x @ wk.T + bk), heads(x @ wv.T + bv))
    want = layer.out_proj(core.transpose(1, 2).reshape(2, 9, 12))
    got, _ = layer(x)
    torch.testing.assert_close(got, want)


def test_inputs_pass_through_and_padding_cuts_them_per_sequence():
    """Each padded sequence gives what it gives alone, its `doc` input cut to its length."""
    torch.manual_seed(0)
    layer = attncc.layer(DOCUMENT, 8, 2, batch_first=True, dtype=torch.float64)
    x = x_of(3, 6, 8)
    doc = torch.tensor([[0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]])
    lengths = [6, 4, 2]
    pad = torch.arange(6) >= torch.tensor(lengths)[:, None]
    out, w = layer(x, key_padding_mask=pad, doc=doc, need_weights=True)
    for b, n in enumerate(lengths):
        alone, w_alone = layer(x[b:b + 1, :n], doc=doc[b, :n], need_weights=True)
        torch.testing.assert_close(out[b:b + 1, :n], alone)
        torch.testing.assert_close(w[b:b + 1, :n, :n], w_alone)
        assert (w[b, :, n:] == 0).all()
    same_doc, _ = layer(x, doc=doc[2])  # an unbatched input serves every sequence
    torch.testing.assert_close(same_doc, layer(x, doc=doc[2].expand(3, 6))[0])
    tap = layer.tap(x, key_padding_mask=pad, rows=torch.tensor([1]), doc=doc)
    assert tap.shape == (3, 2, 1, 6)
    torch.testing.assert_close(tap.mean(1), w[:, 1:2])


def test_dropout_acts_in_training_only():
    layer = attncc.layer(SOFTMAX, 8, 2, dropout=0.5, batch_first=True)
    x = torch.randn(2, 5, 8)
    layer.eval()
    torch.testing.assert_close(layer(x)[0], layer(x)[0])
    layer.train()
    torch.manual_seed(1)
    assert not torch.allclose(layer(x)[0], layer.eval()(x)[0])


def test_layer_errors():
    with pytest.raises(AttnccError, match="divisible by num_heads"):
        attncc.layer(SOFTMAX, 10, 3)
    with pytest.raises(AttnccError, match="positive integer"):
        attncc.layer(SOFTMAX, 0, 1)
    with pytest.raises(AttnccError, match="spec .path or text. or a class"):
        attncc.layer(42, 8, 2)
    layer = attncc.layer(SOFTMAX, 8, 2, batch_first=True)
    x = torch.randn(2, 4, 8)
    with pytest.raises(AttnccError, match="decides the mask"):
        layer(x, attn_mask=torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ShapeError, match="right padding"):
        layer(x, key_padding_mask=torch.tensor([[True, False, False, False]] * 2))
    with pytest.raises(ShapeError, match="bool tensor of shape"):
        layer(x, key_padding_mask=torch.zeros(2, 4))
    with pytest.raises(ShapeError, match="`query` has 7 features"):
        layer(torch.randn(2, 4, 7))


def test_dtype_and_device_arguments_reach_every_table():
    layer = attncc.layer(str(ROOT / "examples" / "alibi.attn"), 8, 2, dtype=torch.float64)
    assert {p.dtype for p in layer.parameters()} == {torch.float64}
    assert layer.attention.slope.shape == (2,)
    x = torch.randn(5, 1, 8, dtype=torch.float64)
    assert layer(x)[0].dtype == torch.float64
