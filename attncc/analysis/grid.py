"""Grid structure of a modulation f(i, j): tokens laid out row-major on a grid of `width` columns.

With r(t) = t // width and c(t) = t % width, a kernel factor f(i, j) (mask and modulation together)
may be
  grid Toeplitz   f = g(r(i) - r(j), c(i) - c(j))       (2-level block Toeplitz: 2-D FFT)
  ring            f = g(i, rho), rho = max(|dr|, |dc|)   (Chebyshev rings, ripple attention) or
                  rho = |dr| + |dc| (Manhattan)          (summed-area tables: a ball is a box)
Both are proven with sympy (i // w and i % w become symbols, then the shift by (dr, dc) must cancel,
or the distance must be the only way j is read) and re-checked on sampled grids by evaluating f
exactly where the lowerings evaluate it: at one representative pair per offset or per ring.
A ring form may also saturate: beyond rho = T every ring has the weight of ring T.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import sympy
import torch

from ..lang.evaluate import Env, evaluate
from ..lang.expr import TExpr
from ..lang.operators import fmt
from .session import NotEncodable, checkpoint, expr_digest, memoized, stored_bool, sympy_from_json, sympy_to_json
from .sampling import random_env
from .structure import I, J, relation_to_zero, to_sympy

RI, CI, RJ, CJ, DR, DC, RHO = sympy.symbols("r_i c_i r_j c_j dr dc rho", integer=True)


@dataclass(frozen=True)
class GridForm:
    width: TExpr  # the grid's column count, an expression of sizes
    toeplitz: bool  # f = g(dr, dc)
    metric: str | None = None  # ring distance, if f = g(i, rho)
    saturation: object = None  # sympy T in sizes: rings >= T share ring T's weight; None: no bound
    reason: str = ""

    def describe(self) -> str:
        parts = [f"grid of width {fmt(self.width)}"]
        if self.toeplitz:
            parts.append("f depends only on (dr, dc): 2-level block Toeplitz")
        if self.metric:
            sat = f", constant from rho = {self.saturation} on" if self.saturation is not None else ""
            parts.append(f"f depends on j only through the {self.metric} ring rho{sat}")
        return "; ".join(parts)


def _width(f: TExpr) -> TExpr | None:
    """The one divisor w with which f reads i and j as i // w, i % w (and never otherwise)."""
    found = {}
    for t in f.walk():
        if t.op in ("floordiv", "mod") and t.args[0].op == "var" and t.args[0].value in ("i", "j"):
            w = t.args[1]
            if any(x.op in ("var", "param", "input") for x in w.walk()):
                return None
            found.setdefault(fmt(w), w)
    return next(iter(found.values())) if len(found) == 1 else None


def _saturation(g, signature, symbols):
    """T such that g(rho) = g(T) for every rho >= T, from the way g reads rho; None if unproven.

    Each read of rho is constant past its own bound, so g is constant past the largest:
    min(rho, T) past T; a table lookup indexed by rho + c (clamped) past its last entry;
    where(rho <= T, x, 0) is 0 past T."""
    bounds = []

    def cut_min(x):
        other = [a for a in x.args if a != RHO]
        if len(other) != len(x.args) - 1 or any(a.has(RHO) for a in other):
            return x
        bounds.append(sympy.Min(*other))
        return sympy.Symbol("_cut")

    def cut_lookup(x):
        if not x.func.__name__.startswith("param_"):
            return x
        table = signature.params[x.func.__name__[len("param_"):]]
        args = list(x.args)
        for axis, a in enumerate(args):
            c = sympy.expand(a - RHO)
            if a.has(RHO) and not c.has(RHO) and c.is_integer:
                bounds.append(to_sympy(table.shape[axis], symbols) - 1 - c)
                args[axis] = sympy.Symbol("_cut")
        return x.func(*args)

    def cut_where(x):
        if len(x.args) != 2 or not x.args[1][0].is_zero:
            return x
        value, cond = x.args[0]
        if isinstance(cond, (sympy.Le, sympy.Lt)) and cond.lhs == RHO and not cond.rhs.has(RHO):
            bounds.append(cond.rhs + (1 if isinstance(cond, sympy.Le) else 0))
            return value
        return x

    g = g.replace(lambda x: isinstance(x, sympy.Min) and RHO in x.args, cut_min)
    g = g.replace(lambda x: isinstance(x, sympy.core.function.AppliedUndef), cut_lookup)
    g = g.replace(lambda x: isinstance(x, sympy.Piecewise), cut_where)
    if g.has(RHO):  # rho read some other way: no bound proven
        return None
    return sympy.Max(0, *bounds)


def classify_grid(f: TExpr, signature, symbols: dict) -> GridForm | None:
    """The grid form of a kernel factor f(i, j), or None."""
    width = _width(f)
    if width is None:
        return None
    proof = _grid_proof(f, width, signature, symbols)
    if proof is None:
        return None
    toeplitz, metric, saturation = proof
    reason = f"i and j are read only as i // {fmt(width)}, i % {fmt(width)}"
    return GridForm(width, toeplitz, metric, saturation, reason)


def _encode_proof(proof):
    if proof is None:
        return {"form": None}
    toeplitz, metric, saturation = proof
    try:
        return {"form": [toeplitz, metric, None if saturation is None else sympy_to_json(saturation)]}
    except NotEncodable:
        return None


def _decode_proof(value, f, width, signature, symbols):
    if value["form"] is None:
        return None
    toeplitz, metric, saturation = value["form"]
    if metric not in (None, "chebyshev", "manhattan"):
        raise ValueError(f"not a stored grid form: {value!r}")
    return stored_bool(toeplitz), metric, None if saturation is None else sympy_from_json(saturation, symbols)


@memoized("grid", lambda f, width, signature, symbols: expr_digest(f), _encode_proof, _decode_proof)
def _grid_proof(f: TExpr, width: TExpr, signature, symbols: dict) -> tuple | None:
    """(toeplitz, metric, saturation) of f on the grid of `width` columns; None if neither form is proven."""
    try:
        w = to_sympy(width, symbols)
        e = to_sympy(f, symbols).subs({sympy.floor(I / w): RI, sympy.Mod(I, w): CI,
                                       sympy.floor(J / w): RJ, sympy.Mod(J, w): CJ})
        if e.has(J):
            return None
        toeplitz = False
        if not e.has(I):
            checkpoint()
            shifted = e.subs({RI: RJ + DR, CI: CJ + DC})  # comparisons moved to `lhs - rhs (op) 0` cancel r_j, c_j
            shifted = shifted.replace(lambda x: isinstance(x, sympy.core.relational.Relational), relation_to_zero)
            toeplitz = not (shifted.has(RJ) or shifted.has(CJ) or shifted.has(I))
        metric = saturation = None
        for name, distance in (("chebyshev", sympy.Max(abs(RI - RJ), abs(CI - CJ))),
                               ("manhattan", abs(RI - RJ) + abs(CI - CJ))):
            checkpoint()
            g = e.subs(distance, RHO)
            if not (g.has(RJ) or g.has(CJ)):
                metric, saturation = name, _saturation(g, signature, symbols)
                break
    except Exception:  # noqa: BLE001  (sympy raises many kinds, or the budget ran out; no proof, no claim)
        return None
    return (toeplitz, metric, saturation) if toeplitz or metric is not None else None


def width_at(form: GridForm, sizes: dict) -> int:
    """The grid's columns at concrete sizes (at least 1, as the generated grid_width checks)."""
    return max(1, int(evaluate(form.width, Env(sizes=sizes))))


def saturation_at(form: GridForm, sizes: dict) -> int:
    """The saturation ring T at concrete sizes (values by size name)."""
    sat = sympy.sympify(form.saturation)
    return int(sat.subs({s: sizes[s.name] for s in sat.free_symbols}))


def grid_holds(f: TExpr, form: GridForm, signature, samples: int = 4, seed: int = 0) -> bool:
    """f(i, j) equals f at the representative pair of its offset (Toeplitz) or ring (ring form), and
    past the saturation a ring has the weight of ring T, on random grids, tables and inputs."""
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    for _ in range(samples):
        env = random_env(signature, rng, g)
        width = int(evaluate(form.width, env))
        if width <= 0:
            continue
        i = torch.arange(env.rsizes["Nq"]).view(-1, 1)
        j = torch.arange(env.rsizes["N"]).view(1, -1)
        got = _at(f, env, i, j)
        dr, dc = i // width - j // width, i % width - j % width
        if form.toeplitz and not torch.allclose(got, _at(f, env, *offset_pairs(dr, dc, width)), equal_nan=True):
            return False
        if form.metric:
            rho = torch.maximum(dr.abs(), dc.abs()) if form.metric == "chebyshev" else dr.abs() + dc.abs()
            if form.saturation is not None:
                rho = rho.clamp(max=saturation_at(form, {**env.sizes, **env.rsizes}))
            if not torch.allclose(got, _at(f, env, *ring_pairs(i.expand_as(rho), rho, width)), equal_nan=True):
                return False
    return True


def _at(f: TExpr, env, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    env.i, env.j = i.view(1, 1, *i.shape), j.view(1, 1, *j.shape)
    shape = torch.broadcast_shapes(i.shape, j.shape)
    return evaluate(f, env).double().expand(1, env.rsizes["H"], *shape)


__all__ = ["GridForm", "classify_grid", "grid_holds", "saturation_at"]


# Index geometry of the grid, shared with the run-time skeletons (attncc/rt) and the cost model.
def offset_pairs(dr, dc, width):
    """(i, j) with i // w - j // w = dr and i % w - j % w = dc, both columns inside [0, w)."""
    return dr.clamp(min=0) * width + dc.clamp(min=0), (-dr).clamp(min=0) * width + (-dc).clamp(min=0)


def ring_pairs(i, rho, width):
    """(i, j) with j rho grid rows below i in the same column: Chebyshev and Manhattan distance rho."""
    return i, i + rho * width


def ring_extent(nq: int, n: int, width: int, metric: str) -> int:
    """The largest ring distance between a query and a key token."""
    rows = max(-(-nq // width), -(-n // width)) - 1
    return max(rows, width - 1) if metric == "chebyshev" else rows + width - 1
