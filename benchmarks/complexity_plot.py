"""Plot the cost model: estimated time of every candidate lowering against N, per mask family.

    python benchmarks/complexity_plot.py            # writes docs/complexity.png, prints crossovers

The estimates are the roofline of attncc.plan.select (not measurements): they show which algorithm the
compiler picks at which length, and where the candidates cross.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import attncc

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ["causal", "sliding_window", "hypercube", "block_diagonal", "linear_elu_causal", "toeplitz_linear",
            "rpe_performer", "grid_rpe", "ripple", "gkat", "retention"]
LENGTHS = [2 ** p for p in range(9, 17)]  # 512 .. 64k


def estimates(name: str) -> tuple[dict[str, list[float]], list[str]]:
    """{candidate: [ms at each length]}, and the chosen candidate at each length."""
    times: dict[str, list[float]] = {}
    chosen = []
    for n in LENGTHS:
        plan = attncc.build(str(ROOT / "examples" / f"{name}.attn"), sizes={"N": n, "Nq": n}).plan
        chosen.append(plan.lowering)
        for c in plan.candidates:
            times.setdefault(c.name, []).append(c.seconds(plan.sizes) * 1e3)
    return times, chosen


def main() -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "docs" / "complexity.png"))
    args = parser.parse_args()
    rows = -(-len(FAMILIES) // 4)
    fig, axes = plt.subplots(rows, 4, figsize=(16, 3.5 * rows), sharex=True, squeeze=False)
    for ax, name in zip(axes.flat, FAMILIES):
        times, chosen = estimates(name)
        for candidate, ms in times.items():
            ax.loglog(LENGTHS, ms, marker="o", markersize=3, label=candidate)
        ax.set_title(name, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        switches = [f"{chosen[k]} from N={LENGTHS[k]}" for k in range(len(LENGTHS)) if k == 0 or chosen[k] != chosen[k - 1]]
        print(f"{name:18s} " + "; ".join(switches))
    for ax in axes.flat[len(FAMILIES):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("tokens N (= Nq)")
    for ax in axes[:, 0]:
        ax.set_ylabel("estimated ms (B=1, H=8, d=64)")
    fig.suptitle("attncc cost model: roofline estimates per candidate lowering", fontsize=12)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
