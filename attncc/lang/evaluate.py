"""The meaning of typed expressions, evaluated with broadcasting torch ops.

This interpreter is the semantics of the language: the dense reference uses it (float64 for scores
and weights, float32 for masks, as kernels compute them; ints are 32-bit and wrap) and the checker
folds constants with it. Emitted backends re-implement the same meaning as generated code
and are tested against it. Values broadcast to [batch, heads, query tokens, key tokens].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .expr import BOOL, FLOAT, INT, TExpr


@dataclass
class Env:
    sizes: dict[str, int] = field(default_factory=dict)
    rsizes: dict[str, int] = field(default_factory=dict)
    i: torch.Tensor | None = None
    j: torch.Tensor | None = None
    h: torch.Tensor | None = None
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # [B, *dims] or [*dims]
    dot: Callable[[TExpr], torch.Tensor] | None = None
    float_dtype: torch.dtype = torch.float64
    int_dtype: torch.dtype = torch.int32  # the language's ints; int64 only to detect overflow when folding


def lookup(table: torch.Tensor, indices: list[torch.Tensor], batched: bool) -> torch.Tensor:
    """table[indices] with every index clamped into range; a batched table gathers per batch row."""
    dims = table.shape[1:] if batched else table.shape
    idx = [torch.as_tensor(ix).long().clamp(0, n - 1) for ix, n in zip(indices, dims)]
    idx = list(torch.broadcast_tensors(*idx))
    if batched:
        b = torch.arange(table.shape[0], device=table.device).view(-1, *([1] * (idx[0].dim() - 1)))
        if idx[0].dim() == 0:
            b = torch.arange(table.shape[0], device=table.device)
        return table[(b, *idx)]
    return table[tuple(idx)]


def input_lookup(table: torch.Tensor, indices, ndims: int) -> torch.Tensor:
    """Lookup into a call-time input; a leading batch dimension lines up with [B, H, Nq, N]."""
    batched = table.dim() > ndims
    out = lookup(table, list(indices), batched=batched)
    if batched and out.dim() < 4:
        out = out.reshape(out.shape[0], *([1] * (4 - out.dim())), *out.shape[1:])
    return out


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


def _binary(op: str, a: torch.Tensor, b: torch.Tensor, float_dtype: torch.dtype) -> torch.Tensor:
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    if op == "div":
        return a.to(float_dtype) / b if not a.is_floating_point() and not b.is_floating_point() else a / b
    if op == "floordiv":
        return floordiv(a, b)
    if op == "mod":
        return floormod(a, b)
    if op == "pow":
        return torch.pow(a, b)
    if op == "xor":
        return torch.bitwise_xor(a, b)
    if op == "bitand":
        return torch.bitwise_and(a, b)
    if op == "bitor":
        return torch.bitwise_or(a, b)
    if op == "and_":
        return torch.logical_and(a, b)
    if op == "or_":
        return torch.logical_or(a, b)
    compare = {"lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge, "eq": torch.eq, "ne": torch.ne}
    return compare[op](a, b)


def _call(fn: str, args: list[torch.Tensor], float_dtype: torch.dtype) -> torch.Tensor:
    if fn in ("min", "max"):
        out = args[0]
        for a in args[1:]:
            out = torch.minimum(out, a) if fn == "min" else torch.maximum(out, a)
        return out
    if fn == "where":
        return torch.where(args[0], args[1], args[2])
    if fn == "popcount":
        return popcount(args[0])
    if fn == "gray":
        return torch.bitwise_xor(args[0], args[0] >> 1)
    if fn == "abs":
        return torch.abs(args[0])
    x = args[0] if args[0].is_floating_point() else args[0].to(float_dtype)
    return {"exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "tanh": torch.tanh,
            "sigmoid": torch.sigmoid}[fn](x)


def evaluate(t: TExpr, env: Env) -> torch.Tensor:
    """Evaluate a typed expression; ints are int32 (wrapping, as in kernels), floats env.float_dtype."""
    op = t.op
    if op == "const":
        dtype = torch.bool if t.type == BOOL else env.int_dtype if t.type == INT else env.float_dtype
        return torch.tensor(t.value, dtype=dtype)
    if op == "var":
        return {"i": env.i, "j": env.j, "h": env.h}[t.value]
    if op == "size":
        return torch.tensor(env.sizes[t.value], dtype=env.int_dtype)
    if op == "rsize":
        return torch.tensor(env.rsizes[t.value], dtype=env.int_dtype)
    if op == "scale":
        return torch.tensor(env.rsizes["D"] ** -0.5, dtype=env.float_dtype)
    if op == "dot":
        return env.dot(t)
    args = [evaluate(a, env) for a in t.args]
    if op == "neg":
        return -args[0]
    if op == "not":
        return torch.logical_not(args[0])
    if op == "call":
        out = _call(t.value, args, env.float_dtype)
    elif op == "param":
        out = lookup(env.params[t.value], args, batched=False)
    elif op == "input":
        out = input_lookup(env.inputs[t.value], args, len(t.args))
    else:
        out = _binary(op, args[0], args[1], env.float_dtype)
    if t.type == FLOAT and out.dtype != env.float_dtype:
        out = out.to(env.float_dtype)
    return out


def fold_constants(t: TExpr) -> TExpr:
    """t with every operator over constants replaced by its value (where that value is finite), and
    the exact identities x ** 1 = x, x ** 0 = 1, x * 1 = 1 * x = x, x / 1 = x applied."""
    args = tuple(fold_constants(a) for a in t.args)
    t = TExpr(t.op, args, t.value, t.type, t.span) if args else t
    one = lambda a: a.op == "const" and a.value == 1 and not isinstance(a.value, bool)
    if t.op == "pow" and args[1].op == "const" and args[1].value in (0, 1) and not isinstance(args[1].value, bool):
        return args[0] if args[1].value == 1 and args[0].type == t.type else \
            TExpr("const", (), 1 if t.type == INT else 1.0, t.type, t.span) if args[1].value == 0 else t
    if t.op in ("mul", "div") and one(args[1]) and args[0].type == t.type:
        return args[0]
    if t.op == "mul" and one(args[0]) and args[1].type == t.type:
        return args[1]
    if args and all(a.op == "const" for a in args) and t.op not in ("param", "input", "dot", "feature"):
        try:
            return TExpr("const", (), eval_scalar(t), t.type, t.span)
        except (ArithmeticError, ValueError, RuntimeError):
            return t
    return t


def eval_scalar(t: TExpr) -> int | float | bool:
    """Evaluate an expression over constants to a Python number (used for constant folding)."""
    value = evaluate(t, Env(int_dtype=torch.int64)).item()
    if t.type == INT:
        if abs(value) >= 2**31:
            raise OverflowError("integer out of range")
        return int(value)
    if t.type == BOOL:
        return bool(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("not finite")
    return float(value)
