"""Typed expressions -> Python source for the torch backend and for Triton kernels.

Only validated identifiers (as dict keys in string literals) and numeric literals from a spec
reach the generated text; everything else is fixed template text.
"""
from __future__ import annotations

import sympy
from sympy.printing.pycode import PythonCodePrinter

from ..lang.expr import BOOL, FLOAT, INT, TExpr

_PY_BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/", "floordiv": "//", "mod": "%", "pow": "**",
              "xor": "^", "bitand": "&", "bitor": "|", "lt": "<", "le": "<=", "gt": ">", "ge": ">=",
              "eq": "==", "ne": "!=", "and_": "&", "or_": "|"}


def literal(t: TExpr) -> str:
    if t.type == BOOL:
        return "True" if t.value else "False"
    if t.type == FLOAT:
        return repr(float(t.value))
    return repr(int(t.value))


def key(name: str) -> str:
    """A spec identifier as a string literal (identifiers are [A-Za-z_][A-Za-z0-9_]*, checked by the grammar)."""
    assert name.isidentifier() and name.isascii(), name
    return repr(name)


class TorchExpr:
    """Emit torch code; i, j, h are index tensors, `ctx` the runtime Context, dots named by `dots`.

    Floats are computed at the precision of the computation (`ctx.dtype`: float64 for float64
    inputs, else float32), except in masks, which are float32 everywhere (as in the reference)."""

    def __init__(self, dots: dict[TExpr, str] | None = None, mask: bool = False):
        self.dots = dots or {}
        self.float_dtype = "torch.float32" if mask else "ctx.dtype"

    def __call__(self, t: TExpr) -> str:
        op, a = t.op, t.args
        if op == "const":
            return f"ctx.fp({literal(t)})" if t.type == FLOAT and self.float_dtype == "ctx.dtype" else literal(t)
        if op == "var":
            return t.value
        if op == "size":
            return f"ctx.sizes[{key(t.value)}]"
        if op == "rsize":
            return f"ctx.{t.value}"
        if op == "scale":
            return "ctx.scale"
        if op == "dot":
            return self.dots[t]
        if op == "neg":
            return f"(-{self(a[0])})"
        if op == "not":
            return f"rt.logical_not({self(a[0])})"
        if op == "div":
            return f"(rt.as_float({self(a[0])}, {self.float_dtype}) / {self(a[1])})"
        if op in ("floordiv", "mod"):
            return f"rt.{'floordiv' if op == 'floordiv' else 'floormod'}({self(a[0])}, {self(a[1])})"
        if op in _PY_BINARY:
            return f"({self(a[0])} {_PY_BINARY[op]} {self(a[1])})"
        if op == "param":
            return f"rt.lookup(ctx.params[{key(t.value)}], [{', '.join(self(x) for x in a)}], batched=False)"
        if op == "input":
            return f"rt.input_lookup(ctx.inputs[{key(t.value)}], [{', '.join(self(x) for x in a)}], {len(a)})"
        if op == "call":
            args = [self(x) for x in a]
            fn = t.value
            if fn in ("min", "max"):
                return f"rt.{'minimum' if fn == 'min' else 'maximum'}({', '.join(args)})"
            if fn == "where":
                return f"torch.where(torch.as_tensor({args[0]}), {args[1]}, {args[2]})"
            if fn == "popcount":
                return f"rt.popcount(torch.as_tensor({args[0]}))"
            if fn == "gray":
                return f"({args[0]} ^ ({args[0]} >> 1))"
            if fn == "abs":
                return f"abs({args[0]})"
            return f"torch.{fn}(rt.as_float({args[0]}, {self.float_dtype}))"
        raise ValueError(f"cannot emit {op}")


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


class TritonExpr:
    """Emit Triton code over tile index vectors: `offs_m[:, None]` (i), `offs_n[None, :]` (j), `off_h` (h)."""

    def __init__(self, dots: dict[TExpr, str], sizes: dict[str, str]):
        self.dots = dots
        self.sizes = sizes  # size name -> kernel argument name

    def __call__(self, t: TExpr) -> str:
        op, a = t.op, t.args
        if op == "const":
            return literal(t)
        if op == "var":
            return {"i": "offs_m[:, None]", "j": "offs_n[None, :]", "h": "off_h"}[t.value]
        if op in ("size", "rsize"):
            return self.sizes[t.value]
        if op == "scale":
            return "sm_scale"
        if op == "dot":
            return self.dots[t]
        if op == "neg":
            return f"(-{self(a[0])})"
        if op == "not":
            return f"({self(a[0])} == 0)"
        if op == "floordiv":
            return f"_floordiv({self(a[0])}, {self(a[1])})" if t.type == INT else \
                f"tl.floor({self(a[0])} / {self(a[1])})"
        if op == "mod":
            return f"_floormod({self(a[0])}, {self(a[1])})" if t.type == INT else \
                f"({self(a[0])} - {self(a[1])} * tl.floor({self(a[0])} / {self(a[1])}))"
        if op == "div":
            return f"(({self(a[0])}) * 1.0 / {self(a[1])})"
        if op == "pow":
            if t.type == INT or (a[1].op == "const" and a[1].type == INT and 0 <= a[1].value <= 16):
                n = int(a[1].value)  # the checker keeps integer exponents constant in 0..64
                return "(" + " * ".join([f"({self(a[0])})"] * n) + ")" if n else "1"
            return f"_powf(({self(a[0])}) * 1.0, ({self(a[1])}) * 1.0)"
        if op in _PY_BINARY:
            return f"({self(a[0])} {_PY_BINARY[op]} {self(a[1])})"
        if op in ("param", "input"):
            return f"_load_{t.value}({', '.join(self(x) for x in a)})"
        if op == "call":
            args = [self(x) for x in a]
            fn = t.value
            if fn in ("min", "max"):
                out = args[0]
                for x in args[1:]:
                    out = f"tl.{'minimum' if fn == 'min' else 'maximum'}({out}, {x})"
                return out
            if fn == "where":
                return f"tl.where({args[0]}, {args[1]}, {args[2]})"
            if fn == "abs":
                return f"tl.abs({args[0]})"
            if fn == "sigmoid":
                return f"tl.sigmoid(({args[0]}) * 1.0)"
            if fn == "tanh":
                return f"_tanh(({args[0]}) * 1.0)"
            if fn == "popcount":
                return f"_popcount({args[0]})"
            if fn == "gray":
                return f"({args[0]} ^ ({args[0]} >> 1))"
            return f"tl.{fn}(({args[0]}) * 1.0)"
        raise ValueError(f"cannot emit {op}")
