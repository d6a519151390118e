"""Typed index expressions: what the checker produces and every later stage consumes.

A `TExpr` is a small immutable tree. Leaves are constants, the index variables (`i` query token,
`j` key token, `h` head), sizes (declared `size`s and the run-time sizes N, Nq, H, D, E), `scale`,
and rows of q and k. Operators keep Python's meaning: `//` floors, `%` takes the divisor's sign,
`^`, `&`, `|` are bitwise on integers. Table and input lookups clamp every index into range.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from .source import Span, NO_SPAN

INT, FLOAT, BOOL, VEC = "int", "float", "bool", "vec"

# Run-time sizes, bound from the input tensors at call time.
RUNTIME_SIZES = {"N": "key tokens", "Nq": "query tokens", "H": "heads", "D": "q/k head dim", "E": "v head dim"}

ARITH = {"add": "+", "sub": "-", "mul": "*", "div": "/", "floordiv": "//", "mod": "%", "pow": "**"}
BITWISE = {"xor": "^", "bitand": "&", "bitor": "|"}
COMPARE = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
LOGIC = {"and_": "and", "or_": "or"}
BINARY_OPS = {**ARITH, **BITWISE, **COMPARE, **LOGIC}
SYMBOL_TO_OP = {sym: op for op, sym in BINARY_OPS.items()}

# Scalar functions: name -> (argument types ('num' = int or float), result type rule).
FUNCTIONS = {
    "min": ("num+", "promote"), "max": ("num+", "promote"), "abs": ("num", "same"),
    "exp": ("num", "float"), "log": ("num", "float"), "sqrt": ("num", "float"),
    "tanh": ("num", "float"), "sigmoid": ("num", "float"),
    "where": ("bool,any,any", "promote"), "popcount": ("int", "int"), "gray": ("int", "int"),
}


@dataclass(frozen=True)
class TExpr:
    op: str
    args: tuple["TExpr", ...] = ()
    value: Any = None
    type: str = FLOAT
    span: Span = field(default=NO_SPAN, compare=False)

    def walk(self) -> Iterator["TExpr"]:
        yield self
        for a in self.args:
            yield from a.walk()

    def uses(self, op: str, value: Any = None) -> bool:
        return any(e.op == op and (value is None or e.value == value) for e in self.walk())


def const(value, span: Span = NO_SPAN) -> TExpr:
    t = BOOL if isinstance(value, bool) else INT if isinstance(value, int) else FLOAT
    return TExpr("const", (), value, t, span)


def conjuncts(t: TExpr) -> list[TExpr]:
    """The operands of a chain of `and`s (a single condition is its own conjunct)."""
    return conjuncts(t.args[0]) + conjuncts(t.args[1]) if t.op == "and_" else [t]


def substitute(t: TExpr, values: dict[str, TExpr]) -> TExpr:
    """t with the index variables named in `values` replaced."""
    if t.op == "var" and t.value in values:
        return values[t.value]
    if not t.args:
        return t
    return TExpr(t.op, tuple(substitute(a, values) for a in t.args), t.value, t.type, t.span)


def fmt(e: TExpr) -> str:
    """Readable, fully parenthesised text of a typed expression."""
    if e.op == "const":
        return ("true" if e.value else "false") if e.type == BOOL else repr(e.value)
    if e.op in ("var", "size", "rsize", "scale"):
        return str(e.value)
    if e.op in ("qrow", "krow"):
        return f"{e.op[0]}[{'i' if e.op == 'qrow' else 'j'}]"
    if e.op in BINARY_OPS:
        return f"({fmt(e.args[0])} {BINARY_OPS[e.op]} {fmt(e.args[1])})"
    if e.op == "neg":
        return f"(-{fmt(e.args[0])})"
    if e.op == "not":
        return f"(not {fmt(e.args[0])})"
    if e.op in ("param", "input"):
        return f"{e.value}[{', '.join(fmt(a) for a in e.args)}]"
    if e.op in ("call", "feature"):
        return f"{e.value}({', '.join(fmt(a) for a in e.args)})"
    if e.op == "dot":
        return f"dot({fmt(e.args[0])}, {fmt(e.args[1])})"
    if e.op == "cast":
        return f"{e.value}({fmt(e.args[0])})"
    raise ValueError(f"unknown expression op {e.op}")
