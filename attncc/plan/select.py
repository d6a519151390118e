"""Choose a lowering for each attention node by a sympy cost model.

Every candidate carries flops and bytes as sympy expressions of B, H, Nq, N, D, E (m = feature
dimension = D for the maps of this version). The candidate with the least roofline time (the slower
of flops / rate and bytes / bandwidth on MACHINE) at the design sizes wins; a spec may force one
with `lowering=`. The quadratic `tiled` lowering is valid for every node.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from ..ir.graph import B, D, E, Graph, H, N, Nq
from ..lang.source import AttnccError
from ..analysis.blocks import block_size, evaluate_layout
from ..analysis.structure import Structure

DESIGN_SIZES = {"B": 1, "H": 8, "Nq": 4096, "N": 4096, "D": 64, "E": 64}
BLOCK = 64  # tile edge assumed by the cost model
CHUNK = 64  # chunk length of causal linear attention
LOWERINGS = ("tiled", "block_sparse", "linear", "linear_chunked", "fft", "fft2", "rings", "graph", "mra", "lara", "ra",
             "mixed_chunk", "ista")
GRAPH_DEGREE = 16  # edges per token assumed by the cost model (the graph is a call-time input)
GRAPH_PRODUCTS = 12  # products with A per application of exp(t A) (a Taylor series; walks: its steps)
# The reference machine of the roofline: an H100's dense fp16/bf16 tensor-core rate with fp32
# accumulation (about a third of its peak, what attention kernels reach) and its memory bandwidth.
MACHINE = {"flops_per_s": 300e12, "bytes_per_s": 3.0e12}


@dataclass(frozen=True)
class Candidate:
    name: str
    flops: sympy.Expr
    bytes: sympy.Expr
    note: str

    def at(self, sizes: dict) -> tuple[float, float]:
        values = lambda e: {s: sizes[s.name] for s in e.free_symbols if s.name in sizes}
        return float(self.flops.subs(values(self.flops))), float(self.bytes.subs(values(self.bytes)))

    def seconds(self, sizes: dict) -> float:
        """Roofline estimate on the reference machine: the slower of compute and memory traffic."""
        flops, nbytes = self.at(sizes)
        return max(flops / MACHINE["flops_per_s"], nbytes / MACHINE["bytes_per_s"])


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


def visited_pairs(s: Structure) -> sympy.Expr:
    """(query, key) pairs whose tiles a band-aware loop visits."""
    if s.kind == "causal" or (s.lo == 0 and s.hi == sympy.oo):
        return Nq * (N + BLOCK) / 2
    if s.kind != "full" and s.bounded:
        lo = -N if s.lo == -sympy.oo else s.lo
        hi = Nq if s.hi == sympy.oo else s.hi
        return Nq * sympy.Min(N, hi - lo + 1 + BLOCK)
    return Nq * N


def candidates(op: str, attrs: dict, mask: Structure, sizes: dict) -> list[Candidate]:
    if op == "ista_attend":  # VARS: the solver is the only way to compute it (there is no fixed W to tile)
        return [ista_candidate(attrs["steps"])]
    bytes_io = 4 * B * H * (Nq * (D + E) + N * (D + E))
    pairs = visited_pairs(mask)
    out = [Candidate("tiled", 2 * B * H * pairs * (D + E), bytes_io + 4 * B * H * (Nq / BLOCK) * (pairs / Nq) * (D + E),
                     "quadratic tiles, online softmax / row sums, empty tiles skipped by mask structure")]
    layout = attrs.get("block_layout")
    if op == "attend" and layout is not None:
        block = block_size(layout, sizes)
        band = mask.bounds_at(sizes)
        rho = sympy.Float(float(evaluate_layout(layout, sizes, sizes["Nq"], sizes["N"], band).float().mean()), 4)
        out.append(Candidate("block_sparse", 2 * B * H * Nq * N * (D + E) * rho,
                             bytes_io + 4 * B * H * Nq * N * rho / block * (D + E),
                             f"block-sparse over {block}-token blocks: {float(rho):.2%} of the score blocks "
                             f"at the design sizes, layout computed once per length"))
    if op == "linear_attend" and not attrs.get("causal"):
        out.append(Candidate("linear", 2 * B * H * (N + Nq) * D * (E + 1), bytes_io,
                             "phi(Q) (phi(K)^T V): one pass for the state, one for the output"))
    if op == "linear_attend" and attrs.get("causal"):
        out.append(Candidate("linear_chunked", 2 * B * H * (N * CHUNK * (D + E) + 2 * N * D * (E + 1)), bytes_io,
                             f"chunks of {CHUNK}: quadratic inside, prefix state across"))
    if op == "toeplitz_attend":
        length = Nq + N
        out.append(Candidate("fft", B * H * D * (E + 1) * 5 * length * sympy.log(length, 2) + 4 * B * H * Nq * D * E,
                             bytes_io + 4 * B * H * length * D * (E + 1) * 3,
                             "circulant embedding, one FFT convolution per feature and value column"))
    if op == "graph_attend":  # the table lowerings first form G = kernel(A): dense N x N products
        out[0] = Candidate("tiled", out[0].flops + B * 2 * N ** 3 * (attrs["graph_steps"] or GRAPH_PRODUCTS),
                           out[0].bytes + 4 * B * N * N * 3, out[0].note + "; G = kernel(A) formed densely first")
        nnz, products = N * GRAPH_DEGREE, attrs["graph_steps"] or GRAPH_PRODUCTS
        out.append(Candidate("graph", B * H * D * (E + 1) * products * 2 * nnz + 2 * B * H * Nq * D * E,
                             bytes_io + products * (8 * nnz + 8 * B * H * N * D * (E + 1)),
                             f"{products} products with the adjacency ({GRAPH_DEGREE} edges per token assumed; "
                             f"CSR when sparse), G = kernel(A) never formed"))
    if op == "grid_attend":
        out += grid_candidates(attrs["grid"], sizes)
    if op == "mixed_attend":
        out.append(mixed_candidate(attrs["mixed"]))
    return out


def with_pooling(c: Candidate, pool) -> Candidate:
    """ContextPool before any lowering: (2R + 1)^(1 or 2) offsets per key, each a weight and a row of
    k and/or v; the head is 2 D per key."""
    offsets = (2 * pool.radius + 1) ** (2 if pool.width else 1)
    cols = sum({"k": D, "v": E}[t] for t in pool.targets)
    return Candidate(c.name, c.flops + B * H * N * (4 * D + offsets * 2 * (cols + 1)),
                     c.bytes + 4 * B * H * N * 2 * cols, c.note + f"; k/v pooled first ({offsets} offsets a key)")


def ista_candidate(steps: int) -> Candidate:
    """VARS: column norms, G = Phi_K^T Phi_K and b = Phi_K^T V (N m (m + e)), T steps of G z (m^2 e),
    out = Phi_Q z (Nq m e); m = D, the feature width."""
    flops = 2 * B * H * (N * D * (D + E) + steps * D * D * E + Nq * D * E)
    return Candidate("ista", flops, 4 * B * H * (Nq * (D + E) + N * (D + E) + (steps + 1) * D * (D + E)),
                     f"{steps} unrolled ISTA steps on the m x m Gram matrix, no N x N buffer")


def mixed_candidate(form) -> Candidate:
    """FLASH mixed chunks: c x c blocks on the diagonal (c keys per query), and per linear term the
    chunk states psi(K_g)^T V_g, their (prefix) sums over G = N / c chunks, and phi(Q) S."""
    from ..analysis.structure import to_sympy
    c = to_sympy(form.chunk, {form.chunk.value: sympy.Symbol(form.chunk.value, integer=True, positive=True)}
                 if form.chunk.op == "size" else {})
    terms = len(form.linear)
    flops = 2 * B * H * Nq * c * (D + E) + terms * 2 * B * H * (N + Nq) * D * (E + 1) + terms * B * H * (N / c) * D * E
    nbytes = 4 * B * H * (Nq * (D + E) + N * (D + E)) + terms * 4 * B * H * (N / c) * D * (E + 1)
    return Candidate("mixed_chunk", flops, nbytes, "quadratic inside chunks of c, chunk states prefix-summed across")


def approx_candidates(approx) -> list[Candidate]:
    """The declared approximation is the computation: its algorithm is the only candidate
    (favor is not here: the pass kernelize_favor makes kernelized attention of it, with all of its lowerings)."""
    opts, bytes_io = approx.options, 4 * B * H * (Nq * (D + E) + N * (D + E))
    if approx.method == "mra":
        b, per_row = opts["block"], opts["blocks_per_row"]
        return [Candidate("mra", 2 * B * H * (Nq * per_row * b * (D + E) + (Nq / b) * (N / b) * (D + E)),
                          bytes_io + 4 * B * H * Nq * per_row * b,
                          f"MRA-2: exact scores on {per_row} blocks of {b} per block row (top-k of block-mean "
                          f"logits), {'block means elsewhere' if opts['mode'] == 'full' else 'nothing elsewhere'}")]
    if approx.method == "lara":
        c = opts["landmarks"]
        return [Candidate("lara", 2 * B * H * ((Nq + N) * c * (D + E) + c * c * D), bytes_io,
                          f"LARA: {c} landmark proposals, self-normalized multiple importance sampling")]
    s = opts["samples"]
    return [Candidate("ra", 2 * B * H * Nq * N * (D + s * (D + E)), bytes_io + 4 * B * H * Nq * s * D,
                      f"RA: {s} samples per query from its softmax mixture (quadratic, unbiased)")]


def grid_candidates(form, sizes: dict) -> list[Candidate]:
    """2-D FFT over the (Rq + Rk) x 2w offset plane; rings: T summed-area boxes per query."""
    from ..lang.evaluate import Env, evaluate
    from ..analysis.grid import ring_extent, saturation_at
    width = max(1, int(evaluate(form.width, Env(sizes=sizes))))
    rows = sympy.ceiling(Nq / width) + sympy.ceiling(N / width)
    out = []
    if form.toeplitz:
        cells = 2 * rows * 2 * width
        out.append(Candidate("fft2", B * H * D * (E + 1) * 5 * cells * sympy.log(cells, 2) + 4 * B * H * Nq * D * E,
                             4 * B * H * (Nq * (D + E) + N * (D + E)) + 4 * B * H * cells * D * (E + 1) * 3,
                             f"2-D FFT convolutions on the {width}-column grid (zero-padded, circulant-embedded)"))
    if form.metric:
        extent = ring_extent(sizes["Nq"], sizes["N"], width, form.metric)
        rings = min(extent, saturation_at(form, sizes)) if form.saturation is not None else extent
        out.append(Candidate("rings", 2 * B * H * Nq * (rings + 1) * 4 * D * (E + 1) + 4 * B * H * N * D * (E + 1),
                             4 * B * H * Nq * (rings + 1) * 4 * D * (E + 1),
                             f"summed-area tables on the {width}-column grid, {form.metric} rings: "
                             f"{rings} boxes of 4 reads per query at the design sizes"))
    return out


def select(graph: Graph, sizes: dict | None = None, force: str | None = None) -> Plan:
    (out,) = graph.operands(graph.output)
    node = graph.node(out)
    attrs = dict(node.attrs)
    mask = attrs["mask_structure"]
    design = {**DESIGN_SIZES, **(sizes or {})}
    approx = attrs.get("approx")
    cands = approx_candidates(approx) if approx is not None else candidates(node.op, attrs, mask, design)
    if attrs.get("pool") is not None:
        cands = [with_pooling(c, attrs["pool"]) for c in cands]
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
