"""Typed index expressions: what the checker produces and every later stage consumes.

A `TExpr` is a small immutable tree. Leaves are constants, the index variables (`i` query token,
`j` key token, `h` head, `hk` its key/value head h // (H // Hkv)), sizes (declared `size`s and the
run-time sizes N, Nq, H, D, E; Hkv only in table shapes), `scale`,
and rows of q and k. Operators keep Python's meaning: `//` floors, `%` takes the divisor's sign,
`^`, `&`, `|` are bitwise on integers. Table and input lookups clamp every index into range.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar

from .source import Span, NO_SPAN

INT, FLOAT, BOOL, VEC = "int", "float", "bool", "vec"

# Run-time sizes, bound from the input tensors at call time.
RUNTIME_SIZES = {"N": "key tokens", "Nq": "query tokens", "H": "heads", "D": "q/k head dim", "E": "v head dim",
                 "Hkv": "key/value heads"}

@dataclass(frozen=True, eq=False)
class TExpr:
    """Equality ignores spans. Hashing and equality are iterative (the hash is cached at construction,
    from the children's), so that expressions thousands of levels deep never exhaust Python's stack."""
    op: str
    args: tuple["TExpr", ...] = ()
    value: Any = None
    type: str = FLOAT
    span: Span = field(default=NO_SPAN, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_hash", hash((self.op, tuple(hash(a) for a in self.args), self.value, self.type)))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        if not isinstance(other, TExpr):
            return NotImplemented
        pairs = [(self, other)]
        while pairs:
            a, b = pairs.pop()
            if a is b:
                continue
            if a._hash != b._hash or (a.op, a.value, a.type, len(a.args)) != (b.op, b.value, b.type, len(b.args)):
                return False
            pairs.extend(zip(a.args, b.args))
        return True

    def __reduce__(self):  # rebuild (and rehash) on unpickling: str hashes differ between processes
        return TExpr, (self.op, self.args, self.value, self.type, self.span)

    def walk(self) -> Iterator["TExpr"]:
        """Every node, parents before children, left to right (shared subtrees once per occurrence)."""
        stack = [self]
        while stack:
            t = stack.pop()
            yield t
            stack.extend(reversed(t.args))

    def uses(self, op: str, value: Any = None) -> bool:
        return any(e.op == op and (value is None or e.value == value) for e in self.walk())


R = TypeVar("R")


def _arguments(t: TExpr) -> tuple[TExpr, ...]:
    return t.args


def postorder(root: TExpr, descend: Callable[[TExpr], bool] = lambda t: True,
              children: Callable[[TExpr], tuple[TExpr, ...]] = _arguments) -> list[TExpr]:
    """The distinct subexpressions of root (equal subtrees once), every one after its arguments, found
    without recursion. `descend(t)` false: t's arguments are not visited (t is treated as a leaf).
    `children(t)`: what counts as t's arguments (default t.args; a printer may take others)."""
    seen: set[TExpr] = set()
    order: list[TExpr] = []
    stack: list[tuple[TExpr, bool]] = [(root, False)]
    while stack:
        t, expanded = stack.pop()
        if t in seen:
            continue
        if expanded or not descend(t) or not children(t):
            seen.add(t)
            order.append(t)
            continue
        stack.append((t, True))
        stack.extend((a, False) for a in reversed(children(t)) if a not in seen)
    return order


def fold(root: TExpr, combine: Callable[[TExpr, list], R], descend: Callable[[TExpr], bool] = lambda t: True,
         children: Callable[[TExpr], tuple[TExpr, ...]] = _arguments) -> R:
    """combine(t, [results of t's arguments]) over the distinct subexpressions of root, arguments first,
    each computed once; a node that `descend` rejects is combined with no argument results."""
    done: dict[TExpr, R] = {}
    for t in postorder(root, descend, children):
        kids = children(t) if descend(t) else ()
        done[t] = combine(t, [done[a] for a in kids])
    return done[root]


def const(value, span: Span = NO_SPAN) -> TExpr:
    t = BOOL if isinstance(value, bool) else INT if isinstance(value, int) else FLOAT
    return TExpr("const", (), value, t, span)


def chain(t: TExpr, op: str) -> list[TExpr]:
    """The operands of a chain of one binary operator, left to right (t alone if it is no such chain);
    without recursion, since a chain is as long as the spec writes it."""
    out, stack = [], [t]
    while stack:
        e = stack.pop()
        if e.op == op:
            stack.extend((e.args[1], e.args[0]))
        else:
            out.append(e)
    return out


def conjuncts(t: TExpr) -> list[TExpr]:
    """The operands of a chain of `and`s (a single condition is its own conjunct)."""
    return chain(t, "and_")


def substitute(t: TExpr, values: dict[str, TExpr]) -> TExpr:
    """t with the index variables named in `values` replaced."""
    def rebuild(e: TExpr, args: list[TExpr]) -> TExpr:
        if e.op == "var" and e.value in values:
            return values[e.value]
        return TExpr(e.op, tuple(args), e.value, e.type, e.span) if args else e
    return fold(t, rebuild)
