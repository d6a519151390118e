"""Declared approximations of softmax (`normalize softmax approx ...`): every backend equals the dense
evaluation of the approximation's own formulas (same draw, same block selection), exactly; against
the exact softmax target the tests are statistical: errors fall as the approximation grows."""
import math

import pytest
import torch
from hypothesis import given, strategies as st

import attncc
from attncc.tools.compare import compare, triton_runnable

SPEC = "attention a {{ normalize softmax approx {approx} }}"
ALIBI_FAVOR = """attention a {
    param slope[H] = alibi
    score(i, j) = dot(q[i], k[j]) * scale - slope[h] * (i - j)
    mask(i, j) = j <= i
    normalize softmax approx favor(features = 32, seed = 3)
}"""
CASES = {
    "mra_full": SPEC.format(approx="mra(block = 16, blocks_per_row = 2, first = 1, diagonal = 1)"),
    "mra_sparse": SPEC.format(approx="mra(block = 16, blocks_per_row = 2, mode = sparse, diagonal = 1)"),
    "lara": SPEC.format(approx="lara(landmarks = 6, seed = 2)"),
    "ra": SPEC.format(approx="ra(samples = 4, seed = 1)"),
    "favor_alibi": ALIBI_FAVOR,
}


def _inputs(nq=40, nk=40, d=16, b=2, h=2, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g, dtype=torch.float64) for n in (nq, nk, nk))
    return scale * q, scale * k, v


def _module(text, d=16, h=2):
    cls = attncc.compile(text)
    return cls(**{n: s for n, s in (("H", h), ("D", d)) if n in cls.NEEDS})


def _rel(a, b) -> float:
    return float((a.double() - b).norm() / b.norm())


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("backend,dtype", [("torch", torch.float64), ("torch", torch.float32),
                                           ("triton", torch.float32), ("triton", torch.float16)])
def test_every_backend_equals_the_dense_formulas(name, backend, dtype):
    if backend == "triton" and not triton_runnable("cpu")[0]:
        pytest.skip("Triton interpreter not enabled")
    module = _module(CASES[name])
    q, k, v = _inputs(nq=40, nk=40 if name in ("ra", "lara") else 53)  # MRA: partial blocks, Nq != N
    result = compare(module, q, k, v, {}, backend, dtype)
    assert result.ok, f"{name} {backend} {dtype}: {result.error:.2e} > {result.tolerance:.1e}"


def test_favor_keeps_masks_and_biases_and_lowers_like_kernelized_attention():
    module = _module(ALIBI_FAVOR)
    assert module.LOWERING == "linear_chunked"  # exp(-slope (i - j)) on j <= i: a decay mask, prefix sums
    assert set(module.projections()) == {"favor"} and module.checked.target.normalize == "softmax"
    q, k, v = _inputs()
    exact = module.target(q, k, v)
    g = torch.exp(-module.slope.detach().double().view(1, -1, 1, 1) * (torch.arange(40.).view(-1, 1) - torch.arange(40.)))
    w = torch.softmax(q @ k.transpose(-1, -2) / 4.0 + torch.log(g).masked_fill(torch.ones(40, 40).triu(1).bool(),
                                                                              float("-inf")), -1)
    assert torch.allclose(exact, w @ v, atol=1e-10)


def test_favor_error_against_softmax_falls_as_features_grow():
    q, k, v = _inputs(nq=64, nk=64, d=16, scale=0.6)
    errors = []
    for m in (8, 32, 128, 512):
        runs = [_module(SPEC.format(approx=f"favor(features = {m}, seed = {s})")).eval() for s in range(3)]
        errors.append(sum(_rel(r(q.float(), k.float(), v.float()), r.target(q, k, v)) for r in runs) / 3)
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[0]


def test_ra_error_falls_like_one_over_root_samples():
    """RA is unbiased: its Monte-Carlo error against softmax falls as S^-1/2 (log-log slope -1/2)."""
    q, k, v = _inputs(nq=24, nk=24, d=8, b=1, h=2, scale=1.5)
    samples, errors = (2, 8, 32, 128), []
    for s in samples:
        runs = [_module(SPEC.format(approx=f"ra(samples = {s}, seed = {seed})"), d=8).eval() for seed in range(6)]
        errors.append(sum(_rel(r(q, k, v), r.target(q, k, v)) for r in runs) / len(runs))
    xs, ys = [math.log(s) for s in samples], [math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    assert -0.7 < slope < -0.35, (slope, errors)


def test_mra_with_every_block_selected_is_softmax():
    module = _module(SPEC.format(approx="mra(block = 8, blocks_per_row = 5)"))
    q, k, v = _inputs(nq=37, nk=37)  # 5 blocks per row, the last one partial
    assert _rel(module(q, k, v), module.target(q, k, v)) < 1e-6


def test_mra_sparse_rows_without_a_selected_block_are_zero():
    """Priors can take all K blocks: with 4 prior rows and columns and K = 8, some block row keeps none."""
    module = _module(SPEC.format(approx="mra(block = 8, blocks_per_row = 1, mode = sparse, first = 4, diagonal = 0)"))
    q, k, v = _inputs(nq=64, nk=64, b=1, h=1)
    out, ref = module(q, k, v), module.reference(q, k, v)
    assert torch.isfinite(out).all() and torch.allclose(out, ref, atol=1e-12)
    assert (out.abs().sum(-1) == 0).any()


@given(n=st.integers(1, 70), nq=st.integers(1, 70), block=st.sampled_from([4, 8, 16]), per_row=st.integers(1, 4),
       first=st.integers(0, 2), diagonal=st.sampled_from([0, 1, 3, 5]), mode=st.sampled_from(["full", "sparse"]))
def test_mra_equals_its_dense_matrix(n, nq, block, per_row, first, diagonal, mode):
    module = _module(SPEC.format(approx=f"mra(block = {block}, blocks_per_row = {per_row}, mode = {mode}, "
                                        f"first = {first}, diagonal = {diagonal})"))
    q, k, v = _inputs(nq=nq, nk=n, seed=n * 71 + nq)
    assert torch.allclose(module(q, k, v), module.reference(q, k, v), atol=1e-10)


@given(n=st.integers(1, 60), nq=st.integers(1, 60), count=st.integers(1, 20), train=st.booleans())
def test_lara_equals_its_dense_formulas(n, nq, count, train):
    module = _module(SPEC.format(approx=f"lara(landmarks = {count})")).train(train)
    q, k, v = _inputs(nq=nq, nk=n, seed=n * 31 + nq)
    out = module(q, k, v)
    assert torch.allclose(out, module.reference(q, k, v), atol=1e-10)


def test_lara_is_deterministic_in_eval_and_redraws_in_training():
    module = _module(CASES["lara"])
    q, k, v = _inputs()
    module.eval()
    assert torch.equal(module(q, k, v), module(q, k, v)) and int(module.approx_draws) == 0
    module.train()
    first, second = module(q, k, v), module(q, k, v)
    assert int(module.approx_draws) == 2 and not torch.allclose(first, second)
    assert torch.allclose(second, module.reference(q, k, v), atol=1e-10)  # the reference reads the same draw
    copy = _module(CASES["lara"]).train()
    copy.load_state_dict(module.state_dict())
    assert torch.allclose(copy.reference(q, k, v), module.reference(q, k, v))


def test_ra_draw_is_fixed_by_the_seed_in_eval():
    a, b = _module(CASES["ra"]).eval(), _module(CASES["ra"]).eval()
    q, k, v = _inputs()
    assert torch.equal(a(q, k, v), b(q, k, v))
    other = _module(SPEC.format(approx="ra(samples = 4, seed = 2)")).eval()
    assert not torch.allclose(a(q, k, v), other(q, k, v))


def test_plans_and_generated_code_name_the_approximation():
    comp = attncc.api.build(CASES["mra_full"])
    assert comp.plan.lowering == "mra" and [c.name for c in comp.plan.candidates] == ["mra"]
    assert "ax.mra_attention(q, k, v, block=16" in comp.module_source
    assert "def _mra_fwd(" in comp.triton_source  # a 16-token block is a Triton tile
    odd = attncc.api.build(SPEC.format(approx="mra(block = 24)")).triton_source
    assert "MRA-2 with a block that no Triton tile matches (16 .. 128, a power of two) runs through torch" in odd
    with pytest.raises(attncc.AttnccError, match="lowering `tiled` does not apply"):
        attncc.api.build(CASES["lara"], lowering="tiled")
