"""Symbolic derivatives of typed expressions, for generated backward kernels.

diff(t, x) = dt/dx as a TExpr, for a leaf x of t (a `dot` term or a table lookup), every other
leaf held constant. The rules are the usual ones; integer and boolean subexpressions (positions,
masks, indices) are piecewise constant in x, so their derivative is 0 (as autograd sees them):

  d(a +- b) = da +- db            d(a b) = da b + a db          d(a / b) = da / b - a db / b^2
  d(a^c)    = c a^(c-1) da        d(c^b) = c^b log(c) db        (c free of x)
  d exp(a)  = exp(a) da           d log(a) = da / a             d sqrt(a) = da / (2 sqrt(a))
  d tanh(a) = (1 - tanh(a)^2) da  d sigmoid(a) = s (1 - s) da   d abs(a) = where(a < 0, -da, da)
  d min(a, b) = where(a <= b, da, db), max alike;  d where(c, a, b) = where(c, da, db)
  d (a // b) = 0 on floats (piecewise constant);   d (a % b) = da - floor(a / b) db
  d sin(a) = cos(a) da            d cos(a) = -sin(a) da          d erf(a) = 2/sqrt(pi) exp(-a^2) da
  d softplus(a) = sigmoid(a) da   d log1p(a) = da / (1 + a)      d expm1(a) = (expm1(a) + 1) da
  d clamp(a, lo, hi) = d min(max(a, lo), hi)                     floor, int: ints (derivative 0)

A form outside these rules (a^b with x in both, ...) raises NotDifferentiable: the caller then
keeps gradients by recomputation through the torch backend.
"""
from __future__ import annotations

from .expr import FLOAT, TExpr, const, fold, postorder
from .operators import NotDifferentiable, operator_of

__all__ = ["NotDifferentiable", "diff", "gradient", "leaves"]

LEAVES = ("const", "var", "size", "rsize", "scale", "dot", "param", "input")


def diff(t: TExpr, x: TExpr, parents: dict | None = None) -> TExpr | None:
    """dt/dx as a TExpr, None where it is 0 (each operator's rule is in attncc/lang/operators.py).
    Only the subexpressions that contain x (found upwards from x through `parents`, t's
    `parent_map`) are differentiated: the derivatives of a sum of n lookups by each take O(n) steps
    each, not a walk of the whole sum."""
    above = containing(parents if parents is not None else parent_map(t), x)

    def constant(e: TExpr) -> bool:  # integer and boolean parts are piecewise constant in x
        return e.type != FLOAT or e.op in LEAVES or e not in above

    def rule(e: TExpr, d: list) -> TExpr | None:
        if e == x:
            return const(1.0)
        if constant(e):
            return None
        operator = operator_of(e)
        if operator is None or operator.derivative is None:
            raise NotDifferentiable(f"no derivative rule for `{e.value if e.op == 'call' else e.op}`")
        return operator.derivative(e, d)
    return fold(t, rule, descend=lambda e: e != x and not constant(e))


def gradient(t: TExpr) -> dict[TExpr, TExpr | None]:
    """dt/dx for every leaf x of t (`leaves`), in order."""
    parents = parent_map(t)
    return {x: diff(t, x, parents) for x in leaves(t)}


def parent_map(t: TExpr) -> dict[TExpr, list[TExpr]]:
    """Each distinct subexpression of t -> the distinct subexpressions that have it as an argument."""
    parents: dict[TExpr, list[TExpr]] = {t: []}
    for e in postorder(t):
        for a in dict.fromkeys(e.args):
            parents.setdefault(a, []).append(e)
    return parents


def containing(parents: dict[TExpr, list[TExpr]], x: TExpr) -> set[TExpr]:
    """The subexpressions that contain x (x included; none if x is not in the expression)."""
    if x not in parents:
        return set()
    found, stack = set(), [x]
    while stack:
        e = stack.pop()
        if e not in found:
            found.add(e)
            stack.extend(parents[e])
    return found


def leaves(t: TExpr) -> list[TExpr]:
    """The float leaves a gradient flows to: the dot terms and the float table lookups, in order."""
    out: list[TExpr] = []
    for e in t.walk():
        if (e.op == "dot" or (e.op in ("param", "input") and e.type == FLOAT)) and e not in out:
            out.append(e)
    return out
