"""Kernelized weights: W(i, j) = dot(phi(q[i]), psi(k[j])) * M(i, j, h), the form reassociation and
the mixed-chunk analysis start from."""
from __future__ import annotations

from ..lang.expr import FLOAT, TExpr, const, postorder


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


MAX_POLYNOMIAL_DEGREE = 4  # feature width grows as d^n: beyond this the quadratic form is cheaper anyway
_ROW_FREE = ("var", "param", "input", "feature", "qrow", "krow")  # what a coefficient may not read


def polynomial_in_dot(weight: TExpr) -> dict[int, TExpr] | None:
    """weight = sum_n c_n s^n with s = dot(q[i], k[j]) the only dot, each c_n free of i, j, h, tables and
    inputs (constants, sizes and `scale` only) -> {n: c_n}; None if the weight is not such a polynomial
    or its degree exceeds MAX_POLYNOMIAL_DEGREE. Folded without recursion over the expression."""
    polys: dict[TExpr, dict[int, TExpr] | None] = {}
    for e in postorder(weight):
        polys[e] = _poly_node(e, [polys[a] for a in e.args])
    poly = polys[weight]
    if poly is None or any(c.uses(op) for c in poly.values() for op in _ROW_FREE) or \
            max(poly, default=0) > MAX_POLYNOMIAL_DEGREE:
        return None
    return dict(sorted(poly.items()))


def _poly_node(e: TExpr, args: list) -> dict[int, TExpr] | None:
    """One node of polynomial_in_dot: the node's polynomial from its operands' (None: not a polynomial)."""
    if e.op == "dot":
        plain = [a.op for a in e.args] == ["qrow", "krow"]
        return {1: const(1.0)} if plain else None
    if not e.uses("dot"):
        return {0: e}
    if any(a is None for a in args):
        return None
    if e.op in ("add", "sub"):
        out = dict(args[0])
        for n, c in args[1].items():
            out[n] = _binop(e.op, out[n], c) if n in out else (c if e.op == "add" else TExpr("neg", (c,), None, FLOAT))
        return out
    if e.op == "neg":
        return {n: TExpr("neg", (c,), None, FLOAT) for n, c in args[0].items()}
    if e.op == "mul":
        return _times(args[0], args[1])
    if e.op == "div" and not e.args[1].uses("dot"):
        return {n: _binop("div", c, e.args[1]) for n, c in args[0].items()}
    if e.op == "pow" and e.args[1].op == "const" and float(e.args[1].value).is_integer() and \
            0 <= e.args[1].value <= MAX_POLYNOMIAL_DEGREE:
        out = {0: const(1.0)}
        for _ in range(int(e.args[1].value)):
            out = _times(out, args[0])
        return out
    return None


def _binop(op: str, a: TExpr, b: TExpr) -> TExpr:
    """a op b, without the factors 1 that expanding products makes (1 * c, c * 1, c / 1)."""
    if op in ("mul", "div") and b == const(1.0):
        return a
    if op == "mul" and a == const(1.0):
        return b
    return TExpr(op, (a, b), None, FLOAT)


def _times(a: dict[int, TExpr], b: dict[int, TExpr]) -> dict[int, TExpr]:
    out: dict[int, TExpr] = {}
    for n, c in a.items():
        for m, d in b.items():
            term = _binop("mul", c, d)
            out[n + m] = _binop("add", out[n + m], term) if n + m in out else term
    return out
