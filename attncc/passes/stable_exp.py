"""`exp(f)` weights under `normalize rows` are a softmax in disguise: compute them as one."""
from __future__ import annotations

from ..ir.graph import Graph, expr_of
from ..ir.lower import ExprBuilder
from ..lang.normalizers import NORMALIZERS

SOFTMAX = "softmax"


def stabilize_exp_rows(graph: Graph, ctx) -> None:
    """attend(exp(f), mask?, v) {rows, eps}  ->  attend(f, mask?, v) {softmax, eps}

    With m_i = max(max_j f_ij over the visible keys, log eps) factored out of numerator and denominator,

      sum_j e^f_ij v_j / (sum_j e^f_ij + eps) = sum_j e^(f_ij - m_i) v_j / (sum_j e^(f_ij - m_i) + e^(log eps - m_i)),

    every exponent is <= 0: nothing overflows where e^f would (exp(100 (i - j)) passes float32's range
    at i - j = 1), and eps is one more key of logit log(eps) and value 0. The softmax skeletons read a
    non-zero eps of a softmax node as that key (rt.attention._attend, the Triton forward); eps = 0 is
    the plain softmax. Runs after kernelize_favor (whose rows weights are products, not one exp)."""
    for nid in graph.find("attend"):
        node = graph.node(nid)
        norm = NORMALIZERS[node.attr("normalize")]
        if node.attr("approx") is not None or norm.online_softmax or not norm.divides_by_row_sum:
            continue
        ops = graph.operands(nid)
        weight = expr_of(graph, ops[0])
        if weight.op != "call" or weight.value != "exp":
            continue
        logits = ExprBuilder(graph).add(weight.args[0])
        attrs = {**dict(node.attrs), "normalize": SOFTMAX}
        new = graph.add("attend", [logits, *ops[1:]], shape=node.shape, dtype=node.dtype, span=node.span, **attrs)
        graph.replace_uses(nid, new)
        ctx.note("stabilize_exp_rows", f"weight exp(f) under rows: a softmax of f with eps = {node.attr('eps')!r} "
                 "as one more key of logit log(eps), the row maximum factored out (no overflow of e^f)")
