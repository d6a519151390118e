"""`linear_gated`: causal kernelized attention with a data-dependent scalar gate exp(G(i) - G(j))
(simple GLA, Mamba-2's SSD, gated RetNet) in chunks of CHUNK tokens: quadratic inside a chunk with
in-chunk gate differences, the gated state carried across."""
from __future__ import annotations

from ..emit.gated import emit_gated_torch, emit_gated_triton
from ..emit.triton_backward_linear import GATED_BACKWARD
from ..ir.graph import B, D, E, H, N
from ..plan.cost import BYTES_IO, CHUNK, Candidate, CostQuery
from ..plan.registry import Lowering, register
from . import linear

NAME = "linear_gated"


def accepts(query: CostQuery) -> bool:
    return query.exact and query.op == "gated_attend"


def cost(query: CostQuery) -> Candidate:
    return Candidate(NAME, 2 * B * H * (N * CHUNK * (D + E + 1) + 2 * N * D * (E + 1)), BYTES_IO,
                     f"chunks of {CHUNK}: gated quadratic inside, gated state across")


LOWERING = register(Lowering(
    NAME, accepts, cost, emit_gated_torch,
    torch_backward="through the chunks and the carried gated states (C x C per chunk kept)",
    emit_triton=emit_gated_triton, triton_backward=GATED_BACKWARD, autotune_configs=linear.AUTOTUNE,
    interpreter_config=linear.INTERPRETER))
