"""`linear_chunked`: causal kernelized attention in chunks of CHUNK tokens, quadratic (masked) inside
a chunk and a carried prefix state across (decayed: gamma^(i - j)); context parallel (each rank
receives the prefix state of the earlier ranks' keys)."""
from __future__ import annotations

from ..emit.torch import emit_kernelized, emit_linear_call
from ..emit.triton_backward_linear import LINEAR_BACKWARD
from ..ir.graph import B, D, E, H, N
from ..plan.cost import BYTES_IO, BYTES_OUT, CHUNK, FEATURE_ROWS, Candidate, CostQuery
from ..plan.registry import Lowering, register
from . import linear

NAME = "linear_chunked"


def accepts(query: CostQuery) -> bool:
    return query.exact and query.op == "linear_attend" and bool(query.attrs.get("causal"))


def cost(query: CostQuery) -> Candidate:
    # the padded chunked copies, every chunk's state and its prefix (three of them), the C x C blocks
    chunks = 4 * B * H * N * (2 * D + E) + 12 * B * H * (N / CHUNK) * D * (E + 1) + 12 * B * H * N * CHUNK
    return Candidate(NAME, 2 * B * H * (N * CHUNK * (D + E) + 2 * N * D * (E + 1)), BYTES_IO,
                     f"chunks of {CHUNK}: quadratic inside, prefix state across",
                     memory=2 * BYTES_OUT + FEATURE_ROWS + chunks, saved=FEATURE_ROWS + chunks)


def emit_torch(w, graph, plan) -> None:
    emit_kernelized(w, graph, plan, None,
                    lambda w, common: emit_linear_call(w, plan, "causal_linear_attention", common))


LOWERING = register(Lowering(
    NAME, accepts, cost, emit_torch,
    torch_backward="through the chunks and the carried prefix state (C x C per chunk kept)",
    emit_triton=linear.emit_triton, triton_backward=LINEAR_BACKWARD, autotune_configs=linear.AUTOTUNE,
    interpreter_config=linear.INTERPRETER, context_parallel=True, causal_chunks=True))
