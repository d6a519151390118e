"""Polynomial kernels (Based, ReBased, (q.k)^2) become kernelized attention over tensor-power features."""
from __future__ import annotations

import sympy

from ..analysis.kernel import polynomial_in_dot, split_kernel
from ..ir.graph import Graph, expr_of
from ..ir.lower import ExprBuilder
from ..lang.expr import FLOAT, VEC, TExpr
from ..lang.features import TENSOR_POWER_K, TENSOR_POWER_Q, tensor_power_width
from ..lang.normalizers import NORMALIZERS
from ..lang.operators import fmt


def expand_polynomial_kernel(graph: Graph, ctx) -> None:
    """attend(sum_n c_n dot(q, k)^n, mask?, v) {rows | none}
    -> attend(dot(T_c(q), T(k)), mask?, v) {tensor_powers = ((n, c_n), ...)}

    (q.k)^n = <q^(x)n, k^(x)n> (the n-th tensor power, its symmetric part for n = 2), so with
    T_c(q) = [c_n q^(x)n]_n and T(k) = [k^(x)n]_n the weight is one dot of feature rows of width
    m = sum_n d^n (d (d + 1) / 2 for n = 2): kernelized attention, which reassociate_kernel then
    turns into phi(Q) (phi(K)^T V) or its causal prefix sums. The module computes the features
    before any lowering runs (CompiledAttention.prepared); every candidate's cost is counted at
    width m. Coefficients may read constants, sizes and `scale`; a weight of degree 0 or already
    a product with a dot factor is left to reassociate_kernel."""
    for nid in graph.find("attend"):
        node = graph.node(nid)
        if NORMALIZERS[node.attr("normalize")].online_softmax or node.attr("approx") is not None:
            continue
        ops = graph.operands(nid)
        weight = expr_of(graph, ops[0])
        if not weight.uses("dot") or split_kernel(weight) is not None:
            continue
        poly = polynomial_in_dot(weight)
        if poly is None:
            ctx.note("expand_polynomial", "weight is not a polynomial in one dot(q[i], k[j]) with constant "
                     "coefficients (degree <= 4): stays as written")
            continue
        dot = next(e for e in weight.walk() if e.op == "dot")
        q_row, k_row = dot.args
        sides = (TExpr("feature", (q_row,), TENSOR_POWER_Q, VEC), TExpr("feature", (k_row,), TENSOR_POWER_K, VEC))
        pair = ExprBuilder(graph).add(TExpr("dot", sides, None, FLOAT))
        terms = tuple(poly.items())
        attrs = {**dict(node.attrs), "tensor_powers": terms}
        new = graph.add("attend", [pair, *ops[1:]], shape=node.shape, dtype=node.dtype, span=node.span, **attrs)
        graph.replace_uses(nid, new)
        width = tensor_power_width(sympy.Symbol("d"), [n for n, _ in terms])
        ctx.note("expand_polynomial", "weight " + " + ".join(f"({fmt(c)}) s^{n}" for n, c in terms) +
                 f" of s = q.k: one dot of tensor-power features, width m = {width}")
