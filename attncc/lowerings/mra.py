"""`mra`: `approx mra` (MRA-2): exact scores on the top blocks of each block row (ranked by block-mean
logits), block means (or nothing) elsewhere. Triton: a block-sparse kernel over the selected blocks
when the block is a Triton tile (16 .. 128, a power of two), else the torch forward."""
from __future__ import annotations

from ..emit.torch import emit_approx
from ..emit.triton_approx import emit_mra_kernel, mra_triton_block
from ..ir.graph import B, D, E, H, N, Nq
from ..plan.cost import BYTES_IO, Candidate, CostQuery, quadratic_memory
from ..plan.registry import Lowering, register

NAME = "mra"
CALL = ("ax.mra_attention(q, k, v, block={block}, blocks_per_row={blocks_per_row}, mode={mode!r}, "
        "first={first}, diagonal={diagonal})")


def accepts(query: CostQuery) -> bool:
    return query.approximated_by(NAME)


def cost(query: CostQuery) -> Candidate:
    opts = query.approx.options
    b, per_row = opts["block"], opts["blocks_per_row"]
    working, saved = quadratic_memory(per_row * b + N / b, rows=Nq)  # its blocks, and block means of a row
    return Candidate(NAME, 2 * B * H * (Nq * per_row * b * (D + E) + (Nq / b) * (N / b) * (D + E)),
                     BYTES_IO + 4 * B * H * Nq * per_row * b,
                     f"MRA-2: exact scores on {per_row} blocks of {b} per block row (top-k of block-mean "
                     f"logits), {'block means elsewhere' if opts['mode'] == 'full' else 'nothing elsewhere'}",
                     memory=working, saved=saved)


def emit_torch(w, graph, plan) -> None:
    emit_approx(w, graph, CALL, random_draw=False)


def triton_fallback(graph) -> str | None:
    if mra_triton_block(graph):
        return None
    return "MRA-2 with a block that no Triton tile matches (16 .. 128, a power of two)"


def emit_triton(w, graph, plan) -> str:
    emit_mra_kernel(w, graph)
    return ("block-sparse MRA-2 kernel over each head's selected blocks (selection and low-resolution "
            "part in torch)")


LOWERING = register(Lowering(
    NAME, accepts, cost, emit_torch,
    # the gradient of the approximation's own formulas, its selection held fixed
    torch_backward="through the selected blocks' tiles and the low-resolution part (the block selection is "
                   "piecewise constant: no gradient through it)",
    emit_triton=emit_triton, triton_fallback=triton_fallback))
