"""`tiled`: the quadratic skeleton over (query, key) tiles, valid for every exact attend node.

Torch: rt.tiled_attention over query chunks with the score and mask holes; Triton: the tiled kernel
(online softmax, or running sums of weights), its backward by FlashAttention-2 style recomputation.
A graph kernel's G = kernel(A) is formed densely first (runtime.graph_tables).
"""
from __future__ import annotations

import sympy

from ..emit.torch import emit_tiled_torch
from ..emit.triton import emit_tiled_triton
from ..emit.triton_backward import TILE_BACKWARD
from ..ir.graph import B, D, E, H, N, Nq
from ..plan.cost import BLOCK, BYTES_IO, GRAPH_PRODUCTS, Candidate, CostQuery, quadratic_memory, visited_pairs
from ..plan.registry import Lowering, register

NAME = "tiled"
# CUDA launch candidates, the default first (attncc/runtime/autotune.py): FlexAttention's and the Triton
# tutorial's H100 tiles (BLOCK_M 128, BLOCK_N 64/128, 8 warps, 3-4 stages) among them. The compile gate
# (docs/compile_gate.md) measured which ones spill or overflow (128 x 128 with 4 stages needed 176 KB on
# sm_80 at d = 64 with a bool input mask: dropped): 128 x 128 tiles, 4 stages and 4-warp
# 128-row tiles only for rows up to 128 bytes (bf16 d = 64; at d = 128 a spec whose feature maps
# hold its rows in fp32 needed 256-288 KB of shared memory with 4 stages); at d = 128 the default has
# 8 warps (4 spilled 352 B with a bool input mask); nothing but 32 x 32 tiles for fp32 inputs, whose
# dots run on FMA units, and 32 x 16 with 8 warps beyond 256-byte rows (fp32 at d = 128: 32 x 32 spilled
# 1.1 KB on sm_90; mla's 128-wide prepared rows at d = 64 spilled 440 B with 4 warps on 32 x 16);
# kernels whose feature maps form fp32 rows in the loop take 32 x 16 with 8 warps at d = 64 too (32 x 32
# left 4-8 B of spills on sm_80 with the fp32 dots in 16-column steps, emit/rows.py chunked_rows); kernels
# that gather a table per (i, j) pair (relative-position tables, input masks: emit/triton.py pair_lookup)
# keep to 64-row tiles and 128 x 64 with 4 stages: 128 x 128 needed 176-246 KB of shared memory (t5_bias,
# rpe_performer, bf16, d = 64), and 128 x 128, 64 x 128, 128 x 32 and (at d = 128) 128 x 64 with 3 stages
# spilled 0.2-23 KB (softmax_masked's bool mask tile) or 32 B-1.3 KB (t5_bias's bias table).
AUTOTUNE = (dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3, max_row_bytes=128, half_only=True),
            dict(BLOCK_M=64, BLOCK_N=64, num_warps=8, num_stages=3, max_row_bytes=256, half_only=True),
            dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, max_row_bytes=256, half_only=True, plain_pairs=True),
            dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=4, max_row_bytes=128, half_only=True),
            dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, max_row_bytes=128, half_only=True, plain_pairs=True),
            dict(BLOCK_M=128, BLOCK_N=32, num_warps=4, num_stages=4, max_row_bytes=128, half_only=True, plain_pairs=True),
            dict(BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=3, max_row_bytes=128, half_only=True, plain_pairs=True),
            dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=2, max_row_bytes=256, plain_rows=True),
            dict(BLOCK_M=32, BLOCK_N=16, num_warps=8, num_stages=2))
# Triton's interpreter: small tiles (it runs them as numpy arrays); warps and stages mean nothing there
INTERPRETER = dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=3)
# the backward kernels (dK, dV per key tile; dQ per query tile) share one candidate; dK/dV holds two
# [BLOCK_N, d] fp32 accumulators: 64 x 64 tiles with 4 warps spilled (24 B at d = 64 on sm_90, over
# 500 B at d = 128), 8 warps hold them at d = 64, 32-row query tiles at d = 128
BACKWARD_AUTOTUNE = (dict(BLOCK_M=64, BLOCK_N=64, num_warps=8, num_stages=3, max_row_bytes=128, half_only=True),
                     dict(BLOCK_M=32, BLOCK_N=64, num_warps=8, num_stages=3, max_row_bytes=256, half_only=True),
                     dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=3, max_row_bytes=128, half_only=True),
                     dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=3, max_row_bytes=256, half_only=True),
                     dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=2))


def accepts(query: CostQuery) -> bool:
    # VARS has no fixed W to tile; a per-dimension gate's weight is no dot of the rows it keeps
    return query.exact and query.op != "ista_attend" and not query.attrs.get("gate_rows")


def cost(query: CostQuery) -> Candidate:
    pairs = visited_pairs(query.mask)
    flops = 2 * B * H * pairs * (D + E)
    nbytes = BYTES_IO + 4 * B * H * (Nq / BLOCK) * (pairs / Nq) * (D + E)
    note = "quadratic tiles, online softmax / row sums, empty tiles skipped by mask structure"
    working, saved = quadratic_memory(pairs / Nq)
    if query.op == "graph_attend":  # the table lowerings first form G = kernel(A): dense N x N products
        flops += B * 2 * N ** 3 * (query.attrs["graph_steps"] or GRAPH_PRODUCTS)
        nbytes += 4 * B * N * N * 3
        working += 12 * B * N * N  # G in float64, then at the computation's precision
        note += "; G = kernel(A) formed densely first"
    return Candidate(NAME, flops, nbytes, note, programs=B * H * sympy.ceiling(Nq / BLOCK),
                     memory=working, saved=saved)


def emit_torch(w, graph, plan) -> None:
    emit_tiled_torch(w, graph, plan, lambda common: [
        f"return rt.tiled_attention(q, k, v, ctx, key_range=key_range, {common})"])


def emit_triton(w, graph, plan) -> str:
    return emit_tiled_triton(w, graph, plan)


LOWERING = register(Lowering(
    NAME, accepts, cost, emit_torch,
    torch_backward="through the query chunks (each chunk's scores are kept for the backward: O(Nq N) in all)",
    emit_triton=emit_triton, triton_backward=TILE_BACKWARD, autotune_configs=AUTOTUNE,
    interpreter_config=INTERPRETER, backward_autotune_configs=BACKWARD_AUTOTUNE,
    backward_interpreter_config=INTERPRETER, band_tiles=True))
