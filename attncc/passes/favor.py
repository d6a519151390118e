"""`approx favor`: softmax attention becomes kernelized attention with FAVOR+ random features."""
from __future__ import annotations

from ..ir.graph import Graph, expr_of
from ..ir.lower import ExprBuilder
from ..lang.favor import FAVOR, favor_weight, split_logits


def kernelize_favor(graph: Graph, ctx) -> None:
    """attend(dot(q, k) * scale + b, mask?, v) {softmax, approx=favor(...)}
    -> attend(dot(favor(q), favor(k)) * exp(b), mask?, v) {rows, eps=0}

    softmax(s + b) v = sum_j exp(q_i.k_j s) exp(b_ij) v_j / sum_j exp(q_i.k_j s) exp(b_ij) under the
    mask, and E[favor(q) . favor(k)] = exp(q.k s) (lang/features.py): replacing the kernel gives
    rows-normalized weights favor(q).favor(k) exp(b), eps 0 (the shift by the row max cancels).
    Runs first, so every kernelized rewrite (linear, prefix sums, FFT for a Toeplitz b) applies."""
    for nid in graph.find("attend"):
        node = graph.node(nid)
        approx = node.attr("approx")
        if approx is None or approx.method != FAVOR:
            continue
        ops = graph.operands(nid)
        weight = ExprBuilder(graph).add(favor_weight(split_logits(expr_of(graph, ops[0]))))
        attrs = {**{name: value for name, value in node.attrs if name != "approx"}, "normalize": "rows", "eps": 0.0}
        new = graph.add("attend", [weight, *ops[1:]], shape=node.shape, dtype=node.dtype, span=node.span, **attrs)
        graph.replace_uses(nid, new)
        ctx.note("kernelize_favor", f"approx {approx}: exp(q.k * scale) ~ favor(q).favor(k), "
                 "softmax(q.k * scale + b) -> rows-normalized favor(q).favor(k) exp(b)")
