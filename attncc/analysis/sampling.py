"""Cross-checks by sampling of what attncc/analysis/structure.py (and the analyses built on it) prove:
each claim is evaluated on random lengths, tables and inputs, and a mismatch is a compiler bug.
"""
from __future__ import annotations

import random
from typing import Callable

import torch

from ..lang.evaluate import Env, evaluate
from ..lang.expr import TExpr
from .structure import Structure

__all__ = ["decay_holds", "holds_on_causal_pairs", "random_env", "structure_holds", "values_on_grid"]


def random_env(signature, rng: random.Random, g: torch.Generator) -> Env:
    """Random lengths, tables and inputs: claims must hold for every table, not just the init."""
    nq, nk, heads = rng.randint(1, 40), rng.randint(1, 40), 2
    sizes = dict(signature.sizes)
    rsizes = {"H": heads, "D": 4, "E": 4, "N": nk, "Nq": nq}
    shape_of = lambda dims: tuple(int(evaluate(d, Env(sizes=sizes, rsizes=rsizes))) for d in dims)
    params = {n: torch.randn(shape_of(p.shape), generator=g, dtype=torch.float64) for n, p in signature.params.items()}
    inputs = {}
    for name, info in signature.inputs.items():
        shape = (1, *shape_of(info.dims))
        inputs[name] = (torch.randint(0, 3, shape, generator=g) if info.dtype == "int" else
                        torch.rand(shape, generator=g) > 0.5 if info.dtype == "bool" else
                        torch.randn(shape, generator=g, dtype=torch.float64))
    return Env(sizes=sizes, rsizes=rsizes, params=params, inputs=inputs, h=torch.arange(heads).view(1, heads, 1, 1),
               b=torch.full((1, 1, 1, 1), rng.randint(0, 3)))  # the one batch row sampled may be any b


def values_on_grid(t: TExpr, env: Env, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """t on the grid i [Nq, 1] x j [1, N], as a [1, H, Nq, N] tensor."""
    env.i, env.j = i.view(1, 1, -1, 1), j.view(1, 1, 1, -1)
    return evaluate(t, env).expand(1, env.rsizes["H"], i.numel(), j.numel())


def _inside(s: Structure, env: Env) -> torch.Tensor:
    """[Nq, N] bool: whether i - j lies in the structure's band."""
    nq, nk = env.rsizes["Nq"], env.rsizes["N"]
    lo, hi = s.bounds_at({**env.sizes, **env.rsizes})
    d = torch.arange(nq).view(-1, 1) - torch.arange(nk).view(1, -1)
    inside = torch.ones_like(d, dtype=torch.bool)
    if lo is not None:
        inside &= d >= lo
    if hi is not None:
        inside &= d <= hi
    return inside


def structure_holds(t: TExpr, s: Structure, signature, is_mask: bool, samples: int = 4, seed: int = 0) -> bool:
    """Cross-check a proven structure on random grids, tables and inputs: a mismatch is a compiler bug.

    mask, band [lo, hi] (any kind):  mask(i, j) is false whenever i - j lies outside [lo, hi]
    mask, band / causal / full:      mask(i, j) is true exactly inside [lo, hi]
    toeplitz (mask or modulation):   value(i, j) == value(i + s, j + s)
    full modulation:                 value(i, j) == value(0, 0)
    """
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    for _ in range(samples):
        env = random_env(signature, rng, g)
        i, j = torch.arange(env.rsizes["Nq"]), torch.arange(env.rsizes["N"])
        got = values_on_grid(t, env, i, j)
        if is_mask:
            inside = _inside(s, env).expand_as(got)
            if (got.bool() & ~inside).any():
                return False
            if s.kind in ("full", "causal", "band") and not torch.equal(got.bool(), inside):
                return False
        if s.kind == "toeplitz":
            shift = rng.randint(1, 50)
            other = values_on_grid(t, env, i + shift, j + shift)
        elif not is_mask and s.kind == "full":
            zero = torch.zeros(1, dtype=torch.long)
            other = values_on_grid(t, env, zero, zero).expand_as(got)
        else:
            continue
        if not torch.allclose(got.double(), other.double(), equal_nan=True):
            return False
    return True


def holds_on_causal_pairs(m: TExpr, want: Callable, signature, samples: int = 4, seed: int = 0) -> bool:
    """Cross-check M(i, j) == want(env, i, j) at the pairs j <= i of `samples` random environments
    (lengths, tables, inputs); want gives float64 values broadcastable to M's grid."""
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    for _ in range(samples):
        env = random_env(signature, rng, g)
        i, j = torch.arange(env.rsizes["Nq"]), torch.arange(env.rsizes["N"])
        got = values_on_grid(m, env, i, j).double()
        expected = want(env, i, j).expand_as(got)
        causal = (i.view(-1, 1) >= j.view(1, -1)).expand_as(got)
        if not torch.allclose(got[causal], expected[causal], rtol=1e-6, atol=1e-12):
            return False
    return True


def decay_holds(m: TExpr, amplitude: TExpr, gamma: TExpr, signature, samples: int = 4, seed: int = 0) -> bool:
    """Cross-check M(i, j) == A gamma^(i - j) at sampled pairs j <= i with random tables."""
    def want(env, i, j):
        zero = torch.zeros(1, dtype=torch.long)
        a, gam = (values_on_grid(t, env, zero, zero).double() for t in (amplitude, gamma))
        return a * torch.pow(gam, (i.view(-1, 1) - j.view(1, -1)).double())
    return holds_on_causal_pairs(m, want, signature, samples, seed)
