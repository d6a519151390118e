"""VARS: `normalize ista` becomes the unrolled solver on m x m Gram matrices."""
from __future__ import annotations

from ..ir.graph import Graph
from ..ir.lower import ExprBuilder


def lower_ista(graph: Graph, ctx) -> None:
    """attend(dot(phi(q), psi(k)), v) {normalize=ista}
    -> ista_attend(phi(q), psi(k), v) {steps, lam}: out = Phi_Q z_T with
    z_{t+1} = S_{lam/L}(z_t - (G z_t - b) / L), G = Phi_K^T Phi_K [m, m], b = Phi_K^T V (attncc/ista.py).
    Runs before the kernel passes: the solver is not a fixed W, so no other rewrite applies."""
    spec = ctx.spec
    if spec.ista is None:
        return
    for nid in graph.find("attend"):
        node = graph.node(nid)
        build = ExprBuilder(graph)
        phi_q, phi_k = (build.add(side) for side in spec.weight.args)
        new = graph.add("ista_attend", [phi_q, phi_k, build.leaves["v"]], shape=node.shape, dtype=node.dtype,
                        normalize="ista", eps=0.0, mask_structure=node.attr("mask_structure"),
                        steps=spec.ista.steps, lam=spec.ista.lam)
        graph.replace_uses(nid, new)
        ctx.note("lower_ista", f"VARS: {spec.ista.steps} unrolled ISTA steps (lam = {spec.ista.lam}) on the "
                 "m x m Gram matrix of the column-normalized key features, O(N m (m + e) + T m^2 e)")
