"""`decode`: split-K (flash-decoding) softmax attention for few queries against a long key cache.

With Nq small, the tiled kernel runs B*H*cdiv(Nq, 64) programs, each walking every key: a handful
of programs on a GPU with 132 multiprocessors. Here query tiles are 16 rows and the keys each one
sees (its band) are cut into splits, as many as fill the GPU twice over (rt.decode_splits); each
split stores its softmax output and log-sum-exp, and a second launch merges them (rt/decode.py has
the algebra). The cost charges the 16-row tiles' K/V re-reads and the partials' traffic, and the
occupancy its programs reach (attncc.plan.cost.Candidate.programs), so it wins at small Nq and long
N and loses to `tiled` otherwise.

Torch: rt.decode_attention, the same splits and merge. Backward: the tiled FlashAttention-2
kernels (TILE_BACKWARD), which read the merged log-sum-exp as their row statistic.
"""
from __future__ import annotations

import sympy

from ..emit.torch import emit_tiled_torch
from ..emit.triton_backward import TILE_BACKWARD
from ..emit.triton_decode import emit_decode_triton
from ..ir.graph import B, D, E, H, Nq
from ..lang.normalizers import NORMALIZERS
from ..plan.cost import (BLOCK, BYTES_IO, DECODE_BLOCK_M, MACHINE, SPLIT_MIN_TILES, SPLIT_WAVES, Candidate,
                         CostQuery, visited_pairs)
from ..plan.registry import Lowering, register
from . import tiled

NAME = "decode"
# CUDA launch candidates of the split kernel (its query tile is fixed at DECODE_BLOCK_M rows), the default first.
# fp32 inputs (FMA dots) take 64-key tiles with 2 stages, or 16: at d = 128 the half-precision tiles spilled
# 208 B (64 keys, 3 stages, the old fp32 default, sm_80) to 37 KB (128 keys), and 32 keys 0.8-2.2 KB on sm_90
# (docs/compile_gate.md); the two fp32 tiles compile without spills in half precision too.
AUTOTUNE = (dict(BLOCK_N=64, num_warps=4, num_stages=3, half_only=True),
            dict(BLOCK_N=128, num_warps=4, num_stages=2, half_only=True),
            dict(BLOCK_N=32, num_warps=2, num_stages=4, half_only=True),
            dict(BLOCK_N=64, num_warps=2, num_stages=3, half_only=True),
            dict(BLOCK_N=64, num_warps=4, num_stages=2),
            dict(BLOCK_N=16, num_warps=4, num_stages=2))
INTERPRETER = dict(BLOCK_N=16, num_warps=4, num_stages=3)


def accepts(query: CostQuery) -> bool:
    """Softmax attend nodes (any score, bias and mask the tiled kernel computes, a sink merged as one
    more split), without the eps key of exp weights under rows (passes/stable_exp.py), which its merge
    does not add."""
    return query.exact and query.op == "attend" and NORMALIZERS[query.attrs["normalize"]].online_softmax \
        and not query.attrs.get("eps")


def splits(programs, keys):
    """rt.decode_splits in sympy: splits of at least SPLIT_MIN_TILES tiles, SPLIT_WAVES programs per multiprocessor."""
    wanted = sympy.ceiling(SPLIT_WAVES * MACHINE["multiprocessors"] / programs)
    return sympy.Max(1, sympy.Min(sympy.ceiling(keys / (SPLIT_MIN_TILES * BLOCK)), wanted))


def cost(query: CostQuery) -> Candidate:
    keys = visited_pairs(query.mask) / Nq  # keys one query row's tiles walk
    tiles = B * H * sympy.ceiling(Nq / DECODE_BLOCK_M)
    count = splits(tiles, keys)
    rows = tiles * DECODE_BLOCK_M  # query rows computed, padding included
    flops = 2 * rows * keys * (D + E)
    partials = 2 * 4 * rows * count * (E + 1)  # each split's output and log-sum-exp, written then merged
    rereads = tiles - B * H  # K and V rows read again by every query tile after the first (BYTES_IO reads them once)
    nbytes = BYTES_IO + 4 * rereads * keys * (D + E) + partials
    return Candidate(NAME, flops, nbytes, f"split-K decoding: {DECODE_BLOCK_M}-row query tiles, the keys cut into "
                     "splits that fill the GPU, merged by log-sum-exp", programs=tiles * count)


def emit_torch(w, graph, plan) -> None:
    emit_tiled_torch(w, graph, plan, lambda common: [
        f"return rt.decode_attention(q, k, v, ctx, key_range=key_range, {common})"])


LOWERING = register(Lowering(
    NAME, accepts, cost, emit_torch,
    torch_backward="through the splits and their merge (each query chunk's scores are kept for the backward)",
    emit_triton=emit_decode_triton, triton_backward=TILE_BACKWARD, autotune_configs=AUTOTUNE,
    interpreter_config=INTERPRETER, backward_autotune_configs=tiled.BACKWARD_AUTOTUNE,
    backward_interpreter_config=tiled.INTERPRETER, band_tiles=True))
