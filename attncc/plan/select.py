"""Choose a lowering for each attention node by a sympy cost model.

Every registered lowering (attncc.plan.registry, filled by attncc/lowerings/) that accepts the
output's attend node contributes a candidate whose flops and bytes are sympy expressions of B, H,
Nq, N, D, E (m = feature dimension = D for the maps of this version). The candidate with the least
roofline time (the slower of flops / rate and bytes / bandwidth on MACHINE) at the design sizes
wins; a spec may force one with `lowering=`. The quadratic `tiled` lowering is valid for every exact
node.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from ..analysis.structure import Structure
from ..ir.graph import B, D, E, Graph, H, N, Nq
from ..lang.features import tensor_power_width
from ..lang.source import AttnccError
from . import registry
from .cost import DESIGN_SIZES, MACHINE, Candidate, CostQuery

__all__ = ["DESIGN_SIZES", "MACHINE", "Candidate", "Plan", "select", "format_plan", "with_pooling"]


@dataclass
class Plan:
    lowering: str
    node_op: str
    mask: Structure
    candidates: list[Candidate]
    sizes: dict
    attrs: dict = field(default_factory=dict)

    @property
    def chosen(self) -> Candidate:
        return next(c for c in self.candidates if c.name == self.lowering)

    @property
    def entry(self) -> registry.Lowering:
        """The registry's record of the chosen lowering."""
        return registry.get(self.lowering)


def with_pooling(c: Candidate, pool) -> Candidate:
    """ContextPool before any lowering: (2R + 1)^(1 or 2) offsets per key, each a weight and a row of
    k and/or v; the head is 2 D per key."""
    offsets = (2 * pool.radius + 1) ** (2 if pool.width else 1)
    cols = sum({"k": D, "v": E}[t] for t in pool.targets)
    return Candidate(c.name, c.flops + B * H * N * (4 * D + offsets * 2 * (cols + 1)),
                     c.bytes + 4 * B * H * N * 2 * cols, c.note + f"; k/v pooled first ({offsets} offsets a key)",
                     c.programs)


def with_feature_rows(c: Candidate, terms) -> Candidate:
    """Tensor-power features (passes/polynomial.py) computed before any lowering: every lowering reads
    rows of width m = tensor_power_width(D) in place of D, and the features cost m flops a row."""
    m = tensor_power_width(D, [n for n, _ in terms])
    return Candidate(c.name, sympy.sympify(c.flops).subs(D, m) + B * H * (Nq + N) * m,
                     sympy.sympify(c.bytes).subs(D, m), c.note + f"; rows of {m} tensor-power features", c.programs)


def candidates(query: CostQuery, force: str | None = None) -> list[Candidate]:
    """The candidates of every registered lowering that accepts the node (forced-only ones when forced)."""
    return [lowering.cost(query) for lowering in registry.all()
            if (not lowering.forced_only or lowering.name == force) and lowering.accepts(query)]


def select(graph: Graph, sizes: dict | None = None, force: str | None = None) -> Plan:
    (out,) = graph.operands(graph.output)
    node = graph.node(out)
    attrs = dict(node.attrs)
    mask = attrs["mask_structure"]
    design = {**DESIGN_SIZES, **(sizes or {})}
    query = CostQuery(graph, out, node.op, attrs, mask, design, attrs.get("approx"))
    cands = candidates(query, force)
    if attrs.get("pool") is not None:
        cands = [with_pooling(c, attrs["pool"]) for c in cands]
    if attrs.get("tensor_powers") is not None:
        cands = [with_feature_rows(c, attrs["tensor_powers"]) for c in cands]
    if force is not None:
        names = [c.name for c in cands]
        if force not in names:
            raise AttnccError(f"lowering `{force}` does not apply to this spec; it can use {', '.join(names)}")
        chosen = force
    else:
        chosen = min(cands, key=lambda c: (c.seconds(design), c.at(design))).name
    return Plan(chosen, node.op, mask, cands, design, attrs)


def format_plan(plan: Plan, log: list[tuple[str, str]]) -> str:
    sizes = ", ".join(f"{k}={v}" for k, v in plan.sizes.items())
    lines = ["analysis:"]
    lines += [f"  [{name}] {msg}" for name, msg in log]
    lines.append(f"candidates at {sizes} (roofline: {MACHINE['flops_per_s']:.0e} flop/s, "
                 f"{MACHINE['bytes_per_s']:.0e} B/s):")
    for c in plan.candidates:
        flops, nbytes = c.at(plan.sizes)
        mark = "*" if c.name == plan.lowering else " "
        lines.append(f" {mark} {c.name:<15} {c.seconds(plan.sizes) * 1e3:9.4f} ms  flops {flops:10.3e}  "
                     f"bytes {nbytes:10.3e}  flops = {c.flops}")
        lines.append(f"   {'':<15} {c.note}")
    lines.append(f"chosen: {plan.lowering}")
    return "\n".join(lines)
