"""Every attention form read back as the quadratic attention it computes: what `tiled` runs.

The rewrites of reassociate_kernel and mixed_chunk keep the meaning of the attend node they replace;
this is the other direction, from the rewritten node's operands (pq, pk = phi(q), psi(k)):

    attend(s, mask?, v)                          -> scores s, mask
    linear_attend(pq, pk, M?, v)                 -> dot(pq, pk) * M,  mask j <= i if causal
    linear_attend(pq, pk, A, gamma, M, v) {decayed}  -> dot(pq, pk) * M,  mask j <= i
                                                    (M = A gamma^(i - j) was proven, M is kept for this)
    gated_attend(pq, pk, A, G, M, v)             -> dot(pq, pk) * M,  mask j <= i  (M = A exp(G(i) - G(j)))
    gated_attend(...) {gate_rows}                -> none: sum_d pq_d pk_d exp(G_d(i) - G_d(j)) is no dot
    toeplitz_attend | grid_attend | graph_attend(pq, pk, f, v)
                                                 -> dot(pq, pk) * f, no mask (f = where(mask, M, 0))
    mixed_attend(q, k, v) {mixed}                -> the form's weight, mask folded in (MixedForm.weight)

A mask claimed `full` or `causal` was proven equal to true or to i - j >= 0, so it is rebuilt from
the claim; the mask structure stays on the node for the tiled loop's band.
"""
from __future__ import annotations

from ..ir.graph import Graph, expr_of
from ..lang.expr import BOOL, FLOAT, TExpr
from ..lang.standard import KEY_INDEX, QUERY_INDEX

FACTORED = ("toeplitz_attend", "grid_attend", "graph_attend")


def _mul(a: TExpr, b: TExpr) -> TExpr:
    return TExpr("mul", (a, b), None, FLOAT)


def quadratic_form(graph: Graph, nid: int) -> tuple[TExpr, TExpr | None]:
    """(scores or weights, mask or None) of the attention node nid (see the module docstring)."""
    node, ops = graph.node(nid), graph.operands(nid)
    if node.op == "attend":
        return expr_of(graph, ops[0]), expr_of(graph, ops[1]) if node.attr("masked") else None
    if node.op == "mixed_attend":
        return node.attr("mixed").weight(), None
    dot = TExpr("dot", (expr_of(graph, ops[0]), expr_of(graph, ops[1])), None, FLOAT)
    if node.op in FACTORED:
        return _mul(dot, expr_of(graph, ops[2])), None
    if node.op == "gated_attend" and node.attr("gate_rows"):
        raise ValueError("a per-dimension gate has no quadratic form over the rows it keeps")
    if node.op == "gated_attend":
        return _mul(dot, expr_of(graph, ops[4])), TExpr("le", (KEY_INDEX, QUERY_INDEX), None, BOOL)
    if node.op != "linear_attend":
        raise ValueError(f"{node.op} has no quadratic form")
    causal = TExpr("le", (KEY_INDEX, QUERY_INDEX), None, BOOL) if node.attr("causal") else None
    if node.attr("modulated"):
        return _mul(dot, expr_of(graph, ops[4 if node.attr("decayed") else 2])), causal
    return dot, causal
