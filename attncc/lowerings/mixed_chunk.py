"""`mixed_chunk`: FLASH mixed chunks (attncc/analysis/chunks.py): c x c quadratic blocks on the diagonal, and
per linear term the chunk states psi(K_g)^T V_g prefix-summed across chunks (emit/mixed.py)."""
from __future__ import annotations

import sympy

from ..emit.mixed import emit_mixed_torch, emit_mixed_triton
from ..ir.graph import B, D, E, H, N, Nq
from ..plan.cost import BYTES_OUT, FEATURE_ROWS, Candidate, CostQuery, quadratic_memory
from ..plan.registry import Lowering, register
from ..analysis.structure import to_sympy

NAME = "mixed_chunk"


def accepts(query: CostQuery) -> bool:
    return query.exact and query.op == "mixed_attend"


def cost(query: CostQuery) -> Candidate:
    """c keys per query on the diagonal blocks; per linear term the chunk states, their (prefix) sums
    over G = N / c chunks, and phi(Q) S."""
    form = query.attrs["mixed"]
    c = to_sympy(form.chunk, {form.chunk.value: sympy.Symbol(form.chunk.value, integer=True, positive=True)}
                 if form.chunk.op == "size" else {})
    terms = len(form.linear)
    flops = 2 * B * H * Nq * c * (D + E) + terms * 2 * B * H * (N + Nq) * D * (E + 1) + terms * B * H * (N / c) * D * E
    nbytes = 4 * B * H * (Nq * (D + E) + N * (D + E)) + terms * 4 * B * H * (N / c) * D * (E + 1)
    working, saved = quadratic_memory(c)
    # per linear term: its rows through the map, every chunk's state and its prefix sum, the terms' sums
    states = terms * (FEATURE_ROWS + 8 * B * H * (N / c) * D * (E + 1)) + 2 * BYTES_OUT
    return Candidate(NAME, flops, nbytes, "quadratic inside chunks of c, chunk states prefix-summed across",
                     memory=working + states, saved=saved + states)


def emit_torch(w, graph, plan) -> None:
    emit_mixed_torch(w, graph, plan)


def emit_triton(w, graph, plan) -> str:
    return emit_mixed_triton(w, graph, plan)


LOWERING = register(Lowering(
    NAME, accepts, cost, emit_torch,
    torch_backward="through the c x c diagonal blocks and the (prefix-summed) chunk states (no N x N)",
    emit_triton=emit_triton))
