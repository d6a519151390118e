"""The Triton backend's forward and backward kernels as torch custom ops.

`attncc::triton_attention` runs a generated module's forward kernels and `attncc::triton_attention_backward`
its backward kernels; register_autograd ties them together and register_fake gives their shapes, so
torch.compile sees one opaque op (no graph break) and autograd its generated backward. Both ops are
generic: the generated module is named by its import name, and what the kernels read from the call's
Context travels as tensors (tables, block-sparse tiles), ints (run-time and declared sizes) and one
string of names, rebuilt into a Context inside the op. A softmax sink (`softmax(sink = ...)`) enters
as its logits per row, evaluated in torch by the module (so they carry the gradient to the tables
they read); the op returns their gradient (`sink_gradient`), the kernels' row logsumexp includes them.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from ..analysis.blocks import TileLists
from .cache import import_sibling
from .compiled import Context


@dataclass(frozen=True)
class CallTiles:
    """A block-sparse module's tiles for one call, carried into the op as tensors: launchers ask
    their `self` for its cached tiles, and inside the op this stands for the module."""

    tiles: TileLists

    def cached_tiles(self, ctx, block_layout, device, exact=False, max_tile=None):
        return self.tiles


def attention(q, k, v, ctx: Context, host, tiles=None, sink: Tensor | None = None) -> Tensor:
    """out of the generated module `host` through the custom op (gradients by its backward kernels);
    sink: the sink logits of every row, float32 [B, H, Nq], if the softmax has one."""
    names = [f"p:{n}" for n in ctx.params] + [f"i:{n}" for n in ctx.inputs] + [f"s:{n}" for n in ctx.sizes]
    # tables stay contiguous: their gradients are allocated contiguous and indexed with the tables' strides
    tables = [t.contiguous() for t in (*ctx.params.values(), *ctx.inputs.values())]
    tile, exact, aux = (0, 0, []) if tiles is None else (tiles.tile, int(tiles.exact), tiles.tensors())
    ints = [ctx.N, ctx.Nq, ctx.H, ctx.D, ctx.E, ctx.Hkv, tile, exact, *ctx.sizes.values()]
    out, _ = torch.ops.attncc.triton_attention(host.__name__, q, k, v, tables, aux, ints, ";".join(names), sink)
    return out


def _unpack(host: str, q: Tensor, tables, aux, ints, names: str):
    """(main module, kernels module, Context, tiles or None) of one op call."""
    main = sys.modules[host]
    kinds = [n.split(":", 1) for n in names.split(";") if n]
    params = {n: t for (kind, n), t in zip(kinds, tables) if kind == "p"}
    inputs = {n: t for (kind, n), t in zip(kinds, tables) if kind == "i"}
    sizes = {n: int(x) for (_, n), x in zip([kn for kn in kinds if kn[0] == "s"], ints[8:])}
    N, Nq, H, D, E, Hkv, tile, exact = (int(x) for x in ints[:8])
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    ctx = Context(sizes, params, inputs, N, Nq, H, D, E, dtype=dtype, B=q.shape[0], Hkv=Hkv)
    tiles = CallTiles(TileLists(tile, *aux, exact=bool(exact))) if aux else None
    return main, import_sibling(main.__file__, "_triton"), ctx, tiles


def _table_names(names: str) -> list[str]:
    return [n.split(":", 1)[1] for n in names.split(";") if n and n[0] in "pi"]


@torch.library.custom_op("attncc::triton_attention", mutates_args=())
def _forward(host: str, q: Tensor, k: Tensor, v: Tensor, tables: list[Tensor], aux: list[Tensor],
             ints: list[int], names: str, sink: Tensor | None) -> tuple[Tensor, Tensor]:
    main, kernels, ctx, tiles = _unpack(host, q, tables, aux, ints, names)
    if sink is None:
        return kernels.op_forward(tiles, q, k, v, ctx, main)
    return kernels.op_forward(tiles, q, k, v, ctx, main, sink)


@_forward.register_fake
def _(host, q, k, v, tables, aux, ints, names, sink):
    return q.new_empty(*q.shape[:3], v.shape[-1]), q.new_empty(*q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("attncc::triton_attention_backward", mutates_args=())
def _backward(host: str, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor,
              tables: list[Tensor], aux: list[Tensor], ints: list[int], names: str) -> list[Tensor]:
    """[dq, dk, dv, one gradient per table]: empty for the tables the kernels do not differentiate."""
    main, kernels, ctx, tiles = _unpack(host, q, tables, aux, ints, names)
    dq, dk, dv, grads = kernels.op_backward(tiles, q, k, v, out, lse, dout, ctx, main)
    return [dq, dk, dv] + [grads[n].to(t.dtype) if n in grads else t.new_empty(0)
                           for n, t in zip(_table_names(names), tables)]


@_backward.register_fake
def _(host, q, k, v, out, lse, dout, tables, aux, ints, names):
    differentiated = import_sibling(sys.modules[host].__file__, "_triton").GRAD_TABLES
    return [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)] + \
        [t.new_empty(t.shape) if n in differentiated else t.new_empty(0) for n, t in zip(_table_names(names), tables)]


def sink_gradient(out: Tensor, lse: Tensor, dout: Tensor, sink: Tensor) -> Tensor:
    """d loss / d sink_i = -exp(sink_i - lse_i) (dO_i . O_i): out_i = sum_j e^(s_ij - lse_i) v_j with
    lse_i = log(sum_j e^s_ij + e^sink_i), so d out_i / d sink_i = -e^(sink_i - lse_i) out_i (a row with
    lse = -inf, nothing in its denominator, has none)."""
    delta = (dout.float() * out.float()).sum(-1)
    mass = torch.where(lse == float("-inf"), 0.0, torch.exp(sink - lse))
    return -mass * delta


def _setup_context(ctx, inputs, output):  # sink has no default: the dispatcher would drop a None equal to it
    host, q, k, v, tables, aux, ints, names, sink = inputs
    ctx.call = (host, ints, names, len(tables), sink is not None)
    ctx.save_for_backward(q, k, v, *output, *tables, *aux, *([sink] if sink is not None else []))


def _autograd_backward(ctx, dout, dlse):
    host, ints, names, count, has_sink = ctx.call
    q, k, v, out, lse, *rest = ctx.saved_tensors
    sink = rest.pop() if has_sink else None
    tables, aux = rest[:count], rest[count:]
    dq, dk, dv, *grads = _backward(host, q, k, v, out, lse, dout, tables, aux, ints, names)
    grads = [g if g.shape == t.shape else None for g, t in zip(grads, tables)]
    dsink = sink_gradient(out, lse, dout, sink) if sink is not None else None
    return None, dq, dk, dv, grads, [None] * len(aux), None, None, dsink


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def pow2_shift(n: int) -> int:
    """log2(n) for a power of two n >= 1, else -1: the shift a kernel uses to divide by the size n."""
    return n.bit_length() - 1 if n >= 1 and n & (n - 1) == 0 else -1


def per_query_head(x: Tensor, heads: int) -> Tensor:
    """The buffer a backward kernel writes the gradient of k or v (x, with Hkv heads) into, one slice per
    query head: x's own shape without grouping (heads == Hkv), else float32 [B, heads, N, dim], summed
    over each group of heads by group_sum."""
    if x.shape[1] == heads:
        return torch.empty_like(x)
    return torch.empty(x.shape[0], heads, *x.shape[2:], device=x.device, dtype=torch.float32)


def group_sum(grad: Tensor, like: Tensor) -> Tensor:
    """The gradient of k or v (`like`, Hkv heads) from per-query-head gradients (per_query_head): query
    head h reads key/value head h // G, so the G adjacent heads of a group add up."""
    if grad.shape == like.shape:
        return grad
    B, H, *rest = grad.shape
    return grad.view(B, like.shape[1], H // like.shape[1], *rest).sum(2).to(like.dtype)
