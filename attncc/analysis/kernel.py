"""Kernelized weights: W(i, j) = dot(phi(q[i]), psi(k[j])) * M(i, j, h), the form reassociation and
the mixed-chunk analysis start from."""
from __future__ import annotations

from ..lang.expr import FLOAT, TExpr, const


def product_factors(t: TExpr) -> list[TExpr]:
    """The factors of a product; a division by a dot-free term is a factor 1 / term."""
    if t.op == "mul":
        return product_factors(t.args[0]) + product_factors(t.args[1])
    if t.op == "div" and not t.args[1].uses("dot"):
        return product_factors(t.args[0]) + [TExpr("div", (const(1.0), t.args[1]), None, FLOAT)]
    return [t]


def split_kernel(weight: TExpr) -> tuple[TExpr, TExpr | None] | None:
    """weight = dot(phi(q), psi(k)) * M(i, j, h) -> (dot, M); None if dot is not a plain factor."""
    factors = product_factors(weight)
    dots = [f for f in factors if f.op == "dot"]
    rest = [f for f in factors if f.op != "dot"]
    if len(dots) != 1 or any(f.uses("dot") for f in rest):
        return None
    modulation = None
    for f in rest:
        modulation = f if modulation is None else TExpr("mul", (modulation, f), None, FLOAT)
    return dots[0], modulation
