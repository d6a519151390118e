"""The expression language's operators: one record per operator, read by every stage.

An `Operator` says, for one binary or unary operator or scalar function:
  spelling      how a spec writes it (`+`, `not`, `min`)
  operands      its type rule's operand kinds: bool | int | num (int or float) | equatable (two numbers, or
                two bools) | any; a function lists one kind per argument (`num+`: two or more numbers)
  result        its type rule's result: bool | int | float | same (as the operand) | promote (bool if
                every value operand is bool, int if every one is int, else float)
  evaluate      its meaning on broadcasting torch tensors (ints are 32-bit and wrap, `//` floors,
                x // 0 = 0, `%` takes the divisor's sign, x % 0 = x)
  torch         generated torch code: a template over the operand code {0}, {1}, ... (all of them,
                comma-joined: {args}) and {float}, the float dtype of the computation
  triton        generated Triton code: such a template, or a function of (node, operand code)
  sympy         its sympy form, a function of (node, sympy operands)
  derivative    d(node) from (node, the derivative of each operand, None standing for 0); None for
                operators whose result is never a float (their derivative is 0)
  restriction   what the type rule forbids beyond operand kinds: (typed operands) -> None, or (the
                offending operand's position, message, hint)
Leaves (constants, variables, sizes, table lookups, dot products) are not operators: each consumer
knows its own. `fmt` (spec text of an expression) lives here too, as it spells operators from the table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import sympy
import torch

from .expr import BOOL, FLOAT, INT, TExpr, const, fold


class NotDifferentiable(Exception):
    """The expression has no derivative rule here; the message says which part."""


@dataclass(frozen=True)
class Operator:
    name: str  # the TExpr op ("add", "neg"), or a function's name ("min"), the `value` of its `call` node
    spelling: str
    form: str  # binary | unary | call
    operands: str
    result: str
    evaluate: Callable[[list, torch.dtype], torch.Tensor]
    torch: str
    triton: str | Callable[[TExpr, list[str]], str]
    sympy: Callable[[TExpr, list], object]
    derivative: Callable[[TExpr, list], TExpr | None] | None = None
    divisor: bool = False  # the right operand must not be 0 (checked where it is made of sizes)
    restriction: Callable[[list[TExpr]], tuple[int, str, str] | None] = lambda args: None
    triton_helper: Callable[[TExpr], str | None] = lambda t: None  # a @triton.jit function the code calls

    def torch_code(self, args: list[str], float_dtype: str) -> str:
        return self.torch.format(*args, args=", ".join(args), float=float_dtype)

    def triton_code(self, t: TExpr, args: list[str]) -> str:
        if callable(self.triton):
            return self.triton(t, args)
        return self.triton.format(*args, args=", ".join(args))

    def kinds(self, count: int) -> list[str]:
        """The operand kind of each of `count` operands."""
        if self.operands.endswith("+"):
            return [self.operands[:-1]] * count
        return self.operands.split(",") if self.form == "call" else [self.operands] * count

    def result_type(self, types: list[str]) -> str:
        """The result type for operands of these (already accepted) types."""
        if self.result == "same":
            return types[0]
        if self.result != "promote":
            return self.result
        values = {t for t, kind in zip(types, self.kinds(len(types))) if kind != BOOL}
        return BOOL if values == {BOOL} else INT if values == {INT} else FLOAT


# ---------------------------------------------------------------- evaluation helpers (also used by generated code)

def _int_divisor(a, b) -> tuple[bool, object]:
    ints = not (torch.as_tensor(a).is_floating_point() or torch.as_tensor(b).is_floating_point())
    return ints, torch.where(torch.as_tensor(b) == 0, 1, b) if ints else b


def floordiv(a, b):
    """a // b rounding down; on ints, x // 0 = 0 (floats follow IEEE)."""
    ints, safe = _int_divisor(a, b)
    q = torch.div(torch.as_tensor(a), safe, rounding_mode="floor")
    return torch.where(torch.as_tensor(b) == 0, 0, q) if ints else q


def floormod(a, b):
    """a % b with the divisor's sign; on ints, x % 0 = x, so that x == (x // y) * y + x % y."""
    ints, safe = _int_divisor(a, b)
    r = torch.remainder(torch.as_tensor(a), safe)
    return torch.where(torch.as_tensor(b) == 0, a, r) if ints else r


def popcount(x: torch.Tensor) -> torch.Tensor:
    """Number of set bits of the 32-bit two's complement pattern of x (SWAR: bits summed in pairs,
    nibbles, then bytes, in int64 so that nothing overflows)."""
    x = x.long() & 0xFFFFFFFF
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return ((x * 0x01010101) >> 24 & 0xFF).int()


def softplus(x):
    """log(1 + exp(x)) without overflow (logaddexp(x, 0)); its gradient is sigmoid(x)."""
    x = torch.as_tensor(x)
    return torch.logaddexp(x, x.new_zeros(()))


def float_to_int(x, rounding: str):
    """floor(x) (rounding "floor") or x truncated toward 0 ("trunc") as an int32, saturating at the
    int32 range, NaN giving 0; ints are returned as they are. The saturation is done in float64,
    where both ends of the range are exact."""
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        return x
    r = (torch.floor if rounding == "floor" else torch.trunc)(x.double())
    return torch.nan_to_num(r, nan=0.0).clamp(-2.0**31, 2.0**31 - 1).to(torch.int32)


def _true_div(args, float_dtype):
    a, b = args
    return a.to(float_dtype) / b if not a.is_floating_point() and not b.is_floating_point() else a / b


def _extremum(combine):
    def run(args, float_dtype):
        out = args[0]
        for a in args[1:]:
            out = combine(out, a)
        return out
    return run


def _on_float(fn):
    """A float function of one number: ints are converted to the float dtype first."""
    return lambda args, float_dtype: fn(args[0] if args[0].is_floating_point() else args[0].to(float_dtype))


# ---------------------------------------------------------------- derivative helpers: TExprs with None for 0

def _f(op: str, *args: TExpr, value=None) -> TExpr:
    return TExpr(op, tuple(args), value, FLOAT)


def _plus(a: TExpr | None, b: TExpr | None, op: str = "add") -> TExpr | None:
    """a + b (or a - b) with None standing for 0."""
    if b is None:
        return a
    if a is None:
        return b if op == "add" else _f("neg", b)
    return _f(op, a, b)


def _times(a: TExpr | None, b: TExpr | None) -> TExpr | None:
    """a * b with None standing for 0 and the constant 1 dropped."""
    if a is None or b is None:
        return None
    if a.op == "const" and a.value == 1:
        return b
    if b.op == "const" and b.value == 1:
        return a
    return _f("mul", a, b)


def _select(cond: TExpr, a: TExpr | None, b: TExpr | None) -> TExpr | None:
    if a is None and b is None:
        return None
    return _f("call", cond, a or const(0.0), b or const(0.0), value="where")


def _d_div(t, d):
    a = t.args
    left = None if d[0] is None else _f("div", d[0], a[1])
    right = None if d[1] is None else _f("div", _times(a[0], d[1]), _f("mul", a[1], a[1]))
    return _plus(left, right, "sub")


def _d_pow(t, d):
    a = t.args
    if d[0] is not None and d[1] is not None:
        raise NotDifferentiable("a power with the differentiated term in base and exponent")
    if d[1] is not None:
        return _times(_f("mul", t, _f("call", a[0], value="log")), d[1])
    exponent = a[1]
    if exponent.op == "const":
        if exponent.value == 0:
            return None
        lower = const(exponent.value - 1)
    else:
        lower = _f("sub", exponent, const(1))
    return _times(_f("mul", exponent, _f("pow", a[0], lower)), d[0])


def _d_extremum(t, d):
    """d min(a, b, ...) = where(a <= b, da, db), folded left; max alike."""
    a, fn = t.args, t.value
    out, acc_d = a[0], d[0]
    for arg, darg in zip(a[1:], d[1:]):
        keep_left = TExpr("le" if fn == "min" else "ge", (out, arg), None, BOOL)
        acc_d = _select(keep_left, acc_d, darg)
        out = _f("call", out, arg, value=fn)
    return acc_d


def _d_clamp(t, d):
    """clamp(x, lo, hi) = min(max(x, lo), hi): the derivative of that composition (ties as min and max)."""
    x, lo, hi = t.args
    inner = _f("call", x, lo, value="max")
    d_inner = _d_extremum(inner, d[:2])
    return _d_extremum(_f("call", inner, hi, value="min"), [d_inner, d[2]])


def _chain(rule):
    """d f(a) = rule(node, a) da: the derivative of a function of one operand, 0 where da is."""
    return lambda t, d: None if d[0] is None else rule(t, t.args[0], d[0])


# ---------------------------------------------------------------- Triton spellings that depend on the node

def small_int_power(t: TExpr) -> bool:
    """Integer powers and constant exponents 0..16 are emitted as products."""
    exponent = t.args[1]
    return t.type == INT or (exponent.op == "const" and exponent.type == INT and 0 <= exponent.value <= 16)


def _int_power_exponent(args):
    """Kernels expand an integer power into products: its exponent must be a small constant."""
    base, exponent = args
    if base.type == INT and exponent.type == INT and not (exponent.op == "const" and 0 <= exponent.value <= 64):
        return 1, "an integer power needs a constant exponent in 0..64", "write a float base, e.g. `2.0 ** x`"
    return None


def _triton_pow(t, a):
    if small_int_power(t):
        n = int(t.args[1].value)  # the checker keeps integer exponents constant in 0..64
        return "(" + " * ".join([f"({a[0]})"] * n) + ")" if n else "1"
    return f"_powf(({a[0]}) * 1.0, ({a[1]}) * 1.0)"


def _triton_extremum(fn):
    def spell(t, args):
        out = args[0]
        for x in args[1:]:
            out = f"tl.{fn}({out}, {x})"
        return out
    return spell


def _int_helper(name):
    return lambda t: name if t.type == INT else None


def _sympy_equality(relation, boolean):
    """Equality of numbers, or of conditions (then equivalence / exclusive or)."""
    return lambda t, a: (boolean if t.args[0].type == BOOL else relation)(a[0], a[1])


def _binary(name, spelling, operands, result, evaluate, sympy_form, derivative=None, torch_code=None,
            triton=None, **more) -> Operator:
    template = f"({{0}} {spelling} {{1}})"
    return Operator(name, spelling, "binary", operands, result, evaluate, torch_code or template,
                    triton or template, sympy_form, derivative, **more)


def _function(name, operands, result, evaluate, torch_code, triton, sympy_form, derivative=None, **more) -> Operator:
    return Operator(name, name, "call", operands, result, evaluate, torch_code, triton, sympy_form, derivative,
                    **more)


def _float_function(name, torch_fn, sympy_fn, derivative, triton=None, torch_code=None, **more) -> Operator:
    """exp, log, ...: a float function of one number."""
    return _function(name, "num", FLOAT, _on_float(torch_fn),
                     torch_code or f"torch.{name}(rt.as_float({{0}}, {{float}}))",
                     triton or f"tl.{name}(({{0}}) * 1.0)", lambda t, a: sympy_fn(a[0]), _chain(derivative), **more)


def _float_helper(name: str, torch_fn, sympy_fn, derivative, torch_code=None) -> Operator:
    """A float function of one number that kernels compute with a helper `_<name>` (HELPERS in emit/triton.py)."""
    return _float_function(name, torch_fn, sympy_fn, derivative, triton=f"_{name}(({{0}}) * 1.0)",
                           torch_code=torch_code, triton_helper=lambda t: f"_{name}")


def _to_int(name: str, rounding: str, sympy_fn) -> Operator:
    """floor, int: a number to an int (ints unchanged). The float operand is computed in float32 in every
    backend, the reference included (see CONVERSIONS), so that the integer is the same everywhere."""
    helper = f"_{rounding}_int"
    return _function(name, "num", INT, lambda a, fd: float_to_int(a[0], rounding),
                     f"rt.float_to_int({{0}}, {rounding!r})",
                     lambda t, a: a[0] if t.args[0].type == INT else f"{helper}({a[0]})",
                     lambda t, a: sympy_fn(a[0]), lambda t, d: None,
                     triton_helper=lambda t: None if t.args[0].type == INT else helper)


def _sympy_trunc(x):
    return sympy.Piecewise((sympy.floor(x), x >= 0), (sympy.ceiling(x), True))


def _compare(name, spelling, torch_fn, sympy_fn, operands="num") -> Operator:
    return _binary(name, spelling, operands, BOOL, lambda a, fd: torch_fn(a[0], a[1]), sympy_fn)


def _bitwise(name, spelling, torch_fn) -> Operator:
    return _binary(name, spelling, INT, "promote", lambda a, fd: torch_fn(a[0], a[1]),
                   lambda t, a: sympy.Function(name)(*a))  # bit operations stay uninterpreted


def _logic(name, spelling, torch_fn, sympy_fn) -> Operator:
    symbol = "&" if name == "and_" else "|"  # elementwise on bool tensors
    return _binary(name, spelling, BOOL, BOOL, lambda a, fd: torch_fn(a[0], a[1]), lambda t, a: sympy_fn(a[0], a[1]),
                   torch_code=f"({{0}} {symbol} {{1}})", triton=f"({{0}} {symbol} {{1}})")


TABLE: tuple[Operator, ...] = (
    _binary("add", "+", "num", "promote", lambda a, fd: a[0] + a[1], lambda t, a: a[0] + a[1],
            lambda t, d: _plus(d[0], d[1])),
    _binary("sub", "-", "num", "promote", lambda a, fd: a[0] - a[1], lambda t, a: a[0] - a[1],
            lambda t, d: _plus(d[0], d[1], "sub")),
    _binary("mul", "*", "num", "promote", lambda a, fd: a[0] * a[1], lambda t, a: a[0] * a[1],
            lambda t, d: _plus(_times(d[0], t.args[1]), _times(t.args[0], d[1]))),
    _binary("div", "/", "num", FLOAT, _true_div, lambda t, a: a[0] / a[1], _d_div, divisor=True,
            torch_code="(rt.as_float({0}, {float}) / {1})", triton="(({0}) * 1.0 / {1})"),
    _binary("floordiv", "//", "num", "promote", lambda a, fd: floordiv(a[0], a[1]),
            lambda t, a: sympy.floor(a[0] / a[1]), lambda t, d: None, divisor=True,
            torch_code="rt.floordiv({0}, {1})", triton_helper=_int_helper("_floordiv"),
            triton=lambda t, a: f"_floordiv({a[0]}, {a[1]})" if t.type == INT else f"tl.floor({a[0]} / {a[1]})"),
    _binary("mod", "%", "num", "promote", lambda a, fd: floormod(a[0], a[1]), lambda t, a: sympy.Mod(a[0], a[1]),
            lambda t, d: _plus(d[0], _times(_f("floordiv", t.args[0], t.args[1]), d[1]), "sub"), divisor=True,
            torch_code="rt.floormod({0}, {1})", triton_helper=_int_helper("_floormod"),
            triton=lambda t, a: f"_floormod({a[0]}, {a[1]})" if t.type == INT else
            f"({a[0]} - {a[1]} * tl.floor({a[0]} / {a[1]}))"),
    _binary("pow", "**", "num", "promote", lambda a, fd: torch.pow(a[0], a[1]), lambda t, a: a[0] ** a[1], _d_pow,
            triton=_triton_pow, triton_helper=lambda t: None if small_int_power(t) else "_powf",
            restriction=_int_power_exponent),
    _bitwise("xor", "^", torch.bitwise_xor),
    _bitwise("bitand", "&", torch.bitwise_and),
    _bitwise("bitor", "|", torch.bitwise_or),
    _compare("lt", "<", torch.lt, lambda t, a: sympy.Lt(a[0], a[1])),
    _compare("le", "<=", torch.le, lambda t, a: sympy.Le(a[0], a[1])),
    _compare("gt", ">", torch.gt, lambda t, a: sympy.Gt(a[0], a[1])),
    _compare("ge", ">=", torch.ge, lambda t, a: sympy.Ge(a[0], a[1])),
    _compare("eq", "==", torch.eq, _sympy_equality(sympy.Eq, sympy.Equivalent), "equatable"),
    _compare("ne", "!=", torch.ne, _sympy_equality(sympy.Ne, sympy.Xor), "equatable"),
    _logic("and_", "and", torch.logical_and, sympy.And),
    _logic("or_", "or", torch.logical_or, sympy.Or),
    Operator("neg", "-", "unary", "num", "same", lambda a, fd: -a[0], "(-{0})", "(-{0})", lambda t, a: -a[0],
             lambda t, d: None if d[0] is None else _f("neg", d[0])),
    Operator("not", "not", "unary", BOOL, BOOL, lambda a, fd: torch.logical_not(a[0]), "rt.logical_not({0})",
             "({0} == 0)", lambda t, a: sympy.Not(a[0])),
    _function("min", "num+", "promote", _extremum(torch.minimum), "rt.minimum({args})", _triton_extremum("minimum"),
              lambda t, a: sympy.Min(*a), _d_extremum),
    _function("max", "num+", "promote", _extremum(torch.maximum), "rt.maximum({args})", _triton_extremum("maximum"),
              lambda t, a: sympy.Max(*a), _d_extremum),
    _function("abs", "num", "same", lambda a, fd: torch.abs(a[0]), "abs({0})", "tl.abs({0})",
              lambda t, a: sympy.Abs(a[0]),
              _chain(lambda t, x, dx: _select(TExpr("lt", (x, const(0)), None, BOOL), _f("neg", dx), dx))),
    _float_function("exp", torch.exp, sympy.exp, lambda t, x, dx: _times(t, dx)),
    _float_function("log", torch.log, sympy.log, lambda t, x, dx: _f("div", dx, x)),
    _float_function("sqrt", torch.sqrt, sympy.sqrt, lambda t, x, dx: _f("div", dx, _f("mul", const(2.0), t))),
    _float_function("tanh", torch.tanh, sympy.tanh,
                    lambda t, x, dx: _times(_f("sub", const(1.0), _f("mul", t, t)), dx),
                    triton="_tanh(({0}) * 1.0)", triton_helper=lambda t: "_tanh"),
    _float_function("sigmoid", torch.sigmoid, lambda x: 1 / (1 + sympy.exp(-x)),
                    lambda t, x, dx: _times(_f("mul", t, _f("sub", const(1.0), t)), dx), triton="tl.sigmoid(({0}) * 1.0)"),
    _float_function("sin", torch.sin, sympy.sin, lambda t, x, dx: _times(_f("call", x, value="cos"), dx)),
    _float_function("cos", torch.cos, sympy.cos,
                    lambda t, x, dx: _times(_f("neg", _f("call", x, value="sin")), dx)),
    _float_function("erf", torch.erf, sympy.erf, lambda t, x, dx: _times(
        _f("mul", const(2.0 / math.sqrt(math.pi)), _f("call", _f("neg", _f("mul", x, x)), value="exp")), dx)),
    _float_helper("softplus", softplus, lambda x: sympy.log(1 + sympy.exp(x)),
                  lambda t, x, dx: _times(_f("call", x, value="sigmoid"), dx),
                  torch_code="rt.softplus(rt.as_float({0}, {float}))"),
    _float_helper("log1p", torch.log1p, lambda x: sympy.log(1 + x),
                  lambda t, x, dx: _f("div", dx, _f("add", const(1.0), x))),
    _float_helper("expm1", torch.expm1, lambda x: sympy.exp(x) - 1,
                  lambda t, x, dx: _times(_f("add", t, const(1.0)), dx)),
    _function("clamp", "num,num,num", "promote", lambda a, fd: torch.minimum(torch.maximum(a[0], a[1]), a[2]),
              "rt.minimum(rt.maximum({0}, {1}), {2})", "tl.minimum(tl.maximum({0}, {1}), {2})",
              lambda t, a: sympy.Min(sympy.Max(a[0], a[1]), a[2]), _d_clamp),
    _to_int("floor", "floor", sympy.floor),
    _to_int("int", "trunc", _sympy_trunc),
    _function("where", "bool,any,any", "promote", lambda a, fd: torch.where(a[0], a[1], a[2]),
              "torch.where(torch.as_tensor({0}), {1}, {2})", "tl.where({0}, {1}, {2})",
              lambda t, a: sympy.Piecewise((a[1], a[0]), (a[2], True)), lambda t, d: _select(t.args[0], d[1], d[2])),
    _function("popcount", INT, INT, lambda a, fd: popcount(a[0]), "rt.popcount(torch.as_tensor({0}))",
              "_popcount({0})", lambda t, a: sympy.Function("popcount")(*a), triton_helper=lambda t: "_popcount"),
    _function("gray", INT, INT, lambda a, fd: torch.bitwise_xor(a[0], a[0] >> 1), "({0} ^ ({0} >> 1))",
              "({0} ^ ({0} >> 1))", lambda t, a: sympy.Function("gray")(*a)),
)

# Functions of other languages and how this one writes them (hints for an unknown function).
REWRITES = {
    "tan": "`sin(x) / cos(x)`", "sinh": "`(exp(x) - exp(-x)) / 2`", "cosh": "`(exp(x) + exp(-x)) / 2`",
    "ceil": "`-floor(-x)`", "round": "`floor(x + 0.5)`", "trunc": "`int(x)`", "sign": "`where(x > 0, 1, where(x < 0, -1, 0))`",
    "pow": "`a ** b`", "log2": "`log(x) / log(2.0)`", "log10": "`log(x) / log(10.0)`", "exp2": "`2.0 ** x`",
    "relu": "`max(x, 0)`", "square": "`x * x`", "rsqrt": "`1 / sqrt(x)`", "float": "`x * 1.0`",
    "minimum": "`min(a, b)`", "maximum": "`max(a, b)`", "clip": "`clamp(x, lo, hi)`", "select": "`where(c, a, b)`",
    "logsigmoid": "`-softplus(-x)`", "silu": "`x * sigmoid(x)`",
}
# Names of constants of other languages: the hint for each.
CONSTANT_HINTS = {
    "inf": "a literal must be finite: exclude pairs with `mask(i, j) = ...` (a bias of -inf is a mask), "
           "or use a large finite number such as `-1e9`",
    "nan": "a literal must be finite", "pi": "write `3.141592653589793`", "e": "write `exp(1.0)`",
}
CONSTANT_HINTS["infinity"] = CONSTANT_HINTS["inf"]

CONVERSIONS = frozenset({"floor", "int"})  # float -> int: the float operand is computed in float32 everywhere

OPERATORS = {o.name: o for o in TABLE if o.form != "call"}  # by TExpr op
FUNCTIONS = {o.name: o for o in TABLE if o.form == "call"}  # by function name
BINARY = {o.spelling: o for o in TABLE if o.form == "binary"}  # by spelling in a spec
UNARY = {o.spelling: o for o in TABLE if o.form == "unary"}


def operator_of(t: TExpr) -> Operator | None:
    """The operator a node applies, or None for a leaf (constant, variable, lookup, dot, ...)."""
    if t.op == "call":
        return FUNCTIONS.get(t.value)
    return OPERATORS.get(t.op)


def float32_operand(t: TExpr) -> bool:
    """Whether t converts a float to an int: its operand is then computed in float32 in every backend
    (the reference too), as masks are, so that the rounding, and with it the integer, is one value."""
    return t.op == "call" and t.value in CONVERSIONS and t.args[0].type == FLOAT


def fmt(e: TExpr) -> str:
    """Readable, fully parenthesised text of a typed expression."""
    return fold(e, lambda t, args: _fmt_node(t, args, operator_of(t)))


def _fmt_node(e: TExpr, a: list[str], operator: Operator | None) -> str:
    if operator is not None and operator.form == "binary":
        return f"({a[0]} {operator.spelling} {a[1]})"
    if operator is not None and operator.form == "unary":
        return f"({operator.spelling}{' ' if operator.spelling.isalpha() else ''}{a[0]})"
    if e.op == "const":
        return ("true" if e.value else "false") if e.type == BOOL else repr(e.value)
    if e.op in ("var", "size", "rsize", "scale"):
        return str(e.value)
    if e.op in ("qrow", "krow"):
        return f"{e.op[0]}[{'i' if e.op == 'qrow' else 'j'}]"
    if e.op in ("param", "input", "rowin"):
        return f"{e.value}[{', '.join(a)}]"
    if e.op == "slice":  # a row's last dimension: `q[i, 0:D]`, `(q[i] * X[h, i])[0:R]`
        bounds = f"{a[1]}:{a[2]}"
        leaf = e.args[0].op in ("qrow", "krow", "rowin")
        return f"{a[0][:-1]}, {bounds}]" if leaf else f"({a[0]})[{bounds}]"
    if e.op in ("call", "feature"):
        return f"{e.value}({', '.join(a)})"
    if e.op == "dot":
        return f"dot({a[0]}, {a[1]})"
    if e.op == "concat":  # prepared rows side by side (attncc/lang/rows.py)
        return f"concat({', '.join(a)})"
    if e.op == "cast":
        return f"{e.value}({a[0]})"
    raise ValueError(f"unknown expression op {e.op}")
