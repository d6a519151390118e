"""Attention taps: per-head probabilities P with out = P v, for row samples, with gradients."""
import pytest
import torch

import attncc
from attncc import ShapeError

from .conftest import ROOT

CASES = {  # example -> (constructor sizes, call inputs for N tokens)
    "softmax": ({}, lambda n: {}),
    "alibi": ({"H": 2}, lambda n: {}),
    "sliding_window": ({"window": 2}, lambda n: {}),
    "document": ({}, lambda n: {"doc": torch.arange(n) // 4}),
    "performer": ({"D": 8}, lambda n: {}),
    "linear_elu_causal": ({}, lambda n: {}),
    "rpe_performer": ({"D": 8, "max_len": 16}, lambda n: {}),
    "retention": ({}, lambda n: {}),
    "gkat": ({}, lambda n: {"adj": (torch.arange(n)[:, None] - torch.arange(n)).abs().eq(1).float()}),
    "mra2": ({}, lambda n: {}),  # declared approximations: the tap is the matrix they apply
    "lara": ({}, lambda n: {}),
    "ra": ({}, lambda n: {}),
    "favor_softmax": ({"H": 2, "D": 8}, lambda n: {}),
}


def module(name: str, **extra):
    sizes, inputs = CASES[name]
    cls = attncc.compile(str(ROOT / "examples" / f"{name}.attn"))
    return cls(backend="torch", **{k: v for k, v in sizes.items() if k in cls.NEEDS or k in cls.SIZES},
               **extra), inputs


def qkv(n=10, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 2, n, 8, generator=g, dtype=torch.float64).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tap_times_v_is_forward_and_rows_are_rows_of_the_full_tap(name, dtype):
    m, inputs = module(name)
    m.train()  # random features redraw in forward; the tap sees the draw that forward used
    q, k, v = qkv(dtype=dtype)
    out = m(q, k, v, **inputs(10))
    p = m.tap(q, k, v, **inputs(10))
    assert p.shape == (2, 2, 10, 10) and p.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(p @ v, out, atol=tol, rtol=tol)
    rows = torch.tensor([7, 0, 3, 3])
    torch.testing.assert_close(m.tap(q, k, v, rows=rows, **inputs(10)), p[:, :, rows], atol=tol, rtol=tol)


def test_softmax_tap_is_softmax_and_half_inputs_give_half_taps():
    m, _ = module("softmax")
    q, k, v = qkv()
    want = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, -1)
    torch.testing.assert_close(m.tap(q, k, v), want)
    p = m.tap(q.half(), k.half(), v.half())
    assert p.dtype == torch.float16
    torch.testing.assert_close(p.float(), want, atol=2e-3, rtol=0)
    assert m.tap(q[:, :, :0], k, v).shape == (2, 2, 0, 10)


@pytest.mark.parametrize("name,table", [("alibi", "slope"), ("rpe_performer", "rpe")])
def test_tap_gradcheck_in_q_k_and_the_tables(name, table):
    m, inputs = module(name)
    m.double().eval()
    q, k, v = (t[:1, :, :5].requires_grad_() for t in qkv(dtype=torch.float64))
    # the table itself is an input of the check: gradcheck perturbs it in place, where the tap reads it
    tap = lambda q, k, _table: m.tap(q, k, v, rows=torch.tensor([0, 4]), **inputs(5))
    assert torch.autograd.gradcheck(tap, (q, k, getattr(m, table)), eps=1e-6, atol=1e-7)


def test_kl_distillation_between_taps_trains_the_student():
    """A student alibi learns the teacher's slopes from the KL between their taps alone."""
    teacher, _ = module("alibi")
    student, _ = module("alibi")
    with torch.no_grad():
        teacher.slope.copy_(torch.tensor([0.8, 0.05]))
        student.slope.fill_(0.3)
    q, k, v = qkv(n=16)
    target = teacher.tap(q, k, v).detach()
    opt = torch.optim.Adam(student.parameters(), lr=0.05)

    def kl():
        p = student.tap(q, k, v)
        return (target * (target.clamp_min(1e-30).log() - p.clamp_min(1e-30).log())).sum(-1).mean()
    first = kl().item()
    for _ in range(60):
        opt.zero_grad()
        loss = kl()
        loss.backward()
        assert torch.isfinite(student.slope.grad).all() and student.slope.grad.abs().sum() > 0
        opt.step()
    assert kl().item() < 0.05 * first
    torch.testing.assert_close(student.slope.detach(), teacher.slope.detach(), atol=0.05, rtol=0)


def test_tap_gradients_reach_q_and_k_through_a_kernelized_spec():
    m, _ = module("performer")
    q, k, v = (t.requires_grad_() for t in qkv())
    m.eval().tap(q, k, v, rows=torch.tensor([1, 2])).square().sum().backward()
    assert q.grad[:, :, [1, 2]].abs().sum() > 0 and q.grad[:, :, 0].abs().sum() == 0 and k.grad.abs().sum() > 0


def test_tap_row_errors():
    m, _ = module("softmax")
    q, k, v = qkv()
    with pytest.raises(ShapeError, match="lie in \\[0, 10\\)"):
        m.tap(q, k, v, rows=[3, 10])
    with pytest.raises(ShapeError, match="1-d tensor of query indices"):
        m.tap(q, k, v, rows=torch.tensor([0.5]))
