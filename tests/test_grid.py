"""Grid structure: 2-level block-Toeplitz and ring forms are found by analysis (in equivalent
spellings), refused where they do not hold, and every grid lowering equals the dense reference."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attncc

KERNEL = "feature phi = elu1\n"
CHEB = "max(abs(i // w - j // w), abs(i % w - j % w))"
FORMS = {
    # name: (spec body, whether 2-level Toeplitz, ring metric, saturation)
    "offsets": ("param t[9, 2 * w - 1] = normal(std=0.3)\n"
                "weight(i, j) = dot(phi(q[i]), phi(k[j])) * exp(t[i // w - j // w + 4, i % w - j % w + w - 1])",
                True, None, None),
    "chebyshev_table": ("param r[H, 4] = normal(std=0.3)\n"
                        f"weight(i, j) = dot(phi(q[i]), phi(k[j])) * exp(r[h, {CHEB}])", True, "chebyshev", "3"),
    "chebyshev_swapped": ("param r[H, 4] = normal(std=0.3)\nweight(i, j) = dot(phi(q[i]), phi(k[j])) * "
                          "exp(r[h, max(abs(j % w - i % w), abs(j // w - i // w))])", True, "chebyshev", "3"),
    "manhattan_min": ("input s[Nq, 8]\nweight(a, b) = dot(phi(q[a]), phi(k[b])) * "
                      "exp(s[a, min(abs(a // w - b // w) + abs(a % w - b % w), 6)])", False, "manhattan", "6"),
    "ring_window": (f"mask(i, j) = {CHEB} <= 2", True, "chebyshev", "3"),
    "ring_unbounded": (f"weight(i, j) = dot(phi(q[i]), phi(k[j])) / (1 + {CHEB})", True, "chebyshev", None),
    "box_window": ("mask(i, j) = abs(i // w - j // w) <= 1 and abs(i % w - j % w) <= 2", True, None, None),
}


def _compile(body: str, **kw):
    return attncc.compile(f"attention g {{\nsize w = 5\n{KERNEL}{body}\n}}", **kw)


@pytest.mark.parametrize("name", sorted(FORMS))
def test_grid_forms_are_found(name):
    body, toeplitz, metric, saturation = FORMS[name]
    form = attncc.build(f"attention g {{\nsize w = 5\n{KERNEL}{body}\n}}").plan.attrs["grid"]
    assert form.toeplitz == toeplitz
    assert form.metric == metric
    assert (None if form.saturation is None else str(form.saturation)) == saturation


@pytest.mark.parametrize("body", [
    "weight(i, j) = dot(phi(q[i]), phi(k[j])) * exp(-abs(i // 5 - j // 4))",   # two widths
    "weight(i, j) = dot(phi(q[i]), phi(k[j])) * exp(-abs(i // w - j // w) - 0.01 * j)",  # j read directly
    "input s[N]\nweight(i, j) = dot(phi(q[i]), phi(k[j])) * exp(s[j % w])",     # key-dependent, not a ring
])
def test_non_grid_factors_stay_quadratic(body):
    comp = attncc.build(f"attention g {{\nsize w = 5\n{KERNEL}{body}\n}}")
    assert "grid" not in comp.plan.attrs
    assert comp.plan.lowering == "tiled"


def _lowerings(body):
    comp = attncc.build(f"attention g {{\nsize w = 5\n{KERNEL}{body}\n}}")
    return [c.name for c in comp.plan.candidates]


@pytest.mark.parametrize("name", sorted(FORMS))
@settings(max_examples=3, deadline=None)
@given(nq=st.integers(1, 40), nk=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_every_grid_lowering_matches_reference(name, nq, nk, seed):
    body = FORMS[name][0]
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, n, 4, generator=g, dtype=torch.float64) for n in (nq, nk, nk))
    inputs = {"s": torch.randn(nq, 8, generator=g)} if "input s" in body else {}
    for lowering in _lowerings(body):
        cls = _compile(body, lowering=lowering)
        module = cls(H=2) if "H" in cls.NEEDS else cls()
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
        torch.testing.assert_close(module(q, k, v, **inputs), module.reference(q, k, v, **inputs),
                                   rtol=1e-7, atol=1e-7, msg=lambda m, lw=lowering: f"{name} {lw}: {m}")


def test_width_that_is_not_positive_is_a_clear_error():
    cls = _compile(FORMS["offsets"][0], lowering="fft2")
    with pytest.raises(attncc.AttnccError):
        cls(w=0)
