"""Per-dimension gates found on the spec's own dot, before prepare_rows forms its rows."""
from __future__ import annotations

from ..analysis.row_gates import row_gate_form, row_gate_holds
from ..ir.graph import Graph, expr_of
from ..lang.source import AttnccError


def find_row_gates(graph: Graph, ctx) -> None:
    """attend(S(dot(X(i) o exp(G(i)), Y(j) o exp(-G(j)))), mask?, v)
    -> the same attend {row_gate = (X, Y, G)}   (the scores unchanged)

    The one dot of the scores is sum_d X_d Y_d exp(G_d(i) - G_d(j)) (analysis/row_gates.py). The
    scores keep their meaning for every lowering (prepare_rows then forms q' = X o exp(G), k' = Y o
    exp(-G), which overflow once the gates reach a few hundred); reassociate_kernel, knowing the mask,
    turns a causal one into the gated recurrence over X and Y with differences of G only."""
    for nid in graph.find("attend"):
        node = graph.node(nid)
        scores = expr_of(graph, graph.operands(nid)[0])
        dots = list(dict.fromkeys(e for e in scores.walk() if e.op == "dot"))
        if len(dots) != 1 or (gate := row_gate_form(dots[0], ctx.symbols)) is None:
            continue
        holds = row_gate_holds(dots[0], gate, graph.signature)
        if holds is None:
            ctx.note("find_row_gates", f"{gate.describe()}: not checked on samples (row inputs of different "
                     "widths), kept on the prepared rows")
            continue
        if not holds:
            raise AttnccError("internal error: per-dimension gate failed its sampled check; please report this spec")
        new = graph.add(node.op, graph.operands(nid), shape=node.shape, dtype=node.dtype, span=node.span,
                        **{**dict(node.attrs), "row_gate": gate})
        graph.replace_uses(nid, new)
        ctx.note("find_row_gates", f"{gate.describe()}: the chunked gated recurrence where the mask is causal")
