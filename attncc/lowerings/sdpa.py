"""`sdpa`: plain softmax(q k^T * scale) v with a full or causal mask, and nothing else (no tables,
inputs, features or bias): torch's fused scaled_dot_product_attention (FlashAttention on GPU).

Triton has no SDPA: the Triton backend of an `sdpa` plan runs the tiled kernel (and says so).
The cost model counts the tiled flops with a fused kernel's bytes (q, k, v read once), so `sdpa`
wins wherever it applies; `lowering="tiled"` still forces the tiled skeleton.
"""
from __future__ import annotations

from ..lang.standard import DEFAULT_LOGITS
from ..emit.torch import emit_tiled_torch
from ..emit.triton import emit_tiled_triton
from ..emit.triton_backward import TILE_BACKWARD
from ..ir.graph import B, D, E, H, Nq, expr_of
from ..lang.normalizers import NORMALIZERS
from ..plan.cost import BYTES_IO, BYTES_OUT, Candidate, CostQuery, visited_pairs
from ..plan.registry import Lowering, register
from . import tiled

NAME = "sdpa"


def accepts(query: CostQuery) -> bool:
    if not query.exact or query.op != "attend" or not NORMALIZERS[query.attrs["normalize"]].online_softmax:
        return False
    if query.mask.kind not in ("full", "causal") or query.attrs.get("eps"):  # eps: exp weights under rows
        return False
    if query.attrs.get("sink") is not None:  # SDPA's denominator has no extra logit
        return False
    scores = query.graph.operands(query.node_id)[0]
    return expr_of(query.graph, scores) == DEFAULT_LOGITS


def cost(query: CostQuery) -> Candidate:
    held = BYTES_OUT + 4 * B * H * Nq  # the output and its rows' log-sum-exp (flash kernels, CPU too)
    return Candidate(NAME, 2 * B * H * visited_pairs(query.mask) * (D + E), BYTES_IO,
                     "torch's fused SDPA kernels (FlashAttention on GPU): plain softmax, full or causal mask",
                     memory=held, saved=held)


def emit_torch(w, graph, plan) -> None:
    emit_tiled_torch(w, graph, plan, lambda common: [
        "# plain softmax(q k^T * scale) with a full or causal mask: torch's fused SDPA kernels (scale of the",
        "# spec's D: prepared rows may be wider)",
        f"return rt.sdpa_attention(q, k, v, causal={plan.mask.kind == 'causal'}, scale=ctx.scale)"])


def emit_triton(w, graph, plan) -> str:
    return emit_tiled_triton(w, graph, plan) + f" (Triton has no SDPA: the {NAME} plan runs the tiled kernel)"


LOWERING = register(Lowering(
    NAME, accepts, cost, emit_torch,
    torch_backward="through SDPA (its own fused backward)",
    emit_triton=emit_triton, triton_backward=TILE_BACKWARD, triton_runs=tiled.NAME, band_tiles=True))
