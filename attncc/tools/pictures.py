"""Pictures of a spec at a small length: which pairs its mask keeps (and how much weight they get)
beside the tiles its chosen lowering visits (`attncc inspect SPEC --emit mask-png`).

The left panel is the dense float64 oracle at head 0 on fixed random q, k and the module's tables;
the right one is the kernel's tile grid: for `tiled`, the key range of each query tile from the
proven band, for `block_sparse` the layout as the runtime tiles it (`analysis.blocks.layout_tiles`), for
`token_blocks` the layout built from the picture's inputs (`analysis.token_layout.tile_classes`).
Reassociated lowerings (kernelized, FFT, rings, graph) have no score grid, so no tiles to skip.
matplotlib (the `plot` extra) is imported only when a picture is drawn.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..api import compile as compile_spec
from ..analysis.blocks import block_size, evaluate_layout, layout_tiles
from ..analysis.token_layout import EMPTY, FULL, tile_classes
from ..lang.source import AttnccError
from ..oracle.dense import dense_mask
from ..runtime.compiled import MAX_TILE
from .compare import make_module, random_inputs

TILED_TILE = 16  # the tiled kernels' tile edge on the CPU (Triton's interpreter) and in these pictures
SEED = 0


@dataclass(frozen=True)
class TileGrid:
    """The square tiles of `tile` tokens a kernel visits: visited[I, J] for query tile I, key tile J."""
    tile: int
    visited: torch.Tensor
    how: str

    @property
    def fraction(self) -> tuple[int, int]:
        return int(self.visited.sum()), self.visited.numel()


@dataclass(frozen=True)
class Picture:
    """What a mask picture shows, as numbers: the kept pairs, the weights, the tiles."""
    name: str
    lowering: str
    kept: torch.Tensor  # bool [Nq, N]
    weights: torch.Tensor | None  # float [Nq, N] at head 0, None where there is no matrix to tap
    tiles: TileGrid | None  # None: the lowering forms no score tiles


def tiled_grid(plan, sizes: dict, nq: int, nk: int) -> TileGrid:
    """Key tiles [i0 - hi, i1 - lo) of each query tile [i0, i1), as the tiled kernels loop."""
    lo, hi = plan.mask.bounds_at(sizes) if plan.mask.kind != "full" else (None, None)
    t = TILED_TILE
    rows, cols = -(-nq // t), -(-nk // t)
    visited = torch.zeros(rows, cols, dtype=torch.bool)
    for row in range(rows):
        i0, i1 = row * t, min(nq, row * t + t)
        k0 = 0 if hi is None else max(0, i0 - hi)
        k1 = nk if lo is None else min(nk, i1 - lo)
        if k1 > k0:
            visited[row, k0 // t:-(-k1 // t)] = True
    side = lambda b, inf: inf if b is None else str(b)  # noqa: E731
    band = "no band: every key tile" if (lo, hi) == (None, None) else \
        f"band {side(lo, '-oo')} <= i - j <= {side(hi, 'oo')}"
    runs = plan.entry.triton_runs  # sdpa: Triton runs the tiled kernel
    kernel = plan.lowering if runs is None else f"{plan.lowering} (the {runs} kernel)"
    return TileGrid(t, visited, f"{kernel}, {band}")


def block_sparse_grid(plan, sizes: dict, nq: int, nk: int) -> TileGrid:
    """The layout's blocks, cut to the proven band, over the tiles the runtime walks."""
    layout = plan.attrs["block_layout"]
    band = plan.mask.bounds_at(sizes)
    blocks = evaluate_layout(layout, sizes, nq, nk, band)
    block = block_size(layout, sizes)
    tile, visited = layout_tiles(block, blocks, nq, nk, MAX_TILE)
    return TileGrid(tile, visited, f"{plan.lowering}, layout over blocks of {block} tokens")


def token_grid(plan, sizes: dict, nq: int, nk: int, inputs: dict, params: dict) -> TileGrid:
    """The tiles of the layout built per call from these inputs, classified as the layout kernels do."""
    layout = plan.attrs["token_layout"]
    classes = tile_classes(layout, sizes, inputs, nq, nk, TILED_TILE, TILED_TILE, 1, params)[0]
    return TileGrid(TILED_TILE, classes != EMPTY, f"{plan.lowering}, layout from the inputs "
                    f"({int((classes == FULL).sum())} full)")


def tile_grid(plan, sizes: dict, nq: int, nk: int, inputs: dict | None = None,
              params: dict | None = None) -> TileGrid | None:
    """The tiles the chosen lowering visits (for a layout built per call: at these inputs), or None if
    it forms no score tiles."""
    if plan.entry.token_tiles:
        return token_grid(plan, sizes, nq, nk, inputs or {}, params or {})
    if plan.entry.block_sparse:
        return block_sparse_grid(plan, sizes, nq, nk)
    if plan.entry.band_tiles:
        return tiled_grid(plan, sizes, nq, nk)
    return None


def picture(cls, tokens: int = 64, sizes: dict | None = None) -> Picture:
    """The numbers a mask picture draws, for a compiled module class at Nq = N = tokens."""
    with torch.random.fork_rng(devices=[]):  # tables initialized at random (normal(...)) draw the same
        torch.manual_seed(SEED)
        module = make_module(cls, heads=2, dim=16, dim_v=16, seed=SEED, **(sizes or {})).eval()
    q, k, v, inputs = random_inputs(cls, 1, 2, tokens, tokens, 16, 16, generator=torch.Generator().manual_seed(SEED))
    params = {n: p.detach().double() if p.is_floating_point() else p.detach()
              for n, p in module.named_parameters() if "." not in n}
    tables = {**inputs, **module.graph_tables(inputs, torch.float64)}
    all_sizes = {**module.sizes, **module.fixed, "N": tokens, "Nq": tokens}
    kept = dense_mask(cls.compilation.checked, params, tables, all_sizes, (1, 2, tokens, tokens))[0, 0]
    try:
        with torch.no_grad():
            weights = module.tap(q, k, v, **inputs)[0, 0].abs()
    except AttnccError:  # e.g. `normalize ista`: no attention matrix
        weights = None
    plan = cls.compilation.plan
    grid = tile_grid(plan, all_sizes, tokens, tokens, inputs, params)
    return Picture(cls.SPEC_NAME, plan.lowering, kept, weights, grid)


def import_pyplot():
    try:
        import matplotlib
    except ImportError:
        raise AttnccError("drawing pictures needs matplotlib: pip install 'attncc[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def draw_pattern(ax, pic: Picture) -> None:
    """Left panel: kept pairs, shaded by the magnitude of their weight (head 0)."""
    n = pic.kept.shape[1]
    if pic.weights is None:
        image, label = pic.kept.float().numpy(), "kept pairs"
        ax.imshow(image, cmap="Greys", vmin=0, vmax=1, interpolation="nearest", extent=(0, n, pic.kept.shape[0], 0))
    else:
        image = torch.where(pic.kept, pic.weights.float(), torch.tensor(float("nan"))).numpy()
        label = "kept pairs, |P[i, j]| at head 0"
        ax.set_facecolor("0.85")  # masked pairs: grey
        shown = ax.imshow(image, cmap="viridis", interpolation="nearest", extent=(0, n, pic.kept.shape[0], 0))
        ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    kept = int(pic.kept.sum())
    ax.set_title(f"{pic.name}: {label}\n{kept} of {pic.kept.numel()} pairs kept", fontsize=9)
    ax.set_xlabel("key j")
    ax.set_ylabel("query i")


def draw_tiles(ax, pic: Picture) -> None:
    """Right panel: visited tiles shaded, skipped tiles white, the kept pairs over them."""
    nq, n = pic.kept.shape
    grid = pic.tiles
    if grid is None:
        ax.set_title(f"lowering {pic.lowering}: no score tiles\n(reassociated: no N x N score grid to skip in)",
                     fontsize=9)
    else:
        t = grid.tile
        shade = grid.visited.float().repeat_interleave(t, 0).repeat_interleave(t, 1)[:nq, :n].numpy()
        ax.imshow(shade, cmap="Blues", vmin=0, vmax=2.5, interpolation="nearest", extent=(0, n, nq, 0))
        for edge in range(0, max(nq, n) + 1, t):
            ax.axhline(edge, color="0.6", linewidth=0.5)
            ax.axvline(edge, color="0.6", linewidth=0.5)
        visited, total = grid.fraction
        ax.set_title(f"{grid.how}\n{visited} of {total} tiles of {t} x {t} visited ({visited / total:.0%})",
                     fontsize=9)
    overlay = torch.zeros(nq, n, 4)
    overlay[..., 3] = pic.kept.float() * 0.55  # kept pairs: translucent black over the tiles
    ax.imshow(overlay.numpy(), interpolation="nearest", extent=(0, n, nq, 0))
    ax.set_xlim(0, n)
    ax.set_ylim(nq, 0)
    ax.set_aspect("equal")
    ax.set_xlabel("key j")


def write_png(pic: Picture, path: str | Path) -> None:
    """Both panels side by side, written deterministically (no version or date in the file)."""
    plt = import_pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.6), dpi=100)
    try:
        draw_pattern(left, pic)
        draw_tiles(right, pic)
        fig.tight_layout()
        fig.savefig(path, format="png", metadata={"Software": None})
    finally:
        plt.close(fig)


def mask_png(spec, path: str | Path, tokens: int = 64, sizes: dict | None = None,
             lowering: str | None = None) -> Picture:
    """Compile a spec, draw its mask picture to `path`, and return the numbers drawn."""
    cls = compile_spec(spec, lowering=lowering)
    if getattr(cls, "MAPS", None):
        raise AttnccError(f"`{cls.SPEC_NAME}` is composed of the maps {', '.join(cls.MAPS)}: a mask picture draws "
                          "one attention; inspect a map as a spec of its own")
    pic = picture(cls, tokens, sizes)
    write_png(pic, path)
    return pic
