"""Symbolic derivatives of typed expressions, for generated backward kernels.

diff(t, x) = dt/dx as a TExpr, for a leaf x of t (a `dot` term or a table lookup), every other
leaf held constant. The rules are the usual ones; integer and boolean subexpressions (positions,
masks, indices) are piecewise constant in x, so their derivative is 0 (as autograd sees them):

  d(a +- b) = da +- db            d(a b) = da b + a db          d(a / b) = da / b - a db / b^2
  d(a^c)    = c a^(c-1) da        d(c^b) = c^b log(c) db        (c free of x)
  d exp(a)  = exp(a) da           d log(a) = da / a             d sqrt(a) = da / (2 sqrt(a))
  d tanh(a) = (1 - tanh(a)^2) da  d sigmoid(a) = s (1 - s) da   d abs(a) = where(a < 0, -da, da)
  d min(a, b) = where(a <= b, da, db), max alike;  d where(c, a, b) = where(c, da, db)
  d (a // b) = 0 on floats (piecewise constant);   d (a % b) = da - floor(a / b) db

A form outside these rules (a^b with x in both, ...) raises NotDifferentiable: the caller then
keeps gradients by recomputation through the torch backend.
"""
from __future__ import annotations

from .expr import FLOAT, TExpr, const


class NotDifferentiable(Exception):
    """The expression has no derivative rule here; the message says which part."""


def _f(op: str, *args: TExpr, value=None) -> TExpr:
    return TExpr(op, tuple(args), value, FLOAT)


def _add(a: TExpr | None, b: TExpr | None, op: str = "add") -> TExpr | None:
    if b is None:
        return a
    if a is None:
        return b if op == "add" else _f("neg", b)
    return _f(op, a, b)


def _mul(a: TExpr | None, b: TExpr | None) -> TExpr | None:
    """a * b with None standing for 0 and the constant 1 dropped."""
    if a is None or b is None:
        return None
    if a.op == "const" and a.value == 1:
        return b
    if b.op == "const" and b.value == 1:
        return a
    return _f("mul", a, b)


def diff(t: TExpr, x: TExpr) -> TExpr | None:
    """dt/dx as a TExpr, None where it is 0."""
    if t == x:
        return const(1.0)
    if t.type != FLOAT or t.op in ("const", "var", "size", "rsize", "scale", "dot", "param", "input"):
        return None
    a = t.args
    d = [diff(arg, x) for arg in a]
    if t.op in ("add", "sub"):
        return _add(d[0], d[1], t.op)
    if t.op == "neg":
        return None if d[0] is None else _f("neg", d[0])
    if t.op == "mul":
        return _add(_mul(d[0], a[1]), _mul(a[0], d[1]))
    if t.op == "div":
        left = None if d[0] is None else _f("div", d[0], a[1])
        right = None if d[1] is None else _f("div", _mul(a[0], d[1]), _f("mul", a[1], a[1]))
        return _add(left, right, "sub")
    if t.op == "pow":
        if d[0] is not None and d[1] is not None:
            raise NotDifferentiable("a power with the differentiated term in base and exponent")
        if d[1] is not None:
            return _mul(_f("mul", t, _f("call", a[0], value="log")), d[1])
        exponent = a[1]
        if exponent.op == "const":
            if exponent.value == 0:
                return None
            lower = const(exponent.value - 1)
        else:
            lower = _f("sub", exponent, const(1))
        return _mul(_f("mul", exponent, _f("pow", a[0], lower)), d[0])
    if t.op == "floordiv":
        return None
    if t.op == "mod":
        return _add(d[0], _mul(_f("floordiv", a[0], a[1]), d[1]), "sub")
    if t.op == "call":
        return _call(t, d)
    raise NotDifferentiable(f"no derivative rule for `{t.op}`")


def _call(t: TExpr, d: list) -> TExpr | None:
    a, fn = t.args, t.value
    if fn in ("min", "max"):
        out, acc_d = a[0], d[0]
        for arg, darg in zip(a[1:], d[1:]):
            keep_left = TExpr("le" if fn == "min" else "ge", (out, arg), None, "bool")
            acc_d = _where(keep_left, acc_d, darg)
            out = _f("call", out, arg, value=fn)
        return acc_d
    if fn == "where":
        return _where(a[0], d[1], d[2])
    if d[0] is None:
        return None
    if fn == "exp":
        return _mul(t, d[0])
    if fn == "log":
        return _f("div", d[0], a[0])
    if fn == "sqrt":
        return _f("div", d[0], _f("mul", const(2.0), t))
    if fn == "tanh":
        return _mul(_f("sub", const(1.0), _f("mul", t, t)), d[0])
    if fn == "sigmoid":
        return _mul(_f("mul", t, _f("sub", const(1.0), t)), d[0])
    if fn == "abs":
        return _where(TExpr("lt", (a[0], const(0)), None, "bool"), _f("neg", d[0]), d[0])
    raise NotDifferentiable(f"no derivative rule for `{fn}`")


def _where(cond: TExpr, a: TExpr | None, b: TExpr | None) -> TExpr | None:
    if a is None and b is None:
        return None
    return _f("call", cond, a or const(0.0), b or const(0.0), value="where")


def leaves(t: TExpr) -> list[TExpr]:
    """The float leaves a gradient flows to: the dot terms and the float table lookups, in order."""
    out: list[TExpr] = []
    for e in t.walk():
        if (e.op == "dot" or (e.op in ("param", "input") and e.type == FLOAT)) and e not in out:
            out.append(e)
    return out
