"""Row expressions: the vectors a `dot` combines, as typed expressions (type VEC).

The forms (TExpr op, args, value), every one of type VEC:

    qrow  ()                 "q"      q[i], the query's row (width D)
    krow  ()                 "k"      k[j], the key's row (width D)
    rowin (h?, tok)          name     X[h, i] / X[j]: a row of an input declared [H, N|Nq, W] or [N|Nq, W];
                                      h is the head variable, tok the variable i or j (width W)
    slice (row, lo, hi)      None     row[lo:hi] of its last dimension; lo, hi INT expressions of
                                      constants and sizes (D included), both always present
    mul   (row, row)         None     elementwise product (also `neg`, `add`, `sub` of rows)
    mul   (row, s) / (s, row), div (row, s)
                                      a row scaled by a scalar expression s (type INT or FLOAT)
    call  (row,)             fn       an elementwise float function of one number (exp, sigmoid, ...)
    feature (row,)           map      a feature map of a row

A dot side reads one token: the query index i (q, rows indexed by i, scalars of i) or the key index j.
`side` says which; `width` is the side's last dimension as an INT expression of sizes.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy
import torch

from .evaluate import fold_constants
from .expr import FLOAT, INT, VEC, TExpr, fold
from .operators import FUNCTIONS, fmt, operator_of
from .source import ShapeError

ROW_LEAVES = ("qrow", "krow", "rowin")
ROW_OPERATORS = ("mul", "div", "add", "sub", "neg")  # elementwise operators a row may go through
# elementwise functions of a row: the float functions of one number
ROW_FUNCTIONS = frozenset(name for name, f in FUNCTIONS.items() if f.operands == "num" and f.result == FLOAT)
WIDTH_SIZES = ("D", "E")  # run-time sizes a row's width may be (besides declared sizes and constants)


def row_input_layout(dims: tuple[TExpr, ...]) -> tuple[bool, str] | None:
    """(per head, token size "N" or "Nq") of an input whose rows a dot may read: dims [H, N|Nq, W] or
    [N|Nq, W] with W a width (a constant, a declared size, D or E, or an expression of those); None
    for any other input."""
    if len(dims) not in (2, 3):
        return None
    token, width = dims[-2], dims[-1]
    if token.op != "rsize" or token.value not in ("N", "Nq"):
        return None
    if any(e.op == "rsize" and e.value not in WIDTH_SIZES for e in width.walk()):
        return None
    if len(dims) == 3 and not (dims[0].op == "rsize" and dims[0].value == "H"):
        return None
    return len(dims) == 3, token.value


def is_row(t: TExpr) -> bool:
    return t.type == VEC


def side(t: TExpr) -> set[str]:
    """The token indices ("i", "j") a row expression reads (q reads i, k reads j)."""
    out = set()
    for e in t.walk():
        if e.op == "qrow":
            out.add("i")
        elif e.op == "krow":
            out.add("j")
        elif e.op == "var" and e.value in ("i", "j"):
            out.add(e.value)
    return out


def width(t: TExpr, input_dims: dict[str, tuple[TExpr, ...]]) -> TExpr:
    """The last dimension of a row expression, as an INT expression of sizes (the widths of an
    elementwise operation's rows agree: the checker reports them otherwise)."""
    while True:
        if t.op in ("qrow", "krow"):
            return TExpr("rsize", (), "D", INT)
        if t.op == "rowin":
            return input_dims[t.value][-1]
        if t.op == "slice":
            return TExpr("sub", (t.args[2], t.args[1]), None, INT)
        if t.op == "concat":
            total = width(t.args[0], input_dims)
            for part in t.args[1:]:
                total = TExpr("add", (total, width(part, input_dims)), None, INT)
            return total
        t = next(a for a in t.args if a.type == VEC)


def width_sympy(t: TExpr):
    """An INT expression of constants and sizes as sympy (sizes positive integers); None if it reads
    anything else."""
    def node(e: TExpr, args: list):
        if any(a is None for a in args):
            return None
        if e.op == "const":
            return sympy.Integer(e.value) if e.type == INT else None
        if e.op in ("size", "rsize"):
            return sympy.Symbol(e.value, integer=True, positive=True)
        operator = operator_of(e)
        return operator.sympy(e, args) if operator is not None and e.op != "call" else None
    return fold(t, node)


def slice_bounds(t: TExpr) -> tuple[TExpr, TExpr]:
    return t.args[1], t.args[2]


def base_name(t: TExpr) -> str:
    """How a row leaf is written: `q[i]`, `k[j]`, `X[h, j]`."""
    return {"qrow": "q", "krow": "k"}.get(t.op, t.value)


def input_rows(x, dims: int, per_head: bool, count: int, name: str):
    """The rows of a row input x (declared with `dims` dimensions, passed with or without a leading
    batch dimension) as [B or 1, H or 1, count, W]: its first `count` tokens (a row read at the
    query index of an input declared with N rows needs Nq <= N)."""
    if x.shape[-2] < count:
        raise ShapeError(f"input `{name}` has {x.shape[-2]} rows, but is read at {count} query tokens")
    if x.dim() == dims:  # no batch dimension
        x = x.unsqueeze(0)
    if not per_head:
        x = x.unsqueeze(1)
    return x[:, :, :count]


def row_slice(x, lo: int, hi: int, what: str):
    """x[..., lo:hi], its bounds checked against x's width (Python slicing would cut them silently)."""
    lo, hi = int(lo), int(hi)
    if not 0 <= lo < hi <= x.shape[-1]:
        raise ShapeError(f"the slice {lo}:{hi} of {what} lies outside its width {x.shape[-1]} (or is empty)")
    return x[..., lo:hi]


def concat_rows(rows: list):
    """Rows side by side along the width, their leading dimensions broadcast first."""
    lead = torch.broadcast_shapes(*(r.shape[:-1] for r in rows))
    return torch.cat([r.expand(*lead, r.shape[-1]) for r in rows], dim=-1)


def full_rows(x, like, dtype, what: str):
    """Prepared rows x as [B, H, tokens, W] beside `like` (q or k): broadcast, in `dtype`."""
    if x.dim() != 4 or x.shape[-2] != like.shape[-2]:
        raise ShapeError(f"{what}: rows of shape {tuple(x.shape)} beside {tuple(like.shape)}")
    return x.expand(like.shape[0], x.shape[1] if x.shape[1] != 1 else like.shape[1], *x.shape[2:]).to(dtype)


def check_widths(q, k, name: str) -> None:
    if q.shape[-1] != k.shape[-1]:
        raise ShapeError(f"{name}: the sides of `dot` have different widths at this call: {q.shape[-1]} (query "
                         f"side) and {k.shape[-1]} (key side); check the row inputs' last dimensions")


def plain_side(t: TExpr) -> bool:
    """A dot side that is q[i] or k[j] itself, or a feature map of it: what every lowering reads directly."""
    core = t.args[0] if t.op == "feature" else t
    return core.op in ("qrow", "krow")


def plain_dots(dots) -> bool:
    """Every dot is of plain sides: however they combine (FLASH's `where(.., dot(phi(q), phi(k)), 0) +
    dot(q, k)`), the scores read q and k as they are, with no rows to prepare."""
    return all(plain_side(s) for d in dots for s in d.args)


def dot_terms(t: TExpr) -> tuple[list[tuple[TExpr, TExpr]], TExpr | None] | None:
    """t = sum_n c_n dot_n + rest: ([(dot_n, c_n)], rest or None), the c_n and rest free of dot;
    None when t is not linear in its dots (exp(dot), dot * dot, ...)."""
    def combine(e: TExpr, parts: list):
        if not e.uses("dot"):
            return [], e
        if e.op == "dot":
            return [(e, TExpr("const", (), 1, INT))], None
        if any(p is None for p in parts):
            return None
        if e.op in ("add", "sub"):
            (ta, ra), (tb, rb) = parts
            if e.op == "sub":
                tb = [(d, _neg(c)) for d, c in tb]
                rb = None if rb is None else _neg(rb)
            rest = ra if rb is None else rb if ra is None else TExpr("add", (ra, rb), None, FLOAT)
            return ta + tb, rest
        if e.op == "neg":
            ts, r = parts[0]
            return [(d, _neg(c)) for d, c in ts], None if r is None else _neg(r)
        if e.op == "mul" and not e.args[0].uses("dot"):  # c * (...)
            (ts, r), scale = parts[1], lambda x: e.args[0] if _is_one(x) else TExpr("mul", (e.args[0], x), None, FLOAT)
        elif e.op in ("mul", "div") and not e.args[1].uses("dot"):  # (...) * c, (...) / c
            (ts, r), scale = parts[0], lambda x: e.args[1] if _is_one(x) and e.op == "mul" else \
                TExpr(e.op, (x, e.args[1]), None, FLOAT)
        else:
            return None
        return [(d, scale(c)) for d, c in ts], None if r is None else scale(r)
        return None
    out = fold(t, combine, descend=lambda e: e.op != "dot")
    return None if out is None else ([(d, fold_constants(c)) for d, c in out[0]], out[1])


def _is_one(t: TExpr) -> bool:
    return t.op == "const" and t.value == 1 and not isinstance(t.value, bool)


def _neg(t: TExpr) -> TExpr:
    return TExpr("neg", (t,), None, t.type)


@dataclass(frozen=True)
class PreparedRows:
    """The rows every lowering reads in place of q and k (passes/rows.py): q' and k' as row
    expressions of type VEC (`concat` of several), computed by the module before any lowering."""
    q: TExpr
    k: TExpr

    def describe(self) -> str:
        return f"q' = {fmt(self.q)}; k' = {fmt(self.k)}"
