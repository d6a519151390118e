"""Emit the pieces of gated linear attention (lowering `linear_gated`): the torch gate function and call."""
from __future__ import annotations

from ..ir.graph import Graph
from ..plan.select import Plan
from .exprs import TorchExpr, brief
from .let import let_expr
from .torch import emit_kernelized
from .writer import CodeWriter


def emit_gate(w: CodeWriter, exprs: list) -> None:
    """gate(ctx, n): G(t) of M = A exp(G(i) - G(j)) at the tokens t = 0 .. n-1, as [., ., n, 1]."""
    with w.block("def gate(ctx, n):"):
        w.line(f'"""G(i) of the gate exp(G(i) - G(j)) at tokens 0 .. n-1: {brief(exprs[3])}"""')
        w.line("i = torch.arange(n, dtype=torch.int32).view(1, 1, -1, 1)")
        w.line("j = torch.zeros((1, 1, 1, 1), dtype=torch.int32)")
        w.line("h = torch.arange(ctx.H, dtype=torch.int32).view(1, ctx.H, 1, 1)")
        w.line(f"return rt.as_4d({let_expr(w, TorchExpr(), exprs[3])}, ctx.dtype)")
    w.line()


def emit_gated_torch(w: CodeWriter, graph: Graph, plan: Plan) -> None:
    """forward_torch of `linear_gated`: rt.gated_linear_attention with the gate at queries and keys."""
    def call(w: CodeWriter, common: str) -> None:
        w.line("gates = (gate(ctx, ctx.Nq).to(q.device), gate(ctx, ctx.N).to(q.device))")
        w.line(f"return rt.gated_linear_attention(pq, pk, v, modulation=modulation(ctx).to(q.device), gates=gates, "
               f"{common})")
    emit_kernelized(w, graph, plan, emit_gate, call)
