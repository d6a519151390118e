"""`ista`: VARS (`normalize ista`): T unrolled ISTA steps of min_z 1/2 |V - Phi z|^2 + lam |z|_1 on
the m x m Gram matrix of the column-normalized key features; no fixed W, so no other lowering applies.
Triton runs the torch forward (each step is a batched m x m matmul)."""
from __future__ import annotations

from ..emit.torch import emit_kernelized
from ..ir.graph import B, D, E, H, N, Nq
from ..plan.cost import BYTES_OUT, FEATURE_ROWS, Candidate, CostQuery
from ..plan.registry import Lowering, register

NAME = "ista"


def accepts(query: CostQuery) -> bool:
    return query.op == "ista_attend"


def cost(query: CostQuery) -> Candidate:
    """Column norms, G = Phi_K^T Phi_K and b = Phi_K^T V (N m (m + e)), T steps of G z (m^2 e),
    out = Phi_Q z (Nq m e); m = D, the feature width."""
    steps = query.attrs["steps"]
    flops = 2 * B * H * (N * D * (D + E) + steps * D * D * E + Nq * D * E)
    gram = 4 * B * H * D * (D + E)  # G and b
    return Candidate(NAME, flops, 4 * B * H * (Nq * (D + E) + N * (D + E) + (steps + 1) * D * (D + E)),
                     f"{steps} unrolled ISTA steps on the m x m Gram matrix, no N x N buffer",
                     memory=2 * BYTES_OUT + 2 * FEATURE_ROWS + 2 * gram, saved=2 * FEATURE_ROWS + (steps + 1) * gram)


def emit_torch(w, graph, plan) -> None:
    steps, lam = plan.attrs["steps"], plan.attrs["lam"]

    def forward(w, common: str) -> None:
        w.line(f"# VARS: {steps} ISTA steps of min_z 1/2 |V - Phi z|^2 + lam |z|_1, Phi the "
               "column-normalized key features")
        w.line(f"return rt.ista_attention(pq, pk, v, steps={steps!r}, lam={lam!r})")
    emit_kernelized(w, graph, plan, None, forward)


LOWERING = register(Lowering(
    NAME, accepts, cost, emit_torch,
    torch_backward="through the unrolled ISTA steps on the m x m Gram matrix (soft thresholds: subgradient 0 at "
                   "the kink)",
    triton_fallback="each unrolled ISTA step (batched m x m matmuls)"))
