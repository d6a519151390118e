"""`ra`: `approx ra`: s samples per query from its softmax mixture (quadratic, unbiased;
attncc.rt.approx.ra_attention); Triton runs the torch forward."""
from __future__ import annotations

import sympy

from ..emit.torch import emit_approx
from ..ir.graph import B, D, E, H, N, Nq
from ..plan.cost import BYTES_IO, BYTES_OUT, PAIR_BYTES_KEPT, Candidate, CostQuery
from ..plan.registry import Lowering, register

NAME = "ra"
CALL = "ax.ra_attention(q, k, v, noise=ctx.noise)"


def accepts(query: CostQuery) -> bool:
    return query.approximated_by(NAME)


def cost(query: CostQuery) -> Candidate:
    s = query.approx.options["samples"]
    # queries in steps of at most 2^23 scores (attncc.rt.approx.RA_BUDGET), three buffers of them;
    # autograd keeps every step's
    working = 2 * BYTES_OUT + 3 * 4 * sympy.Max(2 ** 23, B * H * s * N)
    return Candidate(NAME, 2 * B * H * Nq * N * (D + s * (D + E)), BYTES_IO + 4 * B * H * Nq * s * D,
                     f"RA: {s} samples per query from its softmax mixture (quadratic, unbiased)",
                     memory=working, saved=PAIR_BYTES_KEPT * B * H * Nq * N * (s + 1))


def emit_torch(w, graph, plan) -> None:
    emit_approx(w, graph, CALL, random_draw=True)


LOWERING = register(Lowering(
    NAME, accepts, cost, emit_torch,
    torch_backward="through the per-sample softmaxes, the samples held fixed",
    triton_fallback="RA (sampling and per-sample softmax)"))
