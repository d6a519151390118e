"""Helpers shared by the benchmark scripts: paths, timing, module setup, tables and result files.

Only torch and attncc are needed at import time; rich is optional (tables fall back to markdown),
so the GPU script also runs where rich is not installed.
"""
from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from attncc.tools.benchmark import environment, fmt, instantiate, markdown_table  # noqa: F401  (shared with attncc bench)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
RESULTS = ROOT / "benchmarks" / "results"


def example_paths(names=None) -> list[Path]:
    """examples/<name>.attn for the given names, or every example (sorted)."""
    if names is None:
        return sorted(EXAMPLES.glob("*.attn"))
    return [EXAMPLES / f"{name}.attn" for name in names]


def parse_ints(text: str) -> list[int]:
    """'1024,2048' -> [1024, 2048] (for --sizes style flags)."""
    return [int(x) for x in text.replace(" ", "").split(",") if x]


# ---------------------------------------------------------------------- timing
def median_ms(fn, repeats: int = 5, warmup: int = 1, budget_s: float | None = None, sync=None) -> float:
    """Median wall time of fn() in milliseconds over up to `repeats` timed calls after `warmup`
    untimed ones; with budget_s, stops early once the timed calls have taken that long (at least one
    call). sync (e.g. torch.cuda.synchronize) runs after each call."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
        sync()
    samples = []
    while len(samples) < max(1, repeats) and (budget_s is None or sum(samples) < budget_s):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(samples)


# ---------------------------------------------------------------------- compiled modules
def call_inputs(cls, batch: int, tokens: int, device="cpu", seed: int = 0) -> dict:
    """Call-time inputs of the examples: `doc` = sorted random document ids [batch, tokens]."""
    inputs = {}
    gen = torch.Generator().manual_seed(seed)
    for name in cls.INPUTS:
        if name != "doc":
            raise NotImplementedError(f"no benchmark data for input `{name}`")
        docs = torch.randint(0, 8, (batch, tokens), generator=gen).sort(dim=-1).values
        inputs[name] = docs.to(device)
    return inputs


def qkv(batch: int, heads: int, tokens: int, dim: int, dtype=torch.float32, device="cpu", seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, tokens, dim, generator=gen).to(device=device, dtype=dtype) for _ in range(3)]


# ---------------------------------------------------------------------- tables and files
def print_table(title: str, headers: list[str], rows: list[list]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(f"\n## {title}\n\n{markdown_table(headers, rows)}\n")
        return
    table = Table(title=title)
    for h in headers:
        table.add_column(h, justify="left" if h == headers[0] else "right")
    for row in rows:
        table.add_row(*(fmt(c) for c in row))
    Console(width=max(120, shutil.get_terminal_size().columns)).print(table)


def write_results(json_path: Path, data: dict, sections: list[tuple[str, list[str], list[list]]],
                  notes: str = "") -> None:
    """Write data as JSON and the (title, headers, rows) sections as markdown next to it (.md)."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"environment": environment(), **data}, indent=2) + "\n")
    env = ", ".join(f"{k} {v}" for k, v in environment().items() if v is not None)
    md = [f"Environment: {env}.\n"] + [f"## {title}\n\n{markdown_table(headers, rows)}\n" for title, headers, rows in sections]
    json_path.with_suffix(".md").write_text("\n".join(md) + (f"\n{notes.strip()}\n" if notes else ""))
    print(f"wrote {json_path} and {json_path.with_suffix('.md')}")
