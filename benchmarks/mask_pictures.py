"""Draw the mask picture of every family in docs/masks.md (`attncc inspect SPEC --emit mask-png`).

    python benchmarks/mask_pictures.py            # writes docs/img/masks/<example>.png

Each picture is N = 64 tokens: the pairs the mask keeps, shaded by their weight at head 0 (the dense
oracle on fixed random q, k), beside the 16-token tiles the chosen lowering visits. Sizes are
shrunk where the default would not show at N = 64 (a window of 8, blocks of 16, a grid of 8 columns).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from attncc.tools.pictures import mask_png

ROOT = Path(__file__).resolve().parent.parent
# example -> the sizes that make its structure visible at N = 64
FAMILIES = {
    "softmax": {}, "causal": {}, "alibi": {}, "sliding_window": {"window": 8},
    "hypercube": {}, "block_diagonal": {"chunk": 16}, "linear_elu_causal": {}, "linear_elu": {},
    "retention": {}, "toeplitz_linear": {}, "grid_rpe": {"width": 8, "max_rows": 8},
    "ripple": {"width": 8, "rings": 2}, "gkat": {}, "document": {},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "masks"))
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, sizes in FAMILIES.items():
        pic = mask_png(ROOT / "examples" / f"{name}.attn", out / f"{name}.png", args.tokens, sizes)
        tiles = "no score tiles" if pic.tiles is None else "{} of {} tiles".format(*pic.tiles.fraction)
        print(f"{out / name}.png: {pic.lowering}, {tiles}")


if __name__ == "__main__":
    main()
