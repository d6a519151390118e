"""Choose a lowering for each attention node by a sympy cost model.

Every registered lowering (attncc.plan.registry, filled by attncc/lowerings/) that accepts the
output's attend node contributes a candidate whose flops and bytes are sympy expressions of B, H,
Nq, N, D, E (m = feature dimension = D for the maps of this version). Among the candidates whose
memory (working and kept for the backward) fits the budget, the one with the least roofline time
(the slower of flops / rate and bytes / bandwidth on MACHINE) wins at the design sizes; a spec may
force one with `lowering=`. The quadratic `tiled` lowering is valid for every exact node.

The plan follows the call: the same ranking at every power of two of the key length N (queries
scaled with it, at the design ratio Nq / N) gives the dispatch table, runs of lengths sharing a
lowering; a compiled module runs each call on its length's entry (crossover lengths fixed here,
no analysis at call time).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from rich.filesize import decimal

import sympy

from ..analysis.structure import Structure
from ..ir.graph import B, D, E, Graph, H, N, Nq
from ..lang.features import tensor_power_width
from ..lang.rows import width, width_sympy
from ..lang.source import AttnccError
from . import registry
from .cost import DESIGN_SIZES, MACHINE, Candidate, CostQuery, evaluate

__all__ = ["DESIGN_SIZES", "MACHINE", "Candidate", "Plan", "select", "format_plan", "with_pooling", "dispatch_table"]

# Key lengths the dispatch table ranks the candidates at: powers of two up to 2^30 (sizes are
# below 2^31), and the design length itself (so a call at the design sizes runs the plan's choice).
# Below 2^MIN_DISPATCH_POWER tokens a call takes a few launches whatever runs it and the roofline's
# ranking means nothing: the first entry covers them with its choice at that length.
MIN_DISPATCH_POWER, MAX_DISPATCH_POWER = 10, 30


@dataclass
class Plan:
    """The lowering chosen at the design sizes, the candidates ranked there, and the dispatch
    table: ((lowering, up to N), ...), each entry for the key lengths up to its bound (None: any
    longer), in increasing order; one entry when a lowering is forced or only one applies."""
    lowering: str
    node_op: str
    mask: Structure
    candidates: list[Candidate]
    sizes: dict
    attrs: dict = field(default_factory=dict)
    dispatch: tuple = ()
    budget: float = MACHINE["memory_bytes"]

    @property
    def lowerings(self) -> tuple[str, ...]:
        """Every lowering the dispatch table runs: the design sizes' choice first."""
        return tuple(dict.fromkeys([self.lowering, *(name for name, _ in self.dispatch)]))

    def candidate(self, name: str) -> Candidate:
        return next(c for c in self.candidates if c.name == name)

    @property
    def chosen(self) -> Candidate:
        return self.candidate(self.lowering)

    @property
    def entry(self) -> registry.Lowering:
        """The registry's record of the chosen lowering."""
        return registry.get(self.lowering)


def with_pooling(c: Candidate, pool) -> Candidate:
    """ContextPool before any lowering: (2R + 1)^(1 or 2) offsets per key, each a weight and a row of
    k and/or v; the head is 2 D per key. The pooled k and/or v are held besides the inputs."""
    offsets = (2 * pool.radius + 1) ** (2 if pool.width else 1)
    cols = sum({"k": D, "v": E}[t] for t in pool.targets)
    pooled = 4 * B * H * N * cols
    return replace(c, flops=c.flops + B * H * N * (4 * D + offsets * 2 * (cols + 1)), bytes=c.bytes + 2 * pooled,
                   note=c.note + f"; k/v pooled first ({offsets} offsets a key)",
                   memory=None if c.memory is None else c.memory + pooled,
                   saved=None if c.saved is None else c.saved + pooled)


def with_feature_rows(c: Candidate, terms) -> Candidate:
    """Tensor-power features (passes/polynomial.py) computed before any lowering: every lowering reads
    rows of width m = tensor_power_width(D) in place of D, and the features cost m flops a row."""
    m = tensor_power_width(D, [n for n, _ in terms])
    wide = lambda e: None if e is None else sympy.sympify(e).subs(D, m)  # noqa: E731
    return replace(c, flops=wide(c.flops) + B * H * (Nq + N) * m, bytes=wide(c.bytes),
                   note=c.note + f"; rows of {m} tensor-power features", memory=wide(c.memory), saved=wide(c.saved))


def with_prepared_rows(c: Candidate, rows, inputs: dict) -> Candidate:
    """Prepared rows q', k' (passes/rows.py) computed before any lowering: every lowering reads rows of
    width W' in place of D, and preparing them costs about W' flops a row per operation."""
    dims = {name: info.dims for name, info in inputs.items()}
    w = width_sympy(width(rows.q, dims))  # sizes as positive integer symbols; D is the IR's D
    ops = sum(1 for side in (rows.q, rows.k) for e in side.walk() if e.type == "vec")
    wide = lambda e: None if e is None else sympy.sympify(e).subs(D, w)  # noqa: E731
    return replace(c, flops=wide(c.flops) + B * H * (Nq + N) * w * ops, bytes=wide(c.bytes),
                   note=c.note + f"; prepared rows of width {w}", memory=wide(c.memory), saved=wide(c.saved))


def candidates(query: CostQuery, force: str | None = None) -> list[Candidate]:
    """The candidates of every registered lowering that accepts the node (forced-only ones when forced)."""
    return [lowering.cost(query) for lowering in registry.all()
            if (not lowering.forced_only or lowering.name == force) and lowering.accepts(query)]


def cheapest(cands: list[Candidate], sizes: dict, budget: float) -> Candidate:
    """The least roofline time among the candidates that fit the budget; if none does, the one
    holding the least memory (a call that needs more fails with a located error, see
    attncc.runtime.memory)."""
    fitting = [c for c in cands if c.fits(sizes, budget)]
    if not fitting:
        return min(cands, key=lambda c: c.held_at(sizes))
    return min(fitting, key=lambda c: (c.seconds(sizes), c.at(sizes)))


def dispatch_lengths(design: dict) -> list[int]:
    return sorted({2 ** p for p in range(MIN_DISPATCH_POWER, MAX_DISPATCH_POWER + 1)} | {int(design["N"])})


def dispatch_table(cands: list[Candidate], design: dict, budget: float) -> tuple:
    """((lowering, up to N), ...): the cheapest fitting candidate at each dispatch length, queries
    at the design ratio Nq / N; a run of lengths with one choice is one entry, the last unbounded."""
    ratio = design["Nq"] / design["N"]
    entries: list[list] = []
    for n in dispatch_lengths(design):
        name = cheapest(cands, {**design, "N": n, "Nq": max(1, round(n * ratio))}, budget).name
        if entries and entries[-1][0] == name:
            entries[-1][1] = n
        else:
            entries.append([name, n])
    entries[-1][1] = None
    return tuple((name, upto) for name, upto in entries)


def select(graph: Graph, sizes: dict | None = None, force: str | None = None, budget: float | None = None) -> Plan:
    (out,) = graph.operands(graph.output)
    node = graph.node(out)
    attrs = dict(node.attrs)
    mask = attrs["mask_structure"]
    design = {**DESIGN_SIZES, **(sizes or {})}
    budget = MACHINE["memory_bytes"] if budget is None else budget
    query = CostQuery(graph, out, node.op, attrs, mask, design, attrs.get("approx"))
    cands = candidates(query, force)
    if attrs.get("pool") is not None:
        cands = [with_pooling(c, attrs["pool"]) for c in cands]
    if attrs.get("tensor_powers") is not None:
        cands = [with_feature_rows(c, attrs["tensor_powers"]) for c in cands]
    if attrs.get("prepared_rows") is not None:  # after the tensor powers: their width is of W'
        cands = [with_prepared_rows(c, attrs["prepared_rows"], graph.signature.inputs) for c in cands]
    if force is not None:
        names = [c.name for c in cands]
        if force not in names:
            raise AttnccError(f"lowering `{force}` does not apply to this spec; it can use {', '.join(names)}")
        return Plan(force, node.op, mask, cands, design, attrs, ((force, None),), budget)
    chosen = cheapest(cands, design, budget).name
    return Plan(chosen, node.op, mask, cands, design, attrs, dispatch_table(cands, design, budget), budget)


def format_plan(plan: Plan, log: list[tuple[str, str]]) -> str:
    sizes = ", ".join(f"{k}={v}" for k, v in plan.sizes.items())
    lines = ["analysis:"]
    lines += [f"  [{name}] {msg}" for name, msg in log]
    lines.append(f"candidates at {sizes} (roofline: {MACHINE['flops_per_s']:.0e} flop/s, "
                 f"{MACHINE['bytes_per_s']:.0e} B/s; memory budget {decimal(int(plan.budget))}):")
    for c in plan.candidates:
        flops, nbytes = c.at(plan.sizes)
        mark = "*" if c.name == plan.lowering else " "
        fits = "" if c.fits(plan.sizes, plan.budget) else " (over the budget)"
        lines.append(f" {mark} {c.name:<15} {c.seconds(plan.sizes) * 1e3:9.4f} ms  flops {flops:10.3e}  "
                     f"bytes {nbytes:10.3e}  flops = {c.flops}")
        lines.append(f"   {'':<15} memory {decimal(int(evaluate(c.working, plan.sizes)))} "
                     f"(+{decimal(int(evaluate(c.saved or 0, plan.sizes)))} kept for the backward){fits}")
        lines.append(f"   {'':<15} {c.note}")
    lines.append(f"chosen: {plan.lowering}")
    lines.append(format_dispatch(plan))
    return "\n".join(lines)


def format_dispatch(plan: Plan) -> str:
    """The dispatch table as `inspect` shows it: each lowering's lengths, and the crossovers."""
    ratio = plan.sizes["Nq"] / plan.sizes["N"]
    runs, low = [], 1
    for name, upto in plan.dispatch:
        runs.append(f"{name} for N {'>= ' + str(low) if upto is None else f'in {low} .. {upto}'}")
        low = None if upto is None else upto + 1
    crossovers = [str(upto) for _, upto in plan.dispatch[:-1]]
    return (f"dispatch by key length N (queries Nq = {ratio:g} x N): " + "; ".join(runs)
            + (f"\ncrossover lengths: N > {', '.join(crossovers)}" if crossovers else "; no crossover"))
