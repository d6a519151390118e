"""Run-time block layouts (attncc/analysis/token_layout.py): the tile lists the Triton kernels walk,
built on the device from the tile classes, and a cache that keeps them while the inputs they were
built from are unchanged.

The lists have the fields of a compile-time layout's (analysis.blocks.TileLists: CSR of the full and
of the partial tiles) with one row per (batch, tile): the kernels read row off_b * tiles + pid."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch

from ..analysis.blocks import TileLists
from ..analysis.token_layout import EMPTY, FULL, PARTIAL

__all__ = ["TokenTiles", "token_tiles", "device_csr"]

CACHED_LAYOUTS = 16


def device_csr(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row_ptr [B R + 1], cols) int32 of a bool [B, R, C], one CSR row per (b, r), columns ascending,
    built without a host sync: the kept columns of each row are sorted first, then scattered to
    row_ptr[row] + rank (the rest to one trash slot past the end; cols holds B R C + 1 entries)."""
    rows, width = keep.shape[0] * keep.shape[1], keep.shape[2]
    keep = keep.reshape(rows, width)
    count = keep.sum(-1, dtype=torch.int32)
    row_ptr = torch.zeros(rows + 1, dtype=torch.int32, device=keep.device)
    row_ptr[1:] = torch.cumsum(count, 0)
    order = torch.sort((~keep).to(torch.int8), dim=-1, stable=True).indices.to(torch.int32)
    rank = torch.arange(width, device=keep.device).view(1, -1)
    trash = rows * width
    where = torch.where(rank < count.view(-1, 1), row_ptr[:-1].view(-1, 1).long() + rank, trash)
    cols = torch.zeros(trash + 1, dtype=torch.int32, device=keep.device)
    cols.scatter_(0, where.flatten(), order.flatten())
    return row_ptr, cols


@dataclass(frozen=True)
class TokenTiles:
    """The tiles of one call: classes int8 [B, QB, KB] (EMPTY, PARTIAL, FULL); `rows` lists per
    (batch, query tile) its full and partial key tiles (forward, dQ), `cols` per (batch, key tile) the
    query tiles that visit it (dK, dV). Partial tiles evaluate the mask (exact is False)."""
    classes: torch.Tensor
    rows: TileLists
    cols: TileLists

    @classmethod
    def of(cls, classes: torch.Tensor, block_m: int) -> "TokenTiles":
        by_key = classes.transpose(1, 2)
        return cls(classes, TileLists(block_m, *device_csr(classes == FULL), *device_csr(classes == PARTIAL), False),
                   TileLists(block_m, *device_csr(by_key == FULL), *device_csr(by_key == PARTIAL), False))

    def visited(self) -> int:
        """Tiles the kernels visit (a host sync: for reports and tests, not the launch path)."""
        return int((self.classes != EMPTY).sum())


_CACHE: OrderedDict = OrderedDict()


def _identity(t: torch.Tensor) -> tuple:
    return (t.data_ptr(), t._version, tuple(t.shape), tuple(t.stride()), t.dtype, t.device)


def token_tiles(ctx, spec: str, block_m: int, block_n: int, batch: int, device,
                build: Callable[[], torch.Tensor]) -> TokenTiles:
    """The tiles of this call of spec `spec` (its hash: two specs may read the same inputs) at these
    tiles: built from `build()` (the generated layout kernels' classes), or reused while the inputs
    and tables they read are the same tensors, unmodified (the cache holds them, so an address cannot
    be reused by another tensor while its entry lives)."""
    tables = (*ctx.inputs.values(), *ctx.params.values())
    key = (spec, block_m, block_n, batch, str(device), ctx.Nq, ctx.N, tuple(sorted(ctx.sizes.items())),
           tuple(_identity(t) for t in tables))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key][0]
    tiles = TokenTiles.of(build(), block_m)
    _CACHE[key] = (tiles, tables)
    while len(_CACHE) > CACHED_LAYOUTS:
        _CACHE.popitem(last=False)
    return tiles
