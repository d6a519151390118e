"""Mixed chunk attention (FLASH): a chunk-local term plus kernelized cross-chunk terms."""
from __future__ import annotations

from ..analysis.chunks import find_mixed, mixed_holds
from ..ir.graph import Graph, carried_attrs, expr_of
from ..lang.normalizers import NORMALIZERS
from ..lang.source import AttnccError


def mixed_chunk(graph: Graph, ctx) -> None:
    """attend(W, mask?, v) {rows | none} with
         mask o W = blockdiag_c(where(P0, X, 0)) + sum_t M_t o (phi_t(Q) psi_t(K)^T) A_t(h),
         M_t in {1, [J < I], [J <= I], [j <= i]}, I = i // c, J = j // c
    -> mixed_attend(q, k, v) {mixed = MixedForm}: quadratic inside chunks of c, chunk states
    S_g = psi(K_g)^T V_g summed (or prefix-summed) across chunks: O(N c (d + e) + N m e).
    The decomposition is cross-checked against the weight on random grids (chunks.mixed_holds)."""
    for nid in graph.find("attend"):
        node = graph.node(nid)
        if NORMALIZERS[node.attr("normalize")].online_softmax:
            continue
        ops = graph.operands(nid)
        weight, mask = expr_of(graph, ops[0]), expr_of(graph, ops[1]) if node.attr("masked") else None
        form = find_mixed(weight, mask, ctx.symbols)
        if form is None:
            continue
        if not mixed_holds(weight, mask, form, graph.signature):
            raise AttnccError("internal error: mixed chunk form failed its sampled check; please report this spec")
        leaves = {graph.node(n).op: n for n in graph.order() if graph.node(n).op in ("q", "k", "v")}
        new = graph.add("mixed_attend", [leaves["q"], leaves["k"], leaves["v"]], shape=node.shape, dtype=node.dtype,
                        **carried_attrs(node), mixed=form)
        graph.replace_uses(nid, new)
        ctx.note("mixed_chunk", f"mixed chunk attention, {form.describe()}: quadratic inside chunks, "
                 "chunk states (prefix-)summed across, O(N c (d + e) + N m e)")
