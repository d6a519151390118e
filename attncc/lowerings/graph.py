"""`graph`: a graph kernel G = kernel(A) applied through products with the adjacency A (CSR when
sparse), never formed; the runtime leaves G unformed for it (forms_graph_tables=False)."""
from __future__ import annotations

from ..emit.exprs import key
from ..emit.torch import emit_kernelized
from ..emit.triton_structured import emit_structured
from ..ir.graph import B, D, E, H, N, Nq
from ..plan.cost import BYTES_IO, GRAPH_DEGREE, GRAPH_PRODUCTS, Candidate, CostQuery, blocked_transform_memory
from ..plan.registry import Lowering, register

NAME = "graph"
TORCH_PART = "phi(K) o [V, 1] and the graph kernel's products with the adjacency (torch, CSR when sparse)"


def accepts(query: CostQuery) -> bool:
    return query.exact and query.op == "graph_attend"


def cost(query: CostQuery) -> Candidate:
    nnz, products = N * GRAPH_DEGREE, query.attrs["graph_steps"] or GRAPH_PRODUCTS
    return Candidate(NAME, B * H * D * (E + 1) * products * 2 * nnz + 2 * B * H * Nq * D * E,
                     BYTES_IO + products * (8 * nnz + 8 * B * H * N * D * (E + 1)),
                     f"{products} products with the adjacency ({GRAPH_DEGREE} edges per token assumed; "
                     f"CSR when sparse), G = kernel(A) never formed",
                     **blocked_transform_memory(N * 3))  # a product's operand, result and running sum


def emit_torch(w, graph, plan) -> None:
    g = plan.attrs["graph"]

    def forward(w, common: str) -> None:
        w.line(f"# G = {g.kind}({g.adjacency}) applied through products with {g.adjacency} (torch.sparse when sparse)")
        w.line(f"return rt.graph_attention(pq, pk, v, ctx.inputs[{key(g.adjacency)}], {key(g.kind)}, "
               f"{g.options!r}, {common})")
    emit_kernelized(w, graph, plan, None, forward)


def emit_triton(w, graph, plan) -> str:
    g = plan.attrs["graph"]

    def transform(w) -> None:
        w.line(f"transform, cells = rt.graph_transform(ctx.inputs[{key(g.adjacency)}], {key(g.kind)}, {g.options!r}, "
               "Nq, N, rt.compute_dtype(v))")
    return emit_structured(w, graph, plan, TORCH_PART, transform)


LOWERING = register(Lowering(
    NAME, accepts, cost, emit_torch,
    torch_backward="through the products with the adjacency (dense under torch.compile)",
    emit_triton=emit_triton, forms_graph_tables=False))
