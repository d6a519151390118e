"""The emitters' top-level dispatch: the chosen lowering (attncc.plan.registry) writes each backend.

emit_torch: the lowering's torch forward, then the pooling pre-op; emit_triton: the lowering's Triton
writer (its forward kernels and `triton_forward`), then `with_backward` (the backward kernels or
recomputation, and `forward_triton`); or the torch forward where the lowering declares a fallback.
"""
from __future__ import annotations

from ..ir.graph import Graph, attention_node
from ..plan.select import Plan
from .mixed import emit_pool
from .triton_backward import backward_line, emit_backward
from .writer import CodeWriter


def emit_torch(graph: Graph, plan: Plan) -> str:
    """The torch backend: the chosen lowering writes its forward, then the pooling pre-op if any."""
    w = CodeWriter()
    plan.entry.emit_torch(w, graph, plan)
    if attention_node(graph).attr("pool") is not None:
        emit_pool(w, graph)
    return w.text()


def emit_torch_fallback(w: CodeWriter, why: str) -> None:
    """`forward_triton` of a lowering with no Triton kernel: the torch forward, on the inputs' device."""
    w.line(f"# No Triton kernel for this lowering: {why} runs through torch")
    w.line("# (the same torch ops, on the GPU when the inputs are there), exactly as in the torch backend.")
    with w.block("def forward_triton(self, q, k, v, ctx, host):"):
        w.line("return host.forward_torch(self, q, k, v, ctx)")


def with_backward(w: CodeWriter, graph: Graph, plan: Plan, description: str) -> str:
    """After the forward's kernels: the backward kernels (or recomputation) and `forward_triton`."""
    w.line()
    w.line()
    backward = emit_backward(w, graph, plan)
    return f"{description}; backward: {backward}"


def emit_triton(graph: Graph, plan: Plan) -> tuple[str, str]:
    """(kernels and launchers, description of the Triton lowering): the chosen lowering's Triton
    writer, or its declared torch fallback."""
    w = CodeWriter()
    why = plan.entry.torch_fallback_reason(graph)
    if why is not None:
        emit_torch_fallback(w, why)
        return w.text(), f"{plan.lowering} via torch ({why}; no Triton kernel); backward: {backward_line(graph, plan)}"
    description = with_backward(w, graph, plan, plan.entry.emit_triton(w, graph, plan))
    return w.text(), description
