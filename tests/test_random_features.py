"""Random-feature maps (favor, trig): exact against the dense kernelized computation with the same
draw, reproducible from the seed, redrawn in training only, and converging to softmax as m grows."""
import pytest
import torch

import attncc
from attncc.lang.features import draw_projection, random_features

SPEC = """attention rf {{
    feature phi = {kind}(features={m}, seed={seed})
    normalize rows(eps=0)
}}"""


def _module(kind="favor", m=64, seed=0, d=16):
    return attncc.compile(SPEC.format(kind=kind, m=m, seed=seed))(D=d).eval()


def test_a_seed_fixes_the_draw_and_seeds_differ():
    a, b = draw_projection(64, 16, seed=3, draw=0, orthogonal=True), draw_projection(64, 16, 3, 0, True)
    assert torch.equal(a, b)
    assert not torch.allclose(a, draw_projection(64, 16, 4, 0, True))
    assert not torch.allclose(a, draw_projection(64, 16, 3, 1, True))
    assert torch.equal(_module(seed=7).random_features.phi, _module(seed=7).random_features.phi)


def test_orthogonal_draws_are_orthogonal_within_a_block_with_gaussian_norms():
    w = draw_projection(48, 16, seed=0, draw=0, orthogonal=True).double()
    for block in w.split(16):
        gram = block @ block.T
        off = gram - torch.diag(torch.diagonal(gram))
        assert off.abs().max() < 1e-4
    norms = w.norm(dim=-1)
    assert 2.0 < norms.mean() < 6.0  # chi with 16 degrees of freedom: mean about 3.9


@pytest.mark.parametrize("kind", ["favor", "trig"])
def test_features_estimate_the_softmax_kernel_without_bias(kind):
    """E_w[phi(q).phi(k)] = exp(q.k / sqrt(d)): the mean over many independent draws converges."""
    g = torch.Generator().manual_seed(0)
    q, k = 0.5 * torch.randn(2, 8, 16, generator=g, dtype=torch.float64)
    want = torch.exp(q @ k.T / 4.0)
    total = torch.zeros_like(want)
    draws = 200
    for t in range(draws):
        w = draw_projection(256, 16, seed=1, draw=t, orthogonal=False).double()
        total += random_features(kind, q, w) @ random_features(kind, k, w).T
    assert ((total / draws - want).abs() / want).max() < 0.05


def _softmax_error(m: int, seeds=range(4)) -> float:
    g = torch.Generator().manual_seed(1)
    q, k, v = (0.6 * torch.randn(1, 2, 96, 16, generator=g) for _ in range(3))
    exact = torch.softmax(q.double() @ k.double().transpose(-1, -2) / 4.0, -1) @ v.double()
    errs = [float((_module(m=m, seed=s)(q, k, v).double() - exact).norm() / exact.norm()) for s in seeds]
    return sum(errs) / len(errs)


def test_error_against_softmax_falls_as_features_grow():
    errors = [_softmax_error(m) for m in (8, 32, 128, 512)]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0] / 3, errors  # Monte Carlo: about m^-1/2, so 8x over 64x features


def test_training_redraws_and_eval_keeps_the_draw():
    module = _module()
    q = k = v = torch.randn(1, 2, 10, 16)
    before = module.random_features.phi.clone()
    module(q, k, v)
    assert torch.equal(module.random_features.phi, before)  # eval: fixed
    module.train()
    module(q, k, v)
    assert not torch.equal(module.random_features.phi, before)
    assert int(module.random_features.phi_draws) == 1
    assert torch.equal(module.random_features.phi, draw_projection(64, 16, 0, 1, True))
    module.eval()  # the reference uses the current draw: the module matches it exactly
    torch.testing.assert_close(module(q, k, v).double(), module.reference(q, k, v), rtol=1e-5, atol=1e-6)


def test_fixed_features_never_redraw_and_the_draw_is_in_the_state_dict():
    module = attncc.compile(SPEC.format(kind="favor", m=8, seed=2).replace("seed=2", "seed=2, redraw=0"))(D=4)
    module.train()
    before = module.random_features.phi.clone()
    module(*torch.randn(3, 1, 1, 5, 4))
    assert torch.equal(module.random_features.phi, before)
    state = module.state_dict()
    assert {"random_features.phi", "random_features.phi_draws"} <= set(state)
    other = attncc.compile(SPEC.format(kind="favor", m=8, seed=5))(D=4)
    other.load_state_dict(state)
    assert torch.equal(other.random_features.phi, before)


def test_random_features_need_the_head_dimension():
    with pytest.raises(attncc.AttnccError, match="D=..."):
        attncc.compile(SPEC.format(kind="favor", m=8, seed=0))()


@pytest.mark.parametrize("lowering", ["tiled", "linear"])
@pytest.mark.parametrize("kind", ["favor", "trig"])
def test_both_lowerings_equal_the_dense_computation_with_the_same_draw(kind, lowering):
    cls = attncc.compile(SPEC.format(kind=kind, m=24, seed=3).replace("rows(eps=0)", "rows"), lowering=lowering)
    module = cls(D=8).eval()
    q, k, v = torch.randn(3, 2, 3, 33, 8, dtype=torch.float64).unbind(0)
    torch.testing.assert_close(module(q, k, v), module.reference(q, k, v), rtol=1e-9, atol=1e-9)
