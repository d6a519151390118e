"""The cost model's vocabulary: a lowering's `Candidate` (sympy flops and bytes), the reference
machine of the roofline, the design sizes, and the question a lowering answers (`CostQuery`)."""
from __future__ import annotations

from dataclasses import dataclass

import sympy

from ..ir.graph import B, D, E, H, N, Nq
from ..analysis.structure import Structure

DESIGN_SIZES = {"B": 1, "H": 8, "Nq": 4096, "N": 4096, "D": 64, "E": 64}
BLOCK = 64  # tile edge assumed by the cost model
CHUNK = 64  # chunk length of causal linear attention
# The reference machine of the roofline: an H100's dense fp16/bf16 tensor-core rate with fp32
# accumulation (about a third of its peak, what attention kernels reach) and its memory bandwidth.
# A kernel launching fewer programs than the machine has multiprocessors (132 on an H100 SXM)
# reaches only that fraction of both rates: a few long programs leave most of the GPU idle.
MACHINE = {"flops_per_s": 300e12, "bytes_per_s": 3.0e12, "multiprocessors": 132}
# Split-K decoding (attncc/lowerings/decode.py): query tiles of DECODE_BLOCK_M rows; the keys a query
# tile sees are cut into splits of at least SPLIT_MIN_TILES key tiles, as many as make the programs
# fill the multiprocessors SPLIT_WAVES times over (rt.decode_splits, the launchers and the cost agree).
DECODE_BLOCK_M = 16
SPLIT_MIN_TILES = 4
SPLIT_WAVES = 2
# Inputs read by a mask are data: the cost of a layout built per call (attncc/lowerings/token_blocks.py)
# counts the visited tiles at design inputs whose ints hold runs of DESIGN_RUN equal values (packed
# documents of that many tokens).
DESIGN_RUN = 1024
GRAPH_DEGREE = 16  # edges per token assumed by the cost model (the graph is a call-time input)
GRAPH_PRODUCTS = 12  # products with A per application of exp(t A) (a Taylor series; walks: its steps)
BYTES_IO = 4 * B * H * (Nq * (D + E) + N * (D + E))  # q, k, v read and the output written once, fp32


@dataclass(frozen=True)
class Candidate:
    name: str
    flops: sympy.Expr
    bytes: sympy.Expr
    note: str
    programs: sympy.Expr | None = None  # independent programs its kernel launches; None: enough to fill the GPU

    def at(self, sizes: dict) -> tuple[float, float]:
        values = lambda e: {s: sizes[s.name] for s in e.free_symbols if s.name in sizes}
        return float(self.flops.subs(values(self.flops))), float(self.bytes.subs(values(self.bytes)))

    def occupancy(self, sizes: dict) -> float:
        """The fraction of the machine its programs keep busy: min(1, programs / multiprocessors)."""
        if self.programs is None:
            return 1.0
        programs = float(self.programs.subs({s: sizes[s.name] for s in self.programs.free_symbols if s.name in sizes}))
        return min(1.0, programs / MACHINE["multiprocessors"])

    def seconds(self, sizes: dict) -> float:
        """Roofline estimate on the reference machine: the slower of compute and memory traffic, at
        the occupancy its programs reach."""
        flops, nbytes = self.at(sizes)
        return max(flops / MACHINE["flops_per_s"], nbytes / MACHINE["bytes_per_s"]) / self.occupancy(sizes)


@dataclass(frozen=True)
class CostQuery:
    """What a lowering is asked about: the output's attend node (its op, attributes and operands in
    the optimized graph), its proven mask structure, the design sizes, and a declared approximation."""
    graph: object  # attncc.ir.Graph
    node_id: int
    op: str
    attrs: dict
    mask: Structure
    sizes: dict
    approx: object = None  # attncc.check.ApproxInfo or None

    @property
    def exact(self) -> bool:
        """No approximation computes this spec by its own algorithm (favor turns it into kernelized attention)."""
        return self.approx is None or self.approx.method == "favor"

    def approximated_by(self, method: str) -> bool:
        return self.approx is not None and self.approx.method == method


def visited_pairs(s: Structure) -> sympy.Expr:
    """(query, key) pairs whose tiles a band-aware loop visits."""
    if s.kind == "causal" or (s.lo == 0 and s.hi == sympy.oo):
        return Nq * (N + BLOCK) / 2
    if s.kind != "full" and s.bounded:
        lo = -N if s.lo == -sympy.oo else s.lo
        hi = Nq if s.hi == sympy.oo else s.hi
        return Nq * sympy.Min(N, hi - lo + 1 + BLOCK)
    return Nq * N
