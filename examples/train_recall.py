"""Train a small model on associative recall with three attention specs and plot the loss curves.

The task (long-range retrieval): a sequence holds `pairs` memory tokens, each carrying a key and a
value (embedded and summed), then `queries` query tokens carrying a key seen earlier; the model
must output that key's value at each query. Keys are distinct within a sequence, values random.
Queries sit after every memory, so causal attention loses nothing; a query must reach back up to
pairs + queries - 1 tokens.

The model: embeddings, two pre-norm blocks (attncc.layer of the spec, an MLP), a readout. Each spec
trains from the same initialization and data:
    causal softmax               examples/causal.attn
    causal linear (elu + 1)      examples/linear_elu_causal.attn (prefix sums, O(N))
    causal sliding window        mask(i, j) = j <= i and i - j < window: sees only the last memories

    python examples/train_recall.py [--steps 500] [--png docs/training_curves.png]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

EXAMPLES = Path(__file__).resolve().parent
sys.path.insert(0, str(EXAMPLES.parent))  # run from a checkout: this attncc, not an installed one

import attncc  # noqa: E402

CAUSAL_WINDOW = """attention causal_window {
    size window = 8
    mask(i, j) = j <= i and i - j < window
    normalize softmax
}"""

SPECS = {  # label -> (spec, sizes)
    "causal softmax": (EXAMPLES / "causal.attn", {}),
    "causal linear (elu + 1)": (EXAMPLES / "linear_elu_causal.attn", {}),
    "causal window 8": (CAUSAL_WINDOW, {}),
}


def recall_batch(n: int, pairs: int, keys: int, values: int, queries: int, gen: torch.Generator):
    """(key ids, value ids, targets): [n, pairs + queries] token ids; value id `values` marks a
    query; targets [n, queries] are the values of the queried keys."""
    key = torch.stack([torch.randperm(keys, generator=gen)[:pairs] for _ in range(n)])
    value = torch.randint(values, (n, pairs), generator=gen)
    asked = torch.randint(pairs, (n, queries), generator=gen)
    key_ids = torch.cat([key, key.gather(1, asked)], 1)
    value_ids = torch.cat([value, torch.full((n, queries), values)], 1)
    return key_ids, value_ids, value.gather(1, asked)


class Block(nn.Module):
    def __init__(self, spec, dim: int, heads: int, **sizes):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = attncc.layer(spec, dim, heads, batch_first=True, **sizes)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attention(self.norm1(x))[0]
        return x + self.mlp(self.norm2(x))


class RecallModel(nn.Module):
    def __init__(self, spec, keys: int, values: int, length: int, dim: int = 64, heads: int = 4,
                 layers: int = 2, **sizes):
        super().__init__()
        self.key, self.value = nn.Embedding(keys, dim), nn.Embedding(values + 1, dim)
        self.position = nn.Embedding(length, dim)
        self.blocks = nn.Sequential(*[Block(spec, dim, heads, **sizes) for _ in range(layers)])
        self.norm, self.readout = nn.LayerNorm(dim), nn.Linear(dim, values)

    def forward(self, key_ids, value_ids):
        positions = torch.arange(key_ids.shape[1], device=key_ids.device)
        x = self.key(key_ids) + self.value(value_ids) + self.position(positions)
        return self.readout(self.norm(self.blocks(x)))


def train(spec, sizes: dict | None = None, steps: int = 500, pairs: int = 24, queries: int = 8, keys: int = 64,
          values: int = 16, batch: int = 64, lr: float = 3e-3, seed: int = 0) -> dict:
    """Train one model; returns the loss per step and the accuracy on 1024 fresh sequences."""
    torch.manual_seed(seed)
    model = RecallModel(spec, keys, values, pairs + queries, **(sizes or {}))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
    gen = torch.Generator().manual_seed(seed)
    losses, start = [], time.perf_counter()
    for _ in range(steps):
        key_ids, value_ids, target = recall_batch(batch, pairs, keys, values, queries, gen)
        logits = model(key_ids, value_ids)[:, pairs:]
        loss = nn.functional.cross_entropy(logits.reshape(-1, values), target.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    with torch.no_grad():
        key_ids, value_ids, target = recall_batch(1024, pairs, keys, values, queries,
                                                  torch.Generator().manual_seed(seed + 1))
        accuracy = (model(key_ids, value_ids)[:, pairs:].argmax(-1) == target).float().mean().item()
    return {"losses": losses, "accuracy": accuracy, "seconds": seconds}


def plot(results: dict, path: Path, chance: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, r in results.items():
        losses = torch.tensor(r["losses"])
        smooth = losses.unfold(0, 20, 1).mean(-1) if len(losses) >= 20 else losses
        ax.plot(range(len(losses) - len(smooth) + 1, len(losses) + 1), smooth,
                label=f"{label}: accuracy {r['accuracy']:.1%}")
    ax.axhline(chance, color="gray", linestyle=":", label="chance (log #values)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (20-step mean)")
    ax.set_title("Associative recall, 24 key-value pairs, 8 queries")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--png", type=Path, default=EXAMPLES.parent / "docs" / "training_curves.png")
    args = parser.parse_args()
    torch.set_num_threads(1)  # matrices this small gain nothing from threads, and lose much on a busy machine
    results = {}
    for label, (spec, sizes) in SPECS.items():
        results[label] = r = train(spec, sizes, steps=args.steps)
        print(f"{label:26} final loss {sum(r['losses'][-20:]) / 20:.3f}  accuracy {r['accuracy']:.1%}  "
              f"({r['seconds']:.0f} s)")
    plot(results, args.png, chance=float(torch.log(torch.tensor(16.0))))
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
