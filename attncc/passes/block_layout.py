"""Block-sparse layout analysis."""
from __future__ import annotations

from ..analysis.blocks import find_layout, layout_holds
from ..ir.graph import Graph, expr_of
from ..lang.source import AttnccError


def analyse_blocks(graph: Graph, ctx) -> None:
    """attend(s, mask, v) -> attend(s, mask, v) {block_layout = P(i // b, j // b) over blocks of b tokens}

    The conjuncts of the mask that read i and j only as i // b, j // b (and no head, table or input)
    form a predicate on block ids: mask(i, j) => P(i // b, j // b). The layout P[I, J] is exact at
    block granularity and is computed once per sequence length; re-checked on sampled grids.
    """
    for nid in graph.find("attend"):
        if not graph.node(nid).attr("masked"):
            continue
        mask = expr_of(graph, graph.operands(nid)[1])
        layout = find_layout(mask)
        if layout is None:
            continue
        if not layout_holds(mask, layout, graph.signature.sizes):
            raise AttnccError(f"internal error: block layout `{layout.describe()}` failed its sampled check; "
                              "please report this spec")
        graph.set_attrs(nid, block_layout=layout)
        ctx.note("analyse_blocks", f"block-sparse layout: {layout.describe()}, computed once per length")
