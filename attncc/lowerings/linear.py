"""`linear`: kernelized attention phi(Q) (phi(K)^T V), one pass for the key state and one for the
output; context parallel (ranks exchange key states, attncc/runtime/distributed.py)."""
from __future__ import annotations

from ..emit.torch import emit_kernelized, emit_linear_call
from ..emit.triton_linear import emit_linear_triton
from ..emit.triton_backward_linear import LINEAR_BACKWARD
from ..ir.graph import B, D, E, H, N, Nq
from ..plan.cost import BYTES_IO, BYTES_OUT, FEATURE_ROWS, Candidate, CostQuery
from ..plan.registry import Lowering, register

NAME = "linear"
# chunk candidates from the compile gate (docs/compile_gate.md): each program carries a [BLOCK_D, 32] fp32
# state block (16 columns for fp32 inputs) and fp32 feature rows; 64-token chunks spilled at d = 64
# whatever the warps, 32-token ones with 4 warps spill at d = 128 (rows over 128 bytes), and fp32 inputs
# (FMA dots) spill kilobytes in all but 16-token chunks with 8 warps
AUTOTUNE = (dict(BLOCK=32, num_warps=8, num_stages=2, half_only=True), dict(BLOCK=16, num_warps=8, num_stages=2),
            dict(BLOCK=16, num_warps=4, num_stages=2, half_only=True),
            dict(BLOCK=32, num_warps=4, num_stages=2, max_row_bytes=128, half_only=True),
            dict(BLOCK=32, num_warps=4, num_stages=3, max_row_bytes=128, half_only=True))
INTERPRETER = dict(BLOCK=16, num_warps=4, num_stages=3)


def accepts(query: CostQuery) -> bool:
    return query.exact and query.op == "linear_attend" and not query.attrs.get("causal")


def cost(query: CostQuery) -> Candidate:
    state = 4 * B * H * D * (E + 1)
    return Candidate(NAME, 2 * B * H * (N + Nq) * D * (E + 1), BYTES_IO,
                     "phi(Q) (phi(K)^T V): one pass for the state, one for the output",
                     # a map's rows pass through a temporary (elu(x), then + 1)
                     memory=2 * BYTES_OUT + 2 * FEATURE_ROWS + state, saved=2 * FEATURE_ROWS + state)


def emit_torch(w, graph, plan) -> None:
    emit_kernelized(w, graph, plan, None, lambda w, common: emit_linear_call(w, plan, "linear_attention", common))


def emit_triton(w, graph, plan) -> str:
    return emit_linear_triton(w, graph, plan)


LOWERING = register(Lowering(
    NAME, accepts, cost, emit_torch,
    torch_backward="through phi(K)^T V and the normalizer (O(N m e) kept, no N x N)",
    emit_triton=emit_triton, triton_backward=LINEAR_BACKWARD, autotune_configs=AUTOTUNE,
    interpreter_config=INTERPRETER, context_parallel=True))
