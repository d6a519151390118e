"""The tile loops of the quadratic Triton kernels, split by what the compiler proved into stages.

A tile (query rows [m0, m0 + BLOCK_M), key rows [n0, n0 + BLOCK_N)) is *full* when every pair in
it is visible, so the kernel evaluates no mask there, and *partial* otherwise. Two proofs give
full tiles:

  band      the mask is exactly lo <= i - j <= hi (analysis.structure: full, causal, band). The pairs
            of a tile have i - j from m0 - n0 - BLOCK_N + 1 to m0 + BLOCK_M - 1 - n0, so the tile is
            full when that range lies in [lo, hi] and its walked side lies inside Nq / N. The key
            tiles of one query tile (or the query tiles of one key tile) are then a run of partial
            tiles, a run of full ones, and another run of partial ones: three loops (Triton's fused
            attention tutorial has two, for causal: the off-diagonal tiles unmasked, the diagonal
            masked). Band bounds are `tl.constexpr`, so the bounds fold.
  layout    a block-sparse layout (analysis.blocks.TileLists): the kernel takes, per query tile, the
            CSR lists of its full and of its partial key tiles (FlexAttention's BlockMask:
            full_kv_num_blocks / full_kv_indices and kv_num_blocks / kv_indices, as row pointers and
            columns). When the layout is exact at tile granularity (LAYOUT_EXACT) partial tiles are
            partial only through the Nq / N bounds and no element mask is evaluated at all. A layout
            built per call from the inputs (token_blocks, analysis/token_layout.py) has the same lists
            with one row per (batch, query tile), and is never exact.
A mask that is proven only inside a band (toeplitz, general) gets one masked loop over the band.

A `Stage` is one loop: its header, the line that sets the tile's start from a list entry (layouts),
and whether its tiles need the mask. Kernels write their loop body once per stage.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..plan.select import Plan
from .exprs import band_bounds
from .writer import CodeWriter

EXACT_BAND = ("full", "causal", "band")  # structures that are exactly a band lo <= i - j <= hi

# the CSR arguments a block-sparse kernel takes: full tiles first, then partial ones
LAYOUT_ARGS = "FullPtr, FullCols, PartPtr, PartCols, "


@dataclass(frozen=True)
class Stage:
    loop: str  # the `for` line
    start: str | None  # the tile's start, read from a layout list (None: the loop variable is the start)
    masked: bool  # whether the tile's pairs need the mask (partial tiles)
    note: str  # what the stage walks (a comment above the loop)


def band_sides(plan: Plan) -> tuple[bool, bool]:
    """Which sides of the band lo <= i - j <= hi are bounded (their bounds are kernel constexprs)."""
    lo, hi = band_bounds(plan.mask)
    return lo is not None, hi is not None


def band_constexprs(plan: Plan) -> str:
    """The kernel parameters of the bounded band sides."""
    has_lo, has_hi = band_sides(plan)
    return "".join(f"{side}: tl.constexpr, " for side, used in (("band_lo", has_lo), ("band_hi", has_hi)) if used)


def band_launch(plan: Plan) -> str:
    """The launcher's keyword arguments of the bounded band sides (values from `band_line`)."""
    has_lo, has_hi = band_sides(plan)
    return "".join(f"{side}={side}, " for side, used in (("band_lo", has_lo), ("band_hi", has_hi)) if used)


BAND_LIMIT = 1 << 30  # |i - j| < 2^30 always: a bound beyond it means "no limit" and is saturated to it


def band_line(w: CodeWriter, plan: Plan) -> None:
    """The launcher's band bounds, from the spec's sizes (fixed per module and size: constexprs),
    saturated to +-BAND_LIMIT: a size near 2^31 (a "no limit" sentinel) would overflow the kernel's
    int32 tile arithmetic, and any bound past the offsets that occur means the same."""
    lo, hi = band_bounds(plan.mask)
    for side, bound in (("band_lo", lo), ("band_hi", hi)):
        if bound is not None:
            w.line(f"{side} = min(max({bound}, -{BAND_LIMIT}), {BAND_LIMIT})  # keys j with band_lo <= i - j <= band_hi")


def key_stages(w: CodeWriter, plan: Plan) -> list[Stage]:
    """The loops over the key tiles that query tile pid_m sees (forward, dQ); writes their bounds."""
    if plan.entry.token_tiles:  # a layout built per call: one list row per (batch, query tile)
        w.line("row = off_b * tl.cdiv(Nq, BLOCK_M) + pid_m")
        return layout_stages(w, "row", "start_n", "BLOCK_N", "query", "key", "layout built per call")
    if plan.entry.block_sparse:
        return layout_stages(w, "pid_m", "start_n", "BLOCK_N", "query", "key")
    return band_stages(w, plan, walk=("start_n", "BLOCK_N", "N"), fixed="pid_m * BLOCK_M", sign="-")


def query_stages(w: CodeWriter, plan: Plan, fixed_in_range: bool) -> list[Stage]:
    """The loops over the query tiles that see key tile pid_n (dK, dV); writes their bounds.
    fixed_in_range: full tiles also need the key tile inside N (the loop writes table atomics)."""
    if plan.entry.token_tiles:
        w.line("col = off_b * tl.cdiv(N, BLOCK_N) + pid_n")
        return layout_stages(w, "col", "start_m", "BLOCK_M", "key", "query", "layout built per call")
    if plan.entry.block_sparse:
        return layout_stages(w, "pid_n", "start_m", "BLOCK_M", "key", "query")
    stages = band_stages(w, plan, walk=("start_m", "BLOCK_M", "Nq"), fixed="pid_n * BLOCK_N", sign="+")
    if fixed_in_range and any(not s.masked for s in stages):
        w.line("full_hi = tl.where(pid_n * BLOCK_N + BLOCK_N <= N, full_hi, full_lo)  # keys past N: atomics need the mask")
    return stages


def layout_stages(w: CodeWriter, pid: str, start: str, block: str, fixed: str, walked: str,
                  kind: str = "block-sparse") -> list[Stage]:
    w.line(f"# {kind}: the {walked} tiles that the layout lists for this {fixed} tile, full ones first")
    return [Stage(f"for idx in range(tl.load(FullPtr + {pid}), tl.load(FullPtr + {pid} + 1)):",
                  f"{start} = tl.load(FullCols + idx) * {block}", False, f"full {walked} tiles: no mask"),
            Stage(f"for idx in range(tl.load(PartPtr + {pid}), tl.load(PartPtr + {pid} + 1)):",
                  f"{start} = tl.load(PartCols + idx) * {block}", True,
                  f"partial {walked} tiles: the mask (only the bounds where LAYOUT_EXACT)")]


def band_stages(w: CodeWriter, plan: Plan, walk: tuple[str, str, str], fixed: str, sign: str) -> list[Stage]:
    """Band loops along one axis. The walked tiles start at multiples of `block` below `limit`; the
    fixed tile starts at `fixed`. For keys walked (sign '-'), a pair's i - j is fixed - start + r
    with r in (-BLOCK_N, BLOCK_M); for queries walked (sign '+'), start - fixed + r likewise."""
    var, block, limit = walk
    other = "BLOCK_M" if block == "BLOCK_N" else "BLOCK_N"
    has_lo, has_hi = band_sides(plan)
    # walking keys: j >= i - hi bounds the first tile, j <= i - lo the last; walking queries: i >= j + lo, i <= j + hi
    first, last = ("band_hi", "band_lo") if sign == "-" else ("band_lo", "band_hi")
    has_first, has_last = (has_hi, has_lo) if sign == "-" else (has_lo, has_hi)
    if has_first or has_last:
        w.line(f"# mask is {plan.mask.describe()}: only {'key' if sign == '-' else 'query'} tiles inside the band are visited")
    w.line(f"lo = tl.maximum({fixed} {sign} {first}, 0) // {block} * {block}" if has_first else "lo = 0")
    w.line(f"hi = tl.minimum({fixed} + {other} {sign} {last}, {limit})" if has_last else f"hi = {limit}")
    if has_last:  # a band that misses this tile altogether: no tile (the stages below start at lo)
        w.line("hi = tl.maximum(hi, lo)")
    if plan.mask.kind not in EXACT_BAND:
        return [Stage(f"for {var} in range(lo, hi, {block}):", None, True, "every visited tile: the mask")]
    if has_first:
        w.line(f"full_lo = tl.minimum(tl.cdiv(tl.maximum({fixed} + {other} - 1 {sign} {first}, 0), {block}) * {block}, hi)")
    else:
        w.line("full_lo = lo")
    end = f"tl.maximum(tl.minimum({fixed} + 1 {sign} {last}, {limit}), 0)" if has_last else limit
    w.line(f"full_hi = tl.maximum({end} // {block} * {block}, full_lo)")
    edge = "stage: diagonal tiles (masked)" if plan.mask.kind == "causal" else "stage: partial tiles on the band's edge (masked)"
    stages = [Stage(f"for {var} in range(lo, full_lo, {block}):", None, True, edge)] if has_first else []
    return stages + [
        Stage(f"for {var} in range(full_lo, full_hi, {block}):", None, False,
              f"stage: {'off-diagonal ' if plan.mask.kind == 'causal' else ''}full tiles, every pair visible (no mask)"),
        Stage(f"for {var} in range(full_hi, hi, {block}):", None, True,
              edge.replace("(masked)", "or past the bounds (masked)") if has_last
              else "stage: the partial tile past the bounds (masked)")]
