"""Typed expressions -> Python source for the torch backend and for Triton kernels.

Only validated identifiers (as dict keys in string literals) and numeric literals from a spec
reach the generated text; everything else is fixed template text.
"""
from __future__ import annotations

import sympy
from sympy.printing.pycode import PythonCodePrinter

from ..analysis.structure import nonnegative
from ..lang.expr import BOOL, FLOAT, INT, TExpr, fold, postorder
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
        """t's code from the code of its operands(t)."""
        raise NotImplementedError

    def operands(self, t: TExpr) -> tuple[TExpr, ...]:
        """The subexpressions whose code node(t, ...) takes: t's arguments, none for a dot term (named by
        the emitter); a printer that spells some arguments itself names the parts it still takes."""
        return () if t.op == "dot" else t.args

    def __call__(self, t: TExpr) -> str:
        return fold(t, self.node, children=self.operands)


def dtype_free_parts(t: TExpr) -> tuple[TExpr, ...]:
    """The largest compound subexpressions of t that hold no float (nor dot): their code is the same at
    any float precision. In order of first appearance."""
    free: dict[TExpr, bool] = {}
    for e in postorder(t):
        free[e] = e.type != FLOAT and e.op != "dot" and all(free[a] for a in e.args)
    parts: list[TExpr] = []
    stack = [t]
    while stack:
        e = stack.pop()
        if free[e] and e.args:
            parts.append(e)
        elif not free[e]:
            stack.extend(reversed(e.args))
    return tuple(dict.fromkeys(parts))


class TorchExpr(ExprPrinter):
    """Emit torch code; i, j, h are index tensors (hk is h // ctx.group), `ctx` the runtime Context, dots
    named by `dots`; the batch index b is rt.batch_index(ctx, i) ([B, 1, 1, 1], on i's device).

    Floats are computed at the precision of the computation (`ctx.dtype`: float64 for float64
    inputs, else float32), except in masks and under a conversion to int (floor, int), which are
    float32 everywhere (as in the reference)."""

    def __init__(self, dots: dict[TExpr, str] | None = None, mask: bool = False):
        self.dots = dots or {}
        self.mask = mask
        self.float_dtype = "torch.float32" if mask else "ctx.dtype"

    def _float32_operand(self, t: TExpr) -> bool:
        """A conversion's float operand is printed by node(), in float32 (unless all of this is float32)."""
        return not self.mask and float32_operand(t)

    def operands(self, t: TExpr) -> tuple[TExpr, ...]:
        """A conversion's float operand is spelled in float32 by node(); the parts of it that hold no
        float (`abs(i - j)`, sizes) are the same code at any precision: those it takes as operands,
        so that they are shared with the rest of the expression."""
        return dtype_free_parts(t.args[0]) if self._float32_operand(t) else super().operands(t)

    def node(self, t: TExpr, a: list[str]) -> str:
        op = t.op
        if op == "const":
            return f"ctx.fp({literal(t)})" if t.type == FLOAT and self.float_dtype == "ctx.dtype" else literal(t)
        if op == "var":
            if t.value == "hk":  # the key/value head of query head h (heads of one group are adjacent)
                return "(h // ctx.group)"
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
        if self._float32_operand(t):
            parts = dict(zip(dtype_free_parts(t.args[0]), a))
            f32 = TorchExpr(self.dots, mask=True)
            code = fold(t.args[0], lambda e, x: parts.get(e) or f32.node(e, x),
                        children=lambda e: () if e in parts else f32.operands(e))
            return operator.torch_code([code], "torch.float32")
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


def constexpr_division(t: TExpr) -> str | None:
    """How an integer `//` or `%` whose divisor is fixed when the kernel compiles is printed:
      shift     a constant power of two: `a >> k`, `a & (b - 1)` (floor and the floor remainder for
                either sign of a, in two's complement)
      truncate  another positive constant, a >= 0 (nonnegative): Triton's truncating `//`, `%`
      size      a declared size (a kernel constexpr, >= 1 as a divisor): the _floordiv_size /
                _floormod_size helpers, which pick one of the above when the kernel compiles
    None: anything else, through the general sign-correct helpers (_floordiv, _floormod)."""
    if t.op not in ("floordiv", "mod") or t.type != INT:
        return None
    b = t.args[1]
    if b.op == "size":
        return "size"
    if b.op != "const" or b.type != INT or b.value <= 0:
        return None
    if b.value & (b.value - 1) == 0:
        return "shift"
    return "truncate" if nonnegative(t.args[0]) else None


def division_helper(t: TExpr) -> str | None:
    """The Triton helper a `//` or `%` node calls where constexpr_division specialises it."""
    how = constexpr_division(t)
    if how is None:
        return None
    return {"floordiv": "_floordiv_size", "mod": "_floormod_size"}[t.op] if how == "size" else ""


def shift_arg(size_arg: str) -> str:
    """The kernel constexpr holding log2 of a size used as a divisor (-1: not a power of two)."""
    return size_arg + "_shift"


class TritonExpr(ExprPrinter):
    """Emit Triton code over tile index vectors: `offs_m[:, None]` (i), `offs_n[None, :]` (j), `off_h` (h),
    `off_hk` (hk: the key/value head, every kernel's prologue sets it),
    `off_b` (b: every kernel that evaluates expressions has its program's batch row, as input lookups need)."""

    TILE_VARIABLES = {"i": "offs_m[:, None]", "j": "offs_n[None, :]", "h": "off_h", "hk": "off_hk", "b": "off_b"}

    def __init__(self, dots: dict[TExpr, str], sizes: dict[str, str], variables: dict[str, str] | None = None):
        self.dots = dots
        self.sizes = sizes  # size name -> kernel argument name
        self.variables = variables or self.TILE_VARIABLES  # i, j, h, b -> code

    def node(self, t: TExpr, a: list[str]) -> str:
        op = t.op
        if op == "const":
            return literal(t)
        if op == "var":
            return self.variables[t.value]
        if op in ("size", "rsize"):
            return self.sizes[t.value]
        if op == "scale":  # a scale leaf may name the kernel variable of a multiple of it (qk_scale)
            return "sm_scale" if t.value == "scale" else t.value
        if op == "dot":
            return self.dots[t]
        if op in ("param", "input"):
            return f"_load_{t.value}({', '.join(a)})"
        how = constexpr_division(t)
        if how is not None:
            return self.division(t, a, how)
        operator = operator_of(t)
        if operator is None:
            raise ValueError(f"cannot emit {op}")
        return operator.triton_code(t, a)

    def division(self, t: TExpr, a: list[str], how: str) -> str:
        """An integer `//` or `%` by a constexpr divisor, as constexpr_division says."""
        b = t.args[1]
        if how == "shift":
            return f"({a[0]} >> {b.value.bit_length() - 1})" if t.op == "floordiv" else f"({a[0]} & {b.value - 1})"
        if how == "truncate":
            return f"({a[0]} {'//' if t.op == 'floordiv' else '%'} {a[1]})"
        helper = division_helper(t)
        return f"{helper}({a[0]}, {a[1]}, {shift_arg(a[1])}, {nonnegative(t.args[0])})"
