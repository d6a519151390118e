"""`rings`: a kernel of grid distance g(i, rho) by summed-area tables on the token grid: T boxes of
four reads per query (torch.cumsum builds the tables; Triton reads the boxes and contracts, fused)."""
from __future__ import annotations

import sympy

from ..analysis.grid import ring_extent, saturation_at, width_at
from ..emit.torch import emit_kernelized, emit_ring_g
from ..emit.triton_structured import emit_structured
from ..ir.graph import B, D, E, H, N, Nq
from ..plan.cost import Candidate, CostQuery, blocked_transform_memory
from ..plan.registry import Lowering, register

NAME = "rings"
TORCH_PART = "phi(K) o [V, 1] and its summed-area tables on the ring plane (torch.cumsum)"


def accepts(query: CostQuery) -> bool:
    return query.exact and query.op == "grid_attend" and bool(query.attrs["grid"].metric)


def cost(query: CostQuery) -> Candidate:
    form, sizes = query.attrs["grid"], query.sizes
    width = width_at(form, sizes)
    extent = ring_extent(sizes["Nq"], sizes["N"], width, form.metric)
    rings = min(extent, saturation_at(form, sizes)) if form.saturation is not None else extent
    return Candidate(NAME, 2 * B * H * Nq * (rings + 1) * 4 * D * (E + 1) + 4 * B * H * N * D * (E + 1),
                     4 * B * H * Nq * (rings + 1) * 4 * D * (E + 1),
                     f"summed-area tables on the {width}-column grid, {form.metric} rings: "
                     f"{rings} boxes of 4 reads per query at the design sizes",
                     **blocked_transform_memory(table_cells(width, form.metric) + (rings + 2) * Nq))


def table_cells(width: int, metric: str) -> sympy.Expr:
    """Cells of the summed-area table on the ring plane (attncc.rt.ring_geometry): the grid's
    rows by its columns for Chebyshev rings; for Manhattan the rotated plane, a square whose side
    grows with the rows (quadratic in N at a fixed width)."""
    if metric == "chebyshev":
        return (N / width + 2) * (width + 1)
    return (N / width + width + 1) ** 2


def emit_torch(w, graph, plan) -> None:
    metric = plan.attrs["grid"].metric

    def forward(w, common: str) -> None:
        w.line(f"return rt.ring_attention(pq, pk, v, ring_g(ctx).to(q.device), grid_width(ctx), {metric!r}, {common})")
    emit_kernelized(w, graph, plan, lambda w, exprs: emit_ring_g(w, plan, exprs), forward)


def emit_triton(w, graph, plan) -> str:
    metric = plan.attrs["grid"].metric

    def transform(w) -> None:
        w.line("width = host.grid_width(ctx)")
        w.line(f"geo = rt.ring_geometry(Nq, N, width, {metric!r}, q.device)")
        w.line("g = host.ring_g(ctx).to(device=q.device, dtype=torch.float32).expand(B, H, Nq, -1)")
        w.line("cells = geo.cells")
        with w.block("def transform(u):"):
            w.line('"""[.., E + 1, N] -> summed-area tables [.., cells, E + 1]: a box corner\'s columns lie together."""')
            w.line("return rt.summed_area_table(u.transpose(-1, -2), geo, dim=-2)")
    return emit_structured(w, graph, plan, TORCH_PART, transform, ring_metric=metric)


LOWERING = register(Lowering(
    NAME, accepts, cost, emit_torch,
    torch_backward="through the summed-area tables and their box reads",
    emit_triton=emit_triton))
