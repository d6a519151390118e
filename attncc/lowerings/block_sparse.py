"""`block_sparse`: the tiled skeleton over the score blocks a proven block layout lists
(passes/block_layout.py), the layout computed once per length."""
from __future__ import annotations

import sympy

from ..analysis.blocks import block_size, evaluate_layout
from ..emit.torch import emit_block_layout, emit_score_holes
from ..emit.triton_backward import TILE_BACKWARD
from ..ir.graph import B, D, E, H, N, Nq
from ..plan.cost import BYTES_IO, Candidate, CostQuery, quadratic_memory
from ..plan.registry import Lowering, register
from . import tiled

NAME = "block_sparse"
# block-sparse tiles are fixed by the layout: only warps and pipelining depth are free
AUTOTUNE = (dict(num_warps=4, num_stages=3), dict(num_warps=4, num_stages=2),
            dict(num_warps=4, num_stages=4), dict(num_warps=8, num_stages=3))
BACKWARD_AUTOTUNE = (dict(num_warps=4, num_stages=3), dict(num_warps=8, num_stages=3))


def accepts(query: CostQuery) -> bool:
    return query.exact and query.op == "attend" and query.attrs.get("block_layout") is not None


def cost(query: CostQuery) -> Candidate:
    layout, sizes = query.attrs["block_layout"], query.sizes
    block = block_size(layout, sizes)
    band = query.mask.bounds_at(sizes)
    rho = sympy.Float(float(evaluate_layout(layout, sizes, sizes["Nq"], sizes["N"], band).float().mean()), 4)
    working, saved = quadratic_memory(N * rho, rows=block)  # one query block against its row's key blocks
    layout = 2 * (Nq / block + 1) * (N / block + 1)  # the bool layout and its tiles, kept per length
    return Candidate(NAME, 2 * B * H * Nq * N * (D + E) * rho, BYTES_IO + 4 * B * H * Nq * N * rho / block * (D + E),
                     f"block-sparse over {block}-token blocks: {float(rho):.2%} of the score blocks "
                     f"at the design sizes, layout computed once per length", memory=working + layout, saved=saved)


def emit_torch(w, graph, plan) -> None:
    common = emit_score_holes(w, graph)
    emit_block_layout(w, plan)
    with w.block("def forward_torch(self, q, k, v, ctx):"):
        w.line("block, layout = self.cached_layout(ctx, block_layout, q.device)")
        w.line(f"return rt.block_sparse_attention(q, k, v, ctx, layout=layout, block=block, {common})")


LOWERING = register(Lowering(
    NAME, accepts, cost, emit_torch,
    torch_backward="through the query blocks (the visited blocks' scores are kept for the backward)",
    emit_triton=tiled.emit_triton, triton_backward=TILE_BACKWARD, autotune_configs=AUTOTUNE,
    interpreter_config=dict(num_warps=4, num_stages=3), backward_autotune_configs=BACKWARD_AUTOTUNE,
    backward_interpreter_config=dict(num_warps=4, num_stages=3), block_sparse=True))
