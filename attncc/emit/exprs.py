"""Typed expressions -> Python source for the torch backend and for Triton kernels.

Only validated identifiers (as dict keys in string literals) and numeric literals from a spec
reach the generated text; everything else is fixed template text.
"""
from __future__ import annotations

import sympy
from sympy.printing.pycode import PythonCodePrinter

from ..lang.expr import BOOL, FLOAT, TExpr, fold
from ..lang.operators import float32_operand, fmt, operator_of


def literal(t: TExpr) -> str:
    if t.type == BOOL:
        return "True" if t.value else "False"
    if t.type == FLOAT:
        return repr(float(t.value))
    return repr(int(t.value))


def brief(t: TExpr, limit: int = 400) -> str:
    """fmt(t) for a docstring or comment: cut after `limit` characters (specs may write 500-term sums)."""
    text = fmt(t)
    return text if len(text) <= limit else text[:limit] + f" ... ({len(text) - limit} more characters)"


def key(name: str) -> str:
    """A spec identifier as a string literal (identifiers are [A-Za-z_][A-Za-z0-9_]*, checked by the grammar)."""
    assert name.isidentifier() and name.isascii(), name
    return repr(name)


class ExprPrinter:
    """Prints a typed expression as code, one node at a time: `node(t, operand code)` is a node's code
    from its operands' (subclasses define it). Calling the printer prints the whole expression inline,
    each distinct subexpression spelled once, without recursion."""

    def node(self, t: TExpr, args: list[str]) -> str:
        raise NotImplementedError

    def opaque(self, t: TExpr) -> bool:
        """Whether node(t, ...) prints t's operands itself (they are then not printed or bound apart)."""
        return t.op == "dot"

    def __call__(self, t: TExpr) -> str:
        return fold(t, self.node, descend=lambda e: not self.opaque(e))


class TorchExpr(ExprPrinter):
    """Emit torch code; i, j, h are index tensors, `ctx` the runtime Context, dots named by `dots`; the batch
    index b is rt.batch_index(ctx, i) ([B, 1, 1, 1], on i's device).

    Floats are computed at the precision of the computation (`ctx.dtype`: float64 for float64
    inputs, else float32), except in masks and under a conversion to int (floor, int), which are
    float32 everywhere (as in the reference)."""

    def __init__(self, dots: dict[TExpr, str] | None = None, mask: bool = False):
        self.dots = dots or {}
        self.mask = mask
        self.float_dtype = "torch.float32" if mask else "ctx.dtype"

    def opaque(self, t: TExpr) -> bool:
        """A conversion's float operand is printed here, inline, in float32 (unless all of this is float32)."""
        return super().opaque(t) or (not self.mask and float32_operand(t))

    def node(self, t: TExpr, a: list[str]) -> str:
        op = t.op
        if op == "const":
            return f"ctx.fp({literal(t)})" if t.type == FLOAT and self.float_dtype == "ctx.dtype" else literal(t)
        if op == "var":
            return "rt.batch_index(ctx, i)" if t.value == "b" else t.value
        if op == "size":
            return f"ctx.sizes[{key(t.value)}]"
        if op == "rsize":
            return f"ctx.{t.value}"
        if op == "scale":  # a float constant like any other: a Python float would compute in float32
            return "ctx.fp(ctx.scale)" if self.float_dtype == "ctx.dtype" else "ctx.scale"
        in_float32 = ".float()" if self.mask and t.type == FLOAT else ""  # tables and dots are at ctx.dtype
        if op == "dot":
            return self.dots[t] + in_float32
        if op == "param":
            return f"rt.lookup(ctx.params[{key(t.value)}], [{', '.join(a)}], batched=False){in_float32}"
        if op == "input":
            return f"rt.input_lookup(ctx.inputs[{key(t.value)}], [{', '.join(a)}], {len(a)}){in_float32}"
        operator = operator_of(t)
        if operator is None:
            raise ValueError(f"cannot emit {op}")
        if self.opaque(t):
            return operator.torch_code([TorchExpr(self.dots, mask=True)(t.args[0])], "torch.float32")
        return operator.torch_code(a, self.float_dtype)


class _SizePrinter(PythonCodePrinter):
    """Sympy band bounds -> Python over ctx sizes."""

    def _print_Symbol(self, s):
        return f"ctx.{s.name}" if s.name in ("N", "Nq", "H", "D", "E") else f"ctx.sizes[{key(s.name)}]"


def py_size_expr(e) -> str:
    e = sympy.sympify(e)
    if e.is_Integer:
        return str(int(e))
    return _SizePrinter({"standard": "python3"}).doprint(e)


def band_bounds(structure) -> tuple[str | None, str | None]:
    """Python code (over ctx sizes) of the band lo <= i - j <= hi that holds every unmasked pair;
    None for a side that is unbounded."""
    lo, hi = sympy.sympify(structure.lo), sympy.sympify(structure.hi)
    code = lambda b: py_size_expr(b) if structure.kind != "full" and b.is_finite else None
    return code(lo), code(hi)


def name_dots(*exprs: TExpr | None) -> dict[TExpr, str]:
    """The distinct dot(.., ..) terms of expressions, named qk0, qk1, ... in order of appearance."""
    names: dict[TExpr, str] = {}
    for t in exprs:
        for e in (t.walk() if t is not None else ()):
            if e.op == "dot" and e not in names:
                names[e] = f"qk{len(names)}"
    return names


class TritonExpr(ExprPrinter):
    """Emit Triton code over tile index vectors: `offs_m[:, None]` (i), `offs_n[None, :]` (j), `off_h` (h),
    `off_b` (b: every kernel that evaluates expressions has its program's batch row, as input lookups need)."""

    def __init__(self, dots: dict[TExpr, str], sizes: dict[str, str]):
        self.dots = dots
        self.sizes = sizes  # size name -> kernel argument name

    def node(self, t: TExpr, a: list[str]) -> str:
        op = t.op
        if op == "const":
            return literal(t)
        if op == "var":
            return {"i": "offs_m[:, None]", "j": "offs_n[None, :]", "h": "off_h", "b": "off_b"}[t.value]
        if op in ("size", "rsize"):
            return self.sizes[t.value]
        if op == "scale":
            return "sm_scale"
        if op == "dot":
            return self.dots[t]
        if op in ("param", "input"):
            return f"_load_{t.value}({', '.join(a)})"
        operator = operator_of(t)
        if operator is None:
            raise ValueError(f"cannot emit {op}")
        return operator.triton_code(t, a)
