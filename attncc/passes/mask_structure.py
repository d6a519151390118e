"""Mask structure analysis."""
from __future__ import annotations

from ..ir.graph import Graph, expr_of
from ..lang.source import AttnccError
from ..analysis.sampling import structure_holds
from ..analysis.structure import classify_mask


def analyse_mask(graph: Graph, ctx) -> None:
    """attend(s, mask, v) -> attend(s, mask, v) {mask_structure = full | causal | band(lo, hi) | toeplitz | general}

    The mask expression is rewritten in d = i - j with sympy; a conjunction of linear bounds on d is
    a band [lo, hi] (causal is [0, oo)); any conjuncts that are such bounds bound a general mask.
    Every claim is re-checked on sampled grids with random tables and inputs.
    """
    for nid in graph.find("attend"):
        node = graph.node(nid)
        mask = expr_of(graph, graph.operands(nid)[1]) if node.attr("masked") else None
        structure = classify_mask(mask, ctx.symbols)
        if mask is not None and not structure_holds(mask, structure, graph.signature, is_mask=True):
            raise AttnccError(f"internal error: mask structure `{structure.describe()}` failed its sampled check; "
                              "please report this spec")
        graph.set_attrs(nid, mask_structure=structure)
        ctx.note("analyse_mask", f"mask is {structure.describe()}: {structure.reason}")
