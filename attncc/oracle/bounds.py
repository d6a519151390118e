"""Table lookups that clamp: where an index of a lookup leaves its table.

The language clamps every index into range (docs/language.md, section 13), so an out-of-range
index reads an edge entry silently; FlexAttention raises instead. This finds, densely over the
pair grid [B, H, Nq, N], the first (b, h, i, j) at which each index of each lookup lies outside its
dimension: lookups of the score, bias and weight at the pairs the mask keeps, lookups of the mask
at every pair. Both branches of a `where` are checked (both are evaluated); an index computed from
`dot(...)` is not (it needs q and k).
"""
from __future__ import annotations

import torch

from .dense import evaluate_mask, pair_env
from ..frontend.check import CheckedSpec
from ..lang.evaluate import evaluate
from ..lang.expr import TExpr


def _lookups(t: TExpr | None) -> list[TExpr]:
    found: list[TExpr] = []
    for e in (t.walk() if t is not None else ()):
        if e.op in ("param", "input") and e not in found and not any(a.uses("dot") for a in e.args):
            found.append(e)
    return found


def _dims(table: torch.Tensor, lookup: TExpr) -> tuple[int, ...]:
    """The dimensions the lookup indexes (an input may carry a leading batch dimension)."""
    return tuple(table.shape[table.dim() - len(lookup.args):])


def clamped_lookups(spec: CheckedSpec, params: dict, inputs: dict, sizes: dict, shape: tuple) -> list[str]:
    """One line per lookup index that leaves its table somewhere on the grid `shape` [B, H, Nq, N]."""
    B, H, Nq, N = shape
    rsizes = {"N": N, "Nq": Nq, "H": H, "D": sizes.get("D", 0), "E": sizes.get("E", 0), "Hkv": sizes.get("Hkv", H)}
    env = pair_env(sizes, rsizes, torch.arange(Nq, dtype=torch.int32), params, inputs, torch.float64, B)
    kept = evaluate_mask(spec, env, shape, "cpu")
    every = torch.ones((), dtype=torch.bool).expand(shape)
    scores = spec.logits if spec.logits is not None else spec.weight
    problems: list[str] = []
    for where, t in ((kept, scores), (every, spec.mask)):
        for lookup in _lookups(t):
            table = (params if lookup.op == "param" else inputs)[lookup.value]
            for d, (index, n) in enumerate(zip(lookup.args, _dims(table, lookup))):
                value = evaluate(index, env).long().expand(shape)
                outside = where & ((value < 0) | (value >= n))
                if outside.any():
                    b, h, i, j = (int(x) for x in outside.nonzero()[0])
                    problems.append(f"`{lookup.value}` index {d + 1} of {len(lookup.args)} is {int(value[b, h, i, j])} "
                                    f"at b={b}, h={h}, i={i}, j={j}, outside 0 .. {n - 1}: the lookup clamps it")
    return problems
