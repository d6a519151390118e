"""Run-time block layouts (attncc/analysis/token_layout.py): the lists of tiles the Triton kernels
walk, built on the device from the tile classes, and a cache that keeps them while the inputs they
were built from are unchanged."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["TokenTiles", "token_tiles", "tile_lists"]

CACHED_LAYOUTS = 16


def tile_lists(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(count [B, R] int32, index [B, R, C] int32) of a bool [B, R, C]: per row, the columns kept,
    ascending, first (the rest of the row is padding). On the device, with no host sync."""
    count = keep.sum(-1, dtype=torch.int32)
    index = torch.sort((~keep).to(torch.int8), dim=-1, stable=True).indices.to(torch.int32)
    return count.contiguous(), index.contiguous()


@dataclass(frozen=True)
class TokenTiles:
    """The tiles of one call: classes int8 [B, QB, KB] (0 empty, 1 partial, 2 full), the partial and
    full key tiles of each query tile (forward), the visited key tiles of each query tile (dQ) and
    the visited query tiles of each key tile (dK, dV)."""
    classes: torch.Tensor
    part_count: torch.Tensor
    part_index: torch.Tensor
    full_count: torch.Tensor
    full_index: torch.Tensor
    row_count: torch.Tensor
    row_index: torch.Tensor
    col_count: torch.Tensor
    col_index: torch.Tensor

    @classmethod
    def of(cls, classes: torch.Tensor) -> "TokenTiles":
        visited = classes != 0
        return cls(classes, *tile_lists(classes == 1), *tile_lists(classes == 2), *tile_lists(visited),
                   *tile_lists(visited.transpose(1, 2)))


_CACHE: OrderedDict = OrderedDict()


def _identity(t: torch.Tensor) -> tuple:
    return (t.data_ptr(), t._version, tuple(t.shape), tuple(t.stride()), t.dtype, t.device)


def token_tiles(ctx, key: tuple, build: Callable[[], torch.Tensor]) -> TokenTiles:
    """The tiles of this call: built by `build()` (the generated layout kernels' classes), or reused
    while the inputs and tables they read are the same tensors, unmodified (the cache keeps them
    alive, so an address cannot be reused by another tensor while its entry lives)."""
    tables = (*ctx.inputs.values(), *ctx.params.values())
    full_key = (key, ctx.Nq, ctx.N, tuple(sorted(ctx.sizes.items())), tuple(_identity(t) for t in tables))
    if full_key in _CACHE:
        _CACHE.move_to_end(full_key)
        return _CACHE[full_key][0]
    tiles = TokenTiles.of(build())
    _CACHE[full_key] = (tiles, tables)
    while len(_CACHE) > CACHED_LAYOUTS:
        _CACHE.popitem(last=False)
    return tiles
