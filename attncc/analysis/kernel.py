"""Kernelized weights: W(i, j) = dot(phi(q[i]), psi(k[j])) * M(i, j, h), the form reassociation and
the mixed-chunk analysis start from."""
from __future__ import annotations

from ..lang.expr import FLOAT, TExpr, const


def product_factors(t: TExpr) -> list[TExpr]:
    """The factors of a product; a division by a dot-free term is a factor 1 / term."""
    factors, stack = [], [(t, False)]
    while stack:  # a product may be as long as the spec writes it: no recursion
        e, final = stack.pop()
        if final:
            factors.append(e)
        elif e.op == "mul":
            stack += [(e.args[1], False), (e.args[0], False)]
        elif e.op == "div" and not e.args[1].uses("dot"):
            stack += [(TExpr("div", (const(1.0), e.args[1]), None, FLOAT), True), (e.args[0], False)]
        else:
            factors.append(e)
    return factors


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
