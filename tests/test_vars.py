"""VARS: `normalize ista(steps, lam)` equals a naive unrolled ISTA written here, one step without
sparsity is kernelized attention Phi_Q Phi_K^T V / L, the objective falls step by step, and the
solver never forms an N x N matrix."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attncc
from attncc.lang.features import random_features

from .conftest import ROOT

VARS = (ROOT / "examples" / "vars.attn").read_text()


def _spec(steps, lam, features=16):
    return VARS.replace("features = 128", f"features = {features}").replace(
        "ista(steps = 5, lam = 0.3)", f"ista(steps = {steps}, lam = {lam})")


def _dictionary(module, q, k):
    w = module.projections()["phi"].double()
    pq, pk = random_features("favor", q.double(), w), random_features("favor", k.double(), w)
    return pq / pq.norm(dim=2, keepdim=True), pk / pk.norm(dim=2, keepdim=True)


def _naive(module, q, k, v, steps, lam):
    """Per (batch, head): z <- soft(z - Phi^T (Phi z - v) / L, lam / L), L = |Phi^T Phi|_F; out = Phi_Q z."""
    phi_q, phi_k = _dictionary(module, q, k)
    out = torch.zeros(*q.shape[:3], v.shape[-1], dtype=torch.float64)
    z_all = []
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            P, vv = phi_k[b, h], v[b, h].double()
            L = torch.linalg.norm(P.T @ P)
            z = torch.zeros(P.shape[1], vv.shape[1], dtype=torch.float64)
            for _ in range(steps):
                u = z - P.T @ (P @ z - vv) / L
                z = torch.sign(u) * torch.clamp(u.abs() - lam / L, min=0)
            out[b, h] = phi_q[b, h] @ z
            z_all.append((P, vv, z))
    return out, z_all


@pytest.mark.parametrize("backend,dtype,tol", [("torch", torch.float64, 1e-10), ("torch", torch.float32, 1e-5),
                                               ("triton", torch.float32, 1e-5), ("reference", torch.float64, 1e-10)])
@settings(max_examples=5, deadline=None)
@given(steps=st.integers(1, 8), lam=st.sampled_from([0.0, 0.05, 0.3, 1.0]), nq=st.integers(1, 20),
       nk=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_matches_naive_unrolled_ista(backend, dtype, tol, steps, lam, nq, nk, seed):
    module = attncc.compile(_spec(steps, lam))(D=6, backend=backend).eval()
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 2, nq, 6, generator=g), torch.randn(2, 2, nk, 6, generator=g)
    v = torch.randn(2, 2, nk, 3, generator=g)
    want, _ = _naive(module, q, k, v, steps, lam)
    got = module(q.to(dtype), k.to(dtype), v.to(dtype)).double()
    assert (got - want).abs().max() <= tol * max(1.0, want.abs().max())


def test_one_step_without_sparsity_is_kernelized_attention():
    """z_1 = b / L, so out = Phi_Q Phi_K^T V / L: attention with W = Phi_Q Phi_K^T / L (no N x N in the module)."""
    module = attncc.compile(_spec(1, 0))(D=8).eval()
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 12, 8, generator=g, dtype=torch.float64) for _ in range(3))
    phi_q, phi_k = _dictionary(module, q, k)
    L = torch.linalg.matrix_norm(phi_k.transpose(-1, -2) @ phi_k).view(1, 2, 1, 1)
    w = phi_q @ phi_k.transpose(-1, -2) / L
    assert torch.allclose(module(q, k, v), w @ v, atol=1e-12)


def test_objective_falls_and_large_lam_gives_zero():
    """1/L with L = |G|_F >= lambda_max(G) is a safe ISTA step: the objective never rises."""
    module = attncc.compile(_spec(1, 0.2))(D=6).eval()
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 1, 15, 6, generator=g, dtype=torch.float64) for _ in range(3))
    objective = []
    for steps in range(0, 12):
        _, ((P, vv, z),) = _naive(module, q, k, v, steps, 0.2)
        objective.append(float(0.5 * (vv - P @ z).square().sum() + 0.2 * z.abs().sum()))
    assert all(b <= a + 1e-12 for a, b in zip(objective, objective[1:]))
    assert objective[-1] < objective[0]
    big = attncc.compile(_spec(5, 1e6))(D=6).eval()
    assert big(q, k, v).abs().max() == 0


def test_gradients_match_reference():
    module = attncc.compile(_spec(4, 0.1))(D=5).double().eval()
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 2, 9, 5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    got = torch.autograd.grad(module(q, k, v).square().sum(), [q, k, v])
    want = torch.autograd.grad(module.reference(q, k, v).square().sum(), [q, k, v])
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-9)


def test_never_forms_n_by_n():
    comp = attncc.build(VARS)
    assert comp.plan.lowering == "ista" and [c.name for c in comp.plan.candidates] == ["ista"]
    assert "N ** 2" not in str(comp.plan.chosen.flops) and "N**2" not in str(comp.plan.chosen.flops)
    assert "No Triton kernel" in comp.triton_source  # stated torch fallback


def test_tap_is_refused():
    module = attncc.compile(_spec(2, 0.1))(D=4)
    q = torch.randn(1, 1, 5, 4)
    with pytest.raises(attncc.AttnccError, match="no attention matrix"):
        module.tap(q, q, q)
