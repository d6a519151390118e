"""Block layouts of masks that read run-time inputs (token metadata), built on the device per call.

A mask such as `doc[i] == doc[j] and j <= i` reads a call-time input, so no layout exists at compile
time. What does exist is a rule for each score tile (a block of queries I times a block of keys J):

1. Token metadata. The maximal subexpressions that read an input and only one of i and j (`doc[i]`,
   `doc[j]`, `j < prefix[0]`) are evaluated per token, and each block keeps its minimum and maximum:
   O(N) work and memory. Over a tile, i and j range over their blocks' tokens.
2. Interval rules turn those ranges into a bound on every int subexpression and, for each condition,
   a pair (any, all): `any` false proves that no pair of the tile holds (the tile is skipped), `all`
   true proves that every pair holds (the mask need not be evaluated inside):

       a == b:  any = lo(a) <= hi(b) and lo(b) <= hi(a),   all = lo(a) = hi(a) = lo(b) = hi(b)
       a <= b:  any = lo(a) <= hi(b),                       all = hi(a) <= lo(b)
       and: any = any1 and any2, all = all1 and all2;   or: any = any1 or any2, all = all1 or all2;
       not: any = not all1, all = not any1;   a + b: [lo(a) + lo(b), hi(a) + hi(b)], ...

   Both are sound (any over-approximates "some pair holds", all under-approximates "every pair
   holds"); an operator without a rule or a float gives (true, false): visit the tile and evaluate
   the mask there. For sorted ids (packed documents) the document rule is exact.
3. A mask whose inputs are read otherwise (`tree[i, j]`, a lookup reading both i and j) has no such
   rule: its tiles are classified by evaluating the mask on every pair of each tile, once per call
   (not per head), and the classes are reused while the inputs are unchanged.

A tile is full only if it lies inside Nq and N (kernels load a full tile's rows without bounds).
The same rules evaluate torch tensors (here: the cost model and the tests' reference) and print
Triton code (attncc/emit/triton_layout.py), so the kernel and this evaluator cannot differ.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..lang.evaluate import Env, evaluate
from ..lang.expr import BOOL, INT, TExpr, postorder
from ..lang.operators import fmt
from .structure import random_env

EMPTY, PARTIAL, FULL = 0, 1, 2  # tile classes


@dataclass(frozen=True)
class TokenLayout:
    """How a mask's tiles are classified at run time: from per-block bounds of token metadata
    (`bounded`), or by evaluating the mask on every pair of each tile."""
    mask: TExpr
    queries: tuple[TExpr, ...]  # metadata read per query token (i only, or neither i nor j)
    keys: tuple[TExpr, ...]  # metadata read per key token (j only)
    bounded: bool

    def describe(self) -> str:
        if not self.bounded:
            return f"tiles classified per call by evaluating {fmt(self.mask)} on every pair of each tile"
        meta = ", ".join(fmt(m) for m in (*self.queries, *self.keys))
        return f"tiles classified per call from the block min/max of {meta}"


def _reads(t: TExpr) -> tuple[frozenset, bool]:
    """(index variables t reads, whether it reads an input)."""
    return frozenset(e.value for e in t.walk() if e.op == "var"), any(e.op == "input" for e in t.walk())


def metadata_of(mask: TExpr) -> tuple[list[TExpr], list[TExpr]]:
    """The maximal int or bool subexpressions of the mask that read an input and at most one of i, j
    (not h): (query side, key side), each in order of first appearance."""
    queries, keys, stack = [], [], [mask]
    while stack:
        t = stack.pop()
        names, reads_input = _reads(t)
        if reads_input and t.type in (INT, BOOL) and names in ({"i"}, {"j"}, frozenset()):
            side = keys if names == {"j"} else queries
            if t not in side:
                side.append(t)
            continue
        stack.extend(reversed(t.args))
    return queries, keys


def find_token_layout(mask: TExpr | None) -> TokenLayout | None:
    """The run-time layout of a mask that reads a call-time input: from block bounds of its metadata
    when every input is read inside one and the rules then say something, else evaluated per tile;
    None if it reads no input, or reads the head (whose tiles would differ per head)."""
    if mask is None or not mask.uses("input") or mask.uses("var", "h") or mask.uses("var", "hk"):
        return None
    queries, keys = metadata_of(mask)
    layout = TokenLayout(mask, tuple(queries), tuple(keys), bounded=True)
    leaves = {*queries, *keys}
    outside = any(e.op == "input" for e in postorder(mask, lambda e: e not in leaves) if e not in leaves)
    any_, all_ = tile_rule(layout, TorchLib(), _symbolic_env(layout))
    if leaves and not outside and not (any_ is True and all_ is False):
        return layout
    return TokenLayout(mask, (), (), bounded=False)


# ---------------------------------------------------------------------- interval rules
class TorchLib:
    """The rules' operations on torch tensors (and Python numbers)."""

    @staticmethod
    def minimum(a, b):
        return torch.minimum(torch.as_tensor(a), torch.as_tensor(b))

    @staticmethod
    def maximum(a, b):
        return torch.maximum(torch.as_tensor(a), torch.as_tensor(b))

    @staticmethod
    def where(c, a, b):
        return torch.where(torch.as_tensor(c), torch.as_tensor(a), torch.as_tensor(b))


class _Rules:
    """The interval rules over one mask: ints are ("i", lo, hi), conditions ("b", any, all), None unknown."""

    def __init__(self, lib, env: dict):
        self.lib, self.bounds, self.sizes, self.rsizes = lib, env["bounds"], env["sizes"], env["rsizes"]
        self.i, self.j = env["i"], env["j"]

    def node(self, t: TExpr, a: list):
        if t in self.bounds:
            lo, hi = self.bounds[t]
            return ("b", hi != 0, lo != 0) if t.type == BOOL else ("i", lo, hi)
        if t.op == "const" and t.type in (INT, BOOL):
            return ("b", bool(t.value), bool(t.value)) if t.type == BOOL else ("i", t.value, t.value)
        if t.op == "var" and t.value in ("i", "j"):
            return ("i", *(self.i if t.value == "i" else self.j))
        if t.op in ("size", "rsize") and t.type == INT:
            table = self.sizes if t.op == "size" else self.rsizes
            return ("i", table[t.value], table[t.value]) if t.value in table else None
        if t.type == BOOL:
            return self.condition(t, a)
        if t.type != INT or any(x is None or x[0] != "i" for x in a):
            return None
        return self.integer(t, [x[1:] for x in a])

    def integer(self, t: TExpr, bounds: list):
        lib = self.lib
        if t.op == "add":
            return ("i", bounds[0][0] + bounds[1][0], bounds[0][1] + bounds[1][1])
        if t.op == "sub":
            return ("i", bounds[0][0] - bounds[1][1], bounds[0][1] - bounds[1][0])
        if t.op == "neg":
            return ("i", -bounds[0][1], -bounds[0][0])
        if t.op == "mul" and t.args[1].op == "const":
            c, (lo, hi) = t.args[1].value, bounds[0]
            return ("i", c * lo, c * hi) if c >= 0 else ("i", c * hi, c * lo)
        if t.op == "call" and t.value in ("min", "max"):
            f = lib.minimum if t.value == "min" else lib.maximum
            lo, hi = bounds[0]
            for b in bounds[1:]:
                lo, hi = f(lo, b[0]), f(hi, b[1])
            return ("i", lo, hi)
        if t.op == "call" and t.value == "abs":
            lo, hi = bounds[0]
            return ("i", lib.where(lo >= 0, lo, lib.where(hi <= 0, -hi, 0)), lib.maximum(-lo, hi))
        return None

    @staticmethod
    def condition(t: TExpr, a: list):
        unknown = ("b", True, False)
        if t.op in ("and_", "or_", "not"):
            a = [x if x is not None else unknown for x in a]
            if t.op == "not":
                return ("b", _not(a[0][2]), _not(a[0][1]))
            join = _and if t.op == "and_" else _or
            return ("b", join(a[0][1], a[1][1]), join(a[0][2], a[1][2]))
        if t.op not in ("le", "lt", "ge", "gt", "eq", "ne") or any(x is None or x[0] != "i" for x in a):
            return unknown
        (_, alo, ahi), (_, blo, bhi) = a
        if t.op in ("ge", "gt"):  # a >= b is b <= a
            (alo, ahi), (blo, bhi) = (blo, bhi), (alo, ahi)
        if t.op in ("le", "ge"):
            return ("b", alo <= bhi, ahi <= blo)
        if t.op in ("lt", "gt"):
            return ("b", alo < bhi, ahi < blo)
        meet = (alo <= bhi) & (blo <= ahi)
        single = (alo == ahi) & (blo == bhi) & (alo == blo)
        return ("b", meet, single) if t.op == "eq" else ("b", _not(single), _not(meet))


def _and(x, y):
    if x is True or y is False:
        return y
    if y is True or x is False:
        return x
    return x & y


def _or(x, y):
    if x is False or y is True:
        return y
    if y is False or x is True:
        return x
    return x | y


def _not(x):
    return (not x) if isinstance(x, bool) else ~x


def tile_rule(layout: TokenLayout, lib, env: dict):
    """(any, all) of the layout's mask over a tile: env gives `bounds` {metadata: (lo, hi)}, `i` and
    `j` (lo, hi) of the tile's tokens, `sizes` and `rsizes`. Python bools where the rule is constant."""
    rules = _Rules(lib, env)
    leaves = {*layout.queries, *layout.keys}
    done: dict = {}
    for t in postorder(layout.mask, lambda e: e not in leaves):
        done[t] = rules.node(t, [done[x] for x in t.args] if t not in leaves else [])
    result = done[layout.mask]
    return (True, False) if result is None else tuple(result[1:])


class _AnySizes(dict):
    def __contains__(self, key):
        return True

    def __missing__(self, key):
        return torch.ones((), dtype=torch.int32)


def _symbolic_env(layout: TokenLayout) -> dict:
    """A tile whose bounds are all tensors: a rule that stays a Python constant says nothing."""
    z = torch.zeros(2, dtype=torch.int32)
    return {"bounds": {m: (z, z + 1) for m in (*layout.queries, *layout.keys)}, "sizes": _AnySizes(),
            "rsizes": _AnySizes(), "i": (z, z + 1), "j": (z, z + 1)}


# ---------------------------------------------------------------------- evaluation (cost model, tests)
def block_bounds(values: torch.Tensor, n: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) over blocks of `block` tokens of int values [B, n]."""
    pad = -(-n // block) * block - n
    big = torch.iinfo(torch.int32).max
    lo = torch.nn.functional.pad(values, (0, pad), value=big).view(values.shape[0], -1, block).amin(-1)
    hi = torch.nn.functional.pad(values, (0, pad), value=-big).view(values.shape[0], -1, block).amax(-1)
    return lo, hi


def _per_token(t: TExpr, side: str, n: int, env: Env, batch: int) -> torch.Tensor:
    """A metadata expression at every token of one side, as int32 [B, n] (bools as 0 / 1)."""
    shape = (1, 1, n, 1) if side == "i" else (1, 1, 1, n)
    grid = torch.arange(n, dtype=torch.int32).view(shape)
    value = torch.as_tensor(evaluate(t, Env(**{**env.__dict__, side: grid}))).to(torch.int32)
    value = value.reshape(*([1] * (4 - value.dim())), *value.shape)
    return value.expand(value.shape[0], 1, *shape[2:]).reshape(-1, n).expand(batch, n)


def tile_classes(layout: TokenLayout, sizes: dict, inputs: dict, nq: int, n: int, block_m: int, block_n: int,
                 batch: int, params: dict | None = None) -> torch.Tensor:
    """int8 [B, ceil(Nq / block_m), ceil(N / block_n)]: EMPTY, PARTIAL or FULL per tile, as the
    generated layout kernels compute it (their reference, and the cost model's count)."""
    rsizes = {"N": n, "Nq": nq}
    env = Env(sizes=sizes, rsizes=rsizes, inputs=inputs, params=params or {}, float_dtype=torch.float32)
    if not layout.bounded:
        return _evaluated_classes(layout, env, nq, n, block_m, block_n, batch)
    bounds = {}
    for side, exprs, count, block in (("i", layout.queries, nq, block_m), ("j", layout.keys, n, block_n)):
        for t in exprs:
            lo, hi = block_bounds(_per_token(t, side, count, env, batch), count, block)
            view = (batch, -1, 1) if side == "i" else (batch, 1, -1)
            bounds[t] = (lo.view(view), hi.view(view))
    qb, kb = -(-nq // block_m), -(-n // block_n)
    rows = torch.arange(qb, dtype=torch.int32).view(1, -1, 1)
    cols = torch.arange(kb, dtype=torch.int32).view(1, 1, -1)
    i = (rows * block_m, torch.clamp(rows * block_m + block_m, max=nq) - 1)
    j = (cols * block_n, torch.clamp(cols * block_n + block_n, max=n) - 1)
    env = {"bounds": bounds, "sizes": sizes, "rsizes": rsizes, "i": i, "j": j}
    any_, all_ = (torch.as_tensor(x).expand(batch, qb, kb) for x in tile_rule(layout, TorchLib(), env))
    return _classes(any_, all_, nq, n, block_m, block_n)


def _classes(any_: torch.Tensor, all_: torch.Tensor, nq: int, n: int, block_m: int, block_n: int) -> torch.Tensor:
    """EMPTY / PARTIAL / FULL; a tile is FULL only inside Nq and N (kernels load its rows unmasked)."""
    rows = torch.arange(any_.shape[1]).view(1, -1, 1)
    cols = torch.arange(any_.shape[2]).view(1, 1, -1)
    whole = (rows * block_m + block_m <= nq) & (cols * block_n + block_n <= n)
    return torch.where(all_ & whole, FULL, torch.where(any_, PARTIAL, EMPTY)).to(torch.int8)


def _evaluated_classes(layout: TokenLayout, env: Env, nq: int, n: int, block_m: int, block_n: int,
                       batch: int) -> torch.Tensor:
    i = torch.arange(nq, dtype=torch.int32).view(1, 1, -1, 1)
    j = torch.arange(n, dtype=torch.int32).view(1, 1, 1, -1)
    m = torch.as_tensor(evaluate(layout.mask, Env(**{**env.__dict__, "i": i, "j": j}))).bool()
    m = m.reshape(*([1] * (4 - m.dim())), *m.shape)[:, 0].expand(batch, nq, n)
    qb, kb = -(-nq // block_m), -(-n // block_n)
    tiles = lambda fill: torch.nn.functional.pad(m, (0, kb * block_n - n, 0, qb * block_m - nq), value=fill).view(  # noqa: E731
        batch, qb, block_m, kb, block_n)
    return _classes(tiles(False).any(4).any(2), tiles(True).all(4).all(2), nq, n, block_m, block_n)


def token_layout_holds(layout: TokenLayout, signature, samples: int = 4, seed: int = 0) -> bool:
    """Cross-check on random lengths, tables and inputs: every tile holding a kept pair is visited,
    and a tile classified full keeps every pair (the classes against the mask evaluated per tile)."""
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    for _ in range(samples):
        env = random_env(signature, rng, g)
        nq, n = env.rsizes["Nq"], env.rsizes["N"]
        bm, bn = rng.randint(1, 8), rng.randint(1, 8)
        got = tile_classes(layout, env.sizes, env.inputs, nq, n, bm, bn, 1, env.params)
        exact = tile_classes(TokenLayout(layout.mask, (), (), False), env.sizes, env.inputs, nq, n, bm, bn, 1, env.params)
        if ((exact != EMPTY) & (got == EMPTY)).any() or ((got == FULL) & (exact != FULL)).any():
            return False
    return True
