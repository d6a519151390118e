"""The cost model's vocabulary: a lowering's `Candidate` (sympy flops, bytes moved and bytes held),
the reference machine of the roofline, the design sizes, and the question a lowering answers
(`CostQuery`)."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import sympy
from sympy.printing.pycode import PythonCodePrinter

from ..ir.graph import B, D, E, H, N, Nq
from ..analysis.structure import Structure

DESIGN_SIZES = {"B": 1, "H": 8, "Nq": 4096, "N": 4096, "D": 64, "E": 64}
BLOCK = 64  # tile edge assumed by the cost model
CHUNK = 64  # chunk length of causal linear attention
# The reference machine of the roofline: an H100's dense fp16/bf16 tensor-core rate with fp32
# accumulation (about a third of its peak, what attention kernels reach), its memory bandwidth and
# its memory (the budget a lowering must fit at compile time unless a caller gives another).
# A kernel launching fewer programs than the machine has multiprocessors (132 on an H100 SXM)
# reaches only that fraction of both rates: a few long programs leave most of the GPU idle.
MACHINE = {"flops_per_s": 300e12, "bytes_per_s": 3.0e12, "multiprocessors": 132, "memory_bytes": 80e9}
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
BYTES_OUT = 4 * B * H * Nq * E  # the output, fp32
QUERY_CHUNK = 256  # queries per step of the torch skeletons (attncc.rt.QUERY_CHUNK)
# Elements of a feature group's largest buffer in the torch FFT / ring paths (attncc.rt.GROUP_BUDGET):
# a group never holds more than this, nor less than one value column of one (feature, batch, head)
GROUP_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Candidate:
    """flops and bytes (moved) make the roofline time; memory is the bytes one call of the torch
    forward allocates at its peak beyond q, k, v (fp32; float64 calls hold twice that), and saved the
    bytes autograd keeps for the backward when the call is recorded. A lowering that gives no
    memory estimate is charged its traffic (every byte it moves, held at once: an upper bound)."""
    name: str
    flops: sympy.Expr
    bytes: sympy.Expr
    note: str
    programs: sympy.Expr | None = None  # independent programs its kernel launches; None: enough to fill the GPU
    memory: sympy.Expr | None = None
    saved: sympy.Expr | None = None

    @property
    def working(self) -> sympy.Expr:
        return self.bytes if self.memory is None else self.memory

    @property
    def held(self) -> sympy.Expr:
        """Bytes held at the peak of a recorded call (working memory and what the backward keeps)."""
        return self.working + (self.saved or 0)

    def at(self, sizes: dict) -> tuple[float, float]:
        return evaluate(self.flops, sizes), evaluate(self.bytes, sizes)

    def held_at(self, sizes: dict) -> float:
        return evaluate(self.held, sizes)

    def fits(self, sizes: dict, budget: float) -> bool:
        return self.held_at(sizes) <= budget

    def occupancy(self, sizes: dict) -> float:
        """The fraction of the machine its programs keep busy: min(1, programs / multiprocessors)."""
        if self.programs is None:
            return 1.0
        return min(1.0, evaluate(self.programs, sizes) / MACHINE["multiprocessors"])

    def seconds(self, sizes: dict) -> float:
        """Roofline estimate on the reference machine: the slower of compute and memory traffic, at
        the occupancy its programs reach."""
        flops, nbytes = self.at(sizes)
        return max(flops / MACHINE["flops_per_s"], nbytes / MACHINE["bytes_per_s"]) / self.occupancy(sizes)


class SizePrinter(PythonCodePrinter):
    """A cost expression as Python over a dict `s` of sizes by name (what generated modules hold)."""

    def _print_Symbol(self, expr):
        return f"s[{expr.name!r}]"


def size_code(e: sympy.Expr) -> str:
    return SizePrinter({"fully_qualified_modules": True}).doprint(sympy.sympify(e))


@functools.lru_cache(maxsize=4096)
def numeric(e: sympy.Expr):
    """sizes -> float of a cost expression: printed as Python once (sympy's substitution is
    far slower than the dispatch table's dozens of evaluations per candidate allow)."""
    return eval(f"lambda s: {size_code(e)}", {"math": math})  # noqa: S307 (our own printed expression)


def evaluate(e: sympy.Expr, sizes: dict) -> float:
    """A cost expression at the given sizes (symbols matched by name; every symbol must be given)."""
    return float(numeric(sympy.sympify(e))(sizes))


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
    approx: object = None  # attncc.frontend.records.ApproxInfo or None

    @property
    def exact(self) -> bool:
        """No approximation computes this spec by its own algorithm (favor turns it into kernelized attention)."""
        return self.approx is None or self.approx.method == "favor"

    def approximated_by(self, method: str) -> bool:
        return self.approx is not None and self.approx.method == method


# Memory of the torch skeletons (attncc.rt), fp32 bytes beyond q, k, v: the terms several lowerings share.
FEATURE_ROWS = 4 * B * H * (Nq + N) * D  # phi(Q), phi(K)
PAIR_BYTES_KEPT = 16  # a (query, key) pair's score, weight and mask, kept by autograd for the backward
PAIR_BYTES_WORKING = 20  # the same pair's buffers alive at once inside one query chunk (measured: benchmarks/memory.py)


def quadratic_memory(keys_per_query: sympy.Expr, rows: sympy.Expr = QUERY_CHUNK) -> tuple[sympy.Expr, sympy.Expr]:
    """(working, saved) of a dense slab per step of `rows` queries against `keys_per_query` keys:
    one slab at a time, the output assembled from the steps (twice: the steps, then their cat);
    autograd keeps every step's slab."""
    working = 2 * BYTES_OUT + PAIR_BYTES_WORKING * B * H * sympy.Min(Nq, rows) * keys_per_query
    return working, PAIR_BYTES_KEPT * B * H * Nq * keys_per_query


def blocked_transform_memory(cells: sympy.Expr) -> dict:
    """{memory: working, saved: ...} (Candidate's fields) of the FFT / ring paths (attncc.rt.kernel_blocks): phi(Q), phi(K), then one
    block of (feature, value column) transforms of `cells` elements per column at a time, at most
    GROUP_ELEMENTS elements or one column of one feature (B H cells), six buffers of it alive (the
    product, its transform, the filtered transform, the inverse, the ring path's box reads, the
    product with phi(Q)), besides [V, 1] and the per-column sums (twice: the blocks', then their
    cat); autograd keeps each block's transform and result, for all D (E + 1) columns."""
    block = sympy.Min(D * (E + 1) * B * H * cells, sympy.Max(GROUP_ELEMENTS, B * H * cells))
    working = 2 * BYTES_OUT + FEATURE_ROWS + 6 * 4 * block + 4 * B * H * (N + 2 * Nq) * (E + 1)
    saved = FEATURE_ROWS + 4 * B * H * D * (E + 1) * (2 * cells + Nq)
    return {"memory": working, "saved": saved}


def visited_pairs(s: Structure) -> sympy.Expr:
    """(query, key) pairs whose tiles a band-aware loop visits."""
    if s.kind == "causal" or (s.lo == 0 and s.hi == sympy.oo):
        return Nq * (N + BLOCK) / 2
    if s.kind != "full" and s.bounded:
        lo = -N if s.lo == -sympy.oo else s.lo
        hi = Nq if s.hi == sympy.oo else s.hi
        return Nq * sympy.Min(N, hi - lo + 1 + BLOCK)
    return Nq * N
