"""`linear_gated`: causal kernelized attention with a data-dependent scalar gate exp(G(i) - G(j))
(simple GLA, Mamba-2's SSD, gated RetNet), or one exp(G_d(i) - G_d(j)) per feature dimension (GLA), in
chunks of CHUNK tokens: quadratic inside a chunk with in-chunk gate differences, the gated state
carried across."""
from __future__ import annotations

from ..emit.gated import emit_gated_torch
from ..emit.triton_gla import GATED_BACKWARD, emit_triton
from ..ir.graph import B, D, E, H, N
from ..plan.cost import BYTES_IO, CHUNK, Candidate, CostQuery
from ..plan.registry import Lowering, register
from . import linear

NAME = "linear_gated"


def accepts(query: CostQuery) -> bool:
    return query.exact and query.op == "gated_attend"


SUB_BLOCK = 16  # rt.gated: a per-dimension gate's in-chunk pairs in sub-blocks of 16 rows ([16, 16, D] each)


def cost(query: CostQuery) -> Candidate:
    if query.attrs.get("gate_rows"):  # the pairs of a sub-block per dimension, the other pairs two products
        # fp32 per token: the in-chunk weights (C), a sub-block's differences (16 D), the keys scaled
        # for each sub-block (C / 16 D), the scaled rows, gates and [v, 1] (4 D + E), the states (D (E + 1) / C)
        per_token = CHUNK + SUB_BLOCK * D + (CHUNK // SUB_BLOCK) * D + 4 * D + E + D * (E + 1) / CHUNK
        return Candidate(NAME, 2 * B * H * (N * CHUNK * (D + E + 1) + 2 * N * SUB_BLOCK * D + 2 * N * D * (E + 1)),
                         BYTES_IO, f"chunks of {CHUNK}: gated quadratic inside (a gate per dimension, "
                         f"sub-blocks of {SUB_BLOCK}), gated state across",
                         memory=4 * B * H * N * per_token, saved=4 * B * H * N * per_token)
    return Candidate(NAME, 2 * B * H * (N * CHUNK * (D + E + 1) + 2 * N * D * (E + 1)), BYTES_IO,
                     f"chunks of {CHUNK}: gated quadratic inside, gated state across")


LOWERING = register(Lowering(
    NAME, accepts, cost, emit_gated_torch,
    torch_backward="through the chunks and the carried gated states (C x C per chunk kept)",
    emit_triton=emit_triton, triton_backward=GATED_BACKWARD, autotune_configs=linear.AUTOTUNE,
    interpreter_config=linear.INTERPRETER))
