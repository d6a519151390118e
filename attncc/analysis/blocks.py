"""Block-sparse layouts derived from a mask at compile time.

A conjunct of a mask that reads i and j only as i // b and j // b (b a constant or a size, the same
b for both) and reads no head, table or input is a predicate P(i // b, j // b) on block ids. Its
layout L[I, J] = P evaluated at the first token of each block is exact: the conjunct holds at
(i, j) iff L[i // b, j // b]. Kernels then visit only the key blocks that L lists for each query
block, and the full mask still decides inside them. A layout depends on the lengths and the
sizes only, so a module computes it once per (Nq, N) and caches it.

When the block conjuncts are the whole mask (`BlockLayout.exact`), the layout decides every pair:
a tile all of whose blocks are on is full (no mask evaluation), and with tiles inside single blocks
the remaining (partial) tiles are partial only through the Nq / N bounds (`split_tiles`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..lang.evaluate import Env, evaluate
from ..lang.expr import TExpr, conjuncts, fold
from ..lang.operators import fmt


@dataclass(frozen=True)
class BlockLayout:
    block: TExpr  # b: a constant or a size
    predicate: TExpr  # the conjunction of the block conjuncts
    exact: bool = False  # the block conjuncts are the whole mask: mask(i, j) == L[i // b, j // b]

    def describe(self) -> str:
        return f"blocks of {fmt(self.block)} tokens where {fmt(self.predicate)}"


def _block_of(t: TExpr) -> TExpr | None | bool:
    """The b through which t reads i and j (as i // b, j // b); False if t reads them otherwise or
    reads h, a table or an input; None if t reads neither."""
    return fold(t, _node_block)


def _node_block(t: TExpr, found_in_args: list) -> TExpr | None | bool:
    if t.op == "floordiv" and t.args[0].op == "var" and t.args[0].value in ("i", "j"):
        b = t.args[1]
        return b if b.op == "size" or (b.op == "const" and b.type == "int" and b.value > 0) else False
    if t.op in ("var", "param", "input", "scale") or (t.op == "rsize" and t.value not in ("N", "Nq")):
        return False  # heads, tables, inputs and head dims are not part of a per-length layout
    found = None
    for b in found_in_args:
        if b is False or (b is not None and found is not None and b != found):
            return False
        found = b if b is not None else found
    return found


def find_layout(mask: TExpr | None) -> BlockLayout | None:
    """The block-sparse layout of a mask's block conjuncts, if it has any (largest b group first)."""
    if mask is None:
        return None
    groups: dict[TExpr, list[TExpr]] = {}
    for c in conjuncts(mask):
        b = _block_of(c)
        if b not in (None, False):
            groups.setdefault(b, []).append(c)
    if not groups:
        return None
    block, parts = max(groups.items(), key=lambda item: len(item[1]))
    predicate = parts[0]
    for p in parts[1:]:
        predicate = TExpr("and_", (predicate, p), None, "bool")
    return BlockLayout(block, predicate, exact=len(parts) == len(conjuncts(mask)))


def within_band(i: torch.Tensor, j: torch.Tensor, b: int, lo: int | None, hi: int | None) -> torch.Tensor:
    """Whether the block starting at (i, j) holds any pair with lo <= i - j <= hi (None: unbounded):
    its differences run from i - (j + b - 1) to (i + b - 1) - j."""
    keep = torch.ones(torch.broadcast_shapes(i.shape, j.shape), dtype=torch.bool, device=i.device)
    if lo is not None:
        keep &= (i + b - 1) - j >= lo
    if hi is not None:
        keep &= i - (j + b - 1) <= hi
    return keep


def evaluate_layout(layout: BlockLayout, sizes: dict, nq: int, nk: int, band=(None, None), device="cpu"):
    """L[I, J] for the ceil(Nq / b) x ceil(N / b) blocks, as bool, cut to the blocks that meet the
    band lo <= i - j <= hi proven for the whole mask (band: ints or None)."""
    b = block_size(layout, sizes)
    rsizes = {"N": nk, "Nq": nq}
    first = lambda n: torch.arange(0, n, b, dtype=torch.int32, device=device)
    i, j = first(nq).view(-1, 1), first(nk).view(1, -1)
    env = Env(sizes=sizes, rsizes=rsizes, i=i, j=j, float_dtype=torch.float32)
    grid = evaluate(layout.predicate, env).to(device).expand(i.shape[0], j.shape[1])
    return grid & within_band(i, j, b, *band)


def block_size(layout: BlockLayout, sizes: dict) -> int:
    return int(layout.block.value) if layout.block.op == "const" else int(sizes[layout.block.value])


def layout_holds(mask: TExpr, layout: BlockLayout, sizes: dict, samples: int = 4, seed: int = 0) -> bool:
    """Cross-check: every block conjunct agrees with the layout at sampled token pairs.

    The work is bounded whatever b is: at each sampled length (up to 6 blocks a side) only the
    representative tokens of each block are tried (its first, its last and one at random), all
    pairs of them: at most 18 x 18 pairs, where the whole token grid would be 36 b^2."""
    rng = random.Random(seed)
    b = block_size(layout, sizes)
    for _ in range(samples):
        nq, nk = rng.randint(1, 6 * b), rng.randint(1, 6 * b)
        grid = evaluate_layout(layout, sizes, nq, nk)
        i, j = sample_tokens(nq, b, rng).view(-1, 1), sample_tokens(nk, b, rng).view(1, -1)
        env = Env(sizes=sizes, rsizes={"N": nk, "Nq": nq}, i=i, j=j, float_dtype=torch.float32)
        tokens = evaluate(layout.predicate, env).expand(i.shape[0], j.shape[1])
        if not torch.equal(tokens, grid[i.long() // b, j.long() // b]):
            return False
    return True


def sample_tokens(n: int, b: int, rng: random.Random) -> torch.Tensor:
    """int32 tokens of 0..n-1: the first and last of each block of b, and one in between at random."""
    picks = set()
    for start in range(0, n, b):
        end = min(start + b, n) - 1
        picks |= {start, end, rng.randint(start, end)}
    return torch.tensor(sorted(picks), dtype=torch.int32)


def tile_layout(layout: torch.Tensor, block: int, tile: int) -> torch.Tensor:
    """A block layout at a coarser tile (tile a multiple of block): a tile is on if any block in it is."""
    factor = tile // block
    rows, cols = layout.shape
    padded = torch.zeros(-(-rows // factor) * factor, -(-cols // factor) * factor, dtype=torch.bool,
                         device=layout.device)
    padded[:rows, :cols] = layout
    return padded.view(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).any(3).any(1)


def layout_tiles(block: int, layout: torch.Tensor, nq: int, nk: int, max_tile: int) -> tuple[int, torch.Tensor]:
    """(tile, bool [ceil(Nq / tile), ceil(N / tile)]): the key tiles a block-sparse kernel visits,
    over square tiles of a power-of-two edge in [16, max_tile] aligned with the blocks (a tile is
    visited if any block it meets is). A block size that is not a power of two visits every 64-tile."""
    if block & (block - 1):  # no aligned tile: visit every tile, the mask decides
        tile = 64
        return tile, torch.ones(-(-nq // tile), -(-nk // tile), dtype=torch.bool, device=layout.device)
    tile = min(max(16, block), max_tile)
    if block > tile:  # split each block into (block / tile)^2 tiles
        split = block // tile
        layout = layout.repeat_interleave(split, 0).repeat_interleave(split, 1)
        return tile, layout[:-(-nq // tile), :-(-nk // tile)].contiguous()
    return tile, tile_layout(layout, block, tile)


@dataclass(frozen=True)
class TileLists:
    """The key tiles a block-sparse kernel visits for each query tile, in two classes (what
    FlexAttention's BlockMask holds), as CSR over query tiles (columns ascending):
      full      (full_ptr, full_cols): every pair of the tile is visible; the kernel evaluates no mask
      partial   (partial_ptr, partial_cols): some pair may be masked; the kernel evaluates the mask,
                or only the Nq / N bounds when `exact` says the layout alone decides every pair
    A kernel walks both lists (in any order: softmax is merged online). Producers: `split_tiles`
    (compile-time layouts, cached per length); a run-time layout builder may fill the same fields on
    the device. `transposed` gives the query tiles of each key tile, for the dK / dV kernel."""

    tile: int
    full_ptr: torch.Tensor
    full_cols: torch.Tensor
    partial_ptr: torch.Tensor
    partial_cols: torch.Tensor
    exact: bool

    @classmethod
    def of(cls, tile: int, full: torch.Tensor, partial: torch.Tensor, exact: bool) -> "TileLists":
        """From bool [query tiles, key tiles] grids of the full and the partial tiles."""
        return cls(tile, *csr(full), *csr(partial), exact)

    def tensors(self) -> list[torch.Tensor]:
        return [self.full_ptr, self.full_cols, self.partial_ptr, self.partial_cols]

    def transposed(self, key_tiles: int) -> "TileLists":
        """The same tiles listed per key tile: (ptr over key tiles, query tile ids)."""
        full, partial = (_csr_transpose(p, c, key_tiles) for p, c in ((self.full_ptr, self.full_cols),
                                                                       (self.partial_ptr, self.partial_cols)))
        return TileLists(self.tile, *full, *partial, self.exact)


def _csr_transpose(row_ptr: torch.Tensor, cols: torch.Tensor, n_cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.repeat_interleave(torch.arange(row_ptr.numel() - 1, device=cols.device),
                                   (row_ptr[1:] - row_ptr[:-1]).long())
    layout = torch.zeros(row_ptr.numel() - 1, n_cols, dtype=torch.bool, device=cols.device)
    layout[rows, cols.long()] = True
    return csr(layout.T.contiguous())


def split_tiles(block: int, layout: torch.Tensor, nq: int, nk: int, max_tile: int, exact: bool) -> TileLists:
    """The visited tiles of `layout_tiles`, split into full and partial ones. A tile is full when the
    layout decides the whole mask (`exact`), every block the tile meets is on, and the tile lies
    inside the Nq x N grid; only tiles inside single blocks (block a power of two >= the tile) keep
    `exact` for the partial ones, which are then partial only through the grid's bounds."""
    tile, visited = layout_tiles(block, layout, nq, nk, max_tile)
    aligned = not block & (block - 1)
    full = torch.zeros_like(visited)
    if exact and aligned:
        covered = ~tile_layout(~layout, block, tile) if block < tile else visited
        rows, cols = visited.shape
        inside = torch.ones_like(visited)
        inside[nq // tile:, :] = False
        inside[:, nk // tile:] = False
        full = visited & covered[:rows, :cols] & inside
    return TileLists.of(tile, full, visited & ~full, exact and aligned and block >= tile)


def csr(layout: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row_ptr [rows + 1], cols [nnz]) int32 of a bool layout, columns ascending."""
    counts = layout.sum(1, dtype=torch.int32)
    row_ptr = torch.zeros(layout.shape[0] + 1, dtype=torch.int32, device=layout.device)
    row_ptr[1:] = torch.cumsum(counts, 0)
    cols = layout.nonzero()[:, 1].to(torch.int32)
    return row_ptr, cols
