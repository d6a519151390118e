"""Block-sparse layout analyses: layouts fixed at compile time, and layouts built per call from inputs."""
from __future__ import annotations

from ..analysis.blocks import find_layout, layout_holds
from ..analysis.token_layout import find_token_layout, token_layout_holds
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


def analyse_token_layout(graph: Graph, ctx) -> None:
    """attend(s, mask, v) -> attend(s, mask, v) {token_layout = how its tiles are classified per call}

    For a mask that reads a call-time input (and not h): with m_1.. the maximal int/bool subexpressions
    reading an input and one side (doc[i], doc[j], j < prefix[0]) and [lo, hi] their range over a block,
    interval rules give per tile (any, all) with mask(i, j) for some pair of the tile => any and
    all => mask(i, j) for every pair (analysis/token_layout.py); tiles with not any are skipped, tiles
    with all need no mask. Other masks reading inputs are classified by evaluating them per tile.
    Re-checked on sampled inputs against the classes of the mask evaluated per tile.
    """
    for nid in graph.find("attend"):
        if not graph.node(nid).attr("masked"):
            continue
        layout = find_token_layout(expr_of(graph, graph.operands(nid)[1]))
        if layout is None:
            continue
        if not token_layout_holds(layout, graph.signature):
            raise AttnccError(f"internal error: run-time layout `{layout.describe()}` failed its sampled check; "
                              "please report this spec")
        graph.set_attrs(nid, token_layout=layout)
        ctx.note("analyse_token_layout", layout.describe())
