"""`token_blocks`: the tiled kernel over a block layout built per call from the inputs the mask reads
(document ids, prefix lengths, any token metadata; attncc/analysis/token_layout.py).

Per call, small kernels classify every (query tile, key tile) as empty, partial or full, from the
block min / max of the token metadata (two launches, O(N) + O(tiles)), or, for masks whose inputs
the interval rules cannot bound, by evaluating the mask on each tile once (not once per head). The
attention kernel then walks only the partial tiles (mask evaluated) and the full tiles (no mask);
its backward walks the visited tiles. Torch: rt.tiled_attention, every key chunk (the mask decides).

Cost: the visited tiles' share at the design sizes, counted on design inputs (attncc.plan.cost:
int inputs hold runs of DESIGN_RUN equal values, i.e. packed documents of that many tokens).
"""
from __future__ import annotations

import sympy
import torch

from ..analysis.token_layout import EMPTY, tile_classes
from ..emit.torch import emit_tiled_torch
from ..emit.triton import emit_tiled_triton
from ..emit.triton_backward import TILE_BACKWARD
from ..emit.triton_layout import emit_token_tiles
from ..ir.graph import B, D, E, H, N, Nq
from ..lang.evaluate import Env, evaluate
from ..plan.cost import BLOCK, BYTES_IO, DESIGN_RUN, Candidate, CostQuery
from ..plan.registry import Lowering, register
from . import tiled

NAME = "token_blocks"


def accepts(query: CostQuery) -> bool:
    return query.exact and query.op == "attend" and query.attrs.get("token_layout") is not None


def design_inputs(signature, sizes: dict) -> dict:
    """The inputs at which the cost counts visited tiles: ints hold runs of DESIGN_RUN equal values
    along their last dimension (packed documents), bools are true, floats zero."""
    rsizes = {n: sizes[n] for n in ("N", "Nq", "H", "D", "E")}
    out = {}
    for name, info in signature.inputs.items():
        shape = tuple(int(evaluate(d, Env(sizes={**signature.sizes, **sizes}, rsizes=rsizes))) for d in info.dims)
        position = torch.arange(shape[-1] if shape else 1).expand(*shape) if shape else torch.zeros(())
        out[name] = (position // DESIGN_RUN).int() if info.dtype == "int" else \
            torch.ones(shape, dtype=torch.bool) if info.dtype == "bool" else torch.zeros(shape)
    return out


def visited_share(query: CostQuery) -> float:
    """The share of the (query tile, key tile) pairs the kernel visits at the design sizes and inputs."""
    sizes, signature = query.sizes, query.graph.signature
    classes = tile_classes(query.attrs["token_layout"], {**signature.sizes, **sizes}, design_inputs(signature, sizes),
                           sizes["Nq"], sizes["N"], BLOCK, BLOCK, 1)
    return float((classes != EMPTY).float().mean())


def cost(query: CostQuery) -> Candidate:
    rho = sympy.Float(visited_share(query), 4)
    pairs = Nq * N * rho
    tiles = sympy.ceiling(Nq / BLOCK) * sympy.ceiling(N / BLOCK)
    layout = 4 * B * (Nq + N) * 2 + 9 * B * tiles  # token metadata read, tile classes and lists written
    nbytes = BYTES_IO + 4 * B * H * (Nq / BLOCK) * (pairs / Nq) * (D + E) + layout
    return Candidate(NAME, 2 * B * H * pairs * (D + E), nbytes,
                     f"tiles of a layout built per call from the inputs: {float(rho):.2%} visited at the design "
                     f"sizes (int inputs in runs of {DESIGN_RUN}), full tiles without the mask",
                     programs=B * H * sympy.ceiling(Nq / BLOCK))


def emit_torch(w, graph, plan) -> None:
    emit_tiled_torch(w, graph, plan, lambda common: [
        "# the torch backend visits every key chunk the band allows (the mask decides); the Triton",
        "# kernels skip the tiles of the layout built per call",
        f"return rt.tiled_attention(q, k, v, ctx, key_range=key_range, {common})"])


def emit_triton(w, graph, plan) -> str:
    emit_token_tiles(w, plan.attrs["token_layout"])
    return emit_tiled_triton(w, graph, plan) + " over a layout built per call from the inputs"


LOWERING = register(Lowering(
    NAME, accepts, cost, emit_torch,
    torch_backward="through the query chunks (each chunk's scores are kept for the backward: O(Nq N) in all)",
    emit_triton=emit_triton, triton_backward=TILE_BACKWARD, autotune_configs=tiled.AUTOTUNE,
    interpreter_config=tiled.INTERPRETER, backward_autotune_configs=tiled.BACKWARD_AUTOTUNE,
    backward_interpreter_config=tiled.INTERPRETER, token_tiles=True))
