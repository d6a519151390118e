"""`lara`: `approx lara`: c landmark proposals, self-normalized multiple importance sampling
(attncc.rt.approx.lara_attention); Triton runs the torch forward."""
from __future__ import annotations

from ..emit.torch import emit_approx
from ..ir.graph import B, D, E, H, N, Nq
from ..plan.cost import BYTES_IO, Candidate, CostQuery, quadratic_memory
from ..plan.registry import Lowering, register

NAME = "lara"
CALL = "ax.lara_attention(q, k, v, landmarks={landmarks}, alpha={alpha!r}, noise=ctx.noise)"


def accepts(query: CostQuery) -> bool:
    return query.approximated_by(NAME)


def cost(query: CostQuery) -> Candidate:
    c = query.approx.options["landmarks"]
    working, saved = quadratic_memory(c, rows=Nq + N)  # every token against the c landmarks at once
    return Candidate(NAME, 2 * B * H * ((Nq + N) * c * (D + E) + c * c * D), BYTES_IO,
                     f"LARA: {c} landmark proposals, self-normalized multiple importance sampling",
                     memory=working, saved=saved)


def emit_torch(w, graph, plan) -> None:
    emit_approx(w, graph, CALL, random_draw=True)


LOWERING = register(Lowering(
    NAME, accepts, cost, emit_torch,
    torch_backward="through the landmark products, the draw held fixed",
    triton_fallback="LARA (landmark products)"))
