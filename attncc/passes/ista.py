"""VARS: `normalize ista` becomes the unrolled solver on m x m Gram matrices."""
from __future__ import annotations

from ..ir.graph import Graph, carried_attrs
from ..lang.normalizers import NORMALIZERS


def lower_ista(graph: Graph, ctx) -> None:
    """attend(pairdot(phi(q), psi(k)), v) {normalize=ista, steps, lam}
    -> ista_attend(phi(q), psi(k), v) {steps, lam}: out = Phi_Q z_T with
    z_{t+1} = S_{lam/L}(z_t - (G z_t - b) / L), G = Phi_K^T Phi_K [m, m], b = Phi_K^T V (attncc/oracle/ista.py).
    Runs before the kernel passes: the solver is not a fixed W, so no other rewrite applies."""
    for nid in graph.find("attend"):
        node = graph.node(nid)
        if NORMALIZERS[node.attr("normalize")].fixed_weights:  # only the solver has no fixed W
            continue
        weight, v = graph.operands(nid)[0], graph.operands(nid)[-1]
        phi_q, phi_k = graph.operands(weight)  # the checker allows only dot(phi(q[i]), psi(k[j]))
        steps, lam = node.attr("steps"), node.attr("lam")
        new = graph.add("ista_attend", [phi_q, phi_k, v], shape=node.shape, dtype=node.dtype,
                        **{**carried_attrs(node), "eps": 0.0}, steps=steps, lam=lam)
        graph.replace_uses(nid, new)
        ctx.note("lower_ista", f"VARS: {steps} unrolled ISTA steps (lam = {lam}) on the "
                 "m x m Gram matrix of the column-normalized key features, O(N m (m + e) + T m^2 e)")
