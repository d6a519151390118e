"""The meaning of typed expressions, evaluated with broadcasting torch ops.

This interpreter is the semantics of the language: the dense reference uses it (float64 for scores
and weights, float32 for masks, as kernels compute them; ints are 32-bit and wrap) and the checker
folds constants with it. Emitted backends re-implement the same meaning as generated code
and are tested against it. Values broadcast to [batch, heads, query tokens, key tokens].
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from .expr import BOOL, FLOAT, INT, TExpr, fold
from .operators import float32_operand, operator_of


@dataclass
class Env:
    sizes: dict[str, int] = field(default_factory=dict)
    rsizes: dict[str, int] = field(default_factory=dict)
    i: torch.Tensor | None = None
    j: torch.Tensor | None = None
    h: torch.Tensor | None = None
    b: torch.Tensor | None = None  # batch index [B, 1, 1, 1] (0 where there is no batch)
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


def evaluate(t: TExpr, env: Env) -> torch.Tensor:
    """Evaluate a typed expression; ints are int32 (wrapping, as in kernels), floats env.float_dtype.
    Each distinct subexpression is evaluated once, without recursion (specs may nest deeply). The float
    operand of a conversion to int (floor, int) is evaluated in float32, as kernels compute it."""
    return fold(t, lambda e, args: _node(e, args, env), descend=lambda e: e.op != "dot" and not float32_operand(e))


def _node(t: TExpr, args: list[torch.Tensor], env: Env) -> torch.Tensor:
    op = t.op
    if op == "const":
        dtype = torch.bool if t.type == BOOL else env.int_dtype if t.type == INT else env.float_dtype
        return torch.tensor(t.value, dtype=dtype)
    if op == "var":
        if t.value == "b":
            return env.b if env.b is not None else torch.zeros((), dtype=torch.int32)
        if t.value == "hk":  # the key/value head of query head h: heads of one group are adjacent
            return env.h // (env.rsizes["H"] // env.rsizes.get("Hkv", env.rsizes["H"]))
        return {"i": env.i, "j": env.j, "h": env.h}[t.value]
    if op == "size":
        return torch.tensor(env.sizes[t.value], dtype=env.int_dtype)
    if op == "rsize":  # Hkv, where a caller knows no grouping, is H (every head its own key/value head)
        value = env.rsizes[t.value] if t.value != "Hkv" else env.rsizes.get("Hkv", env.rsizes["H"])
        return torch.tensor(value, dtype=env.int_dtype)
    if op == "scale":
        return torch.tensor(env.rsizes["D"] ** -0.5, dtype=env.float_dtype)
    if op == "dot":
        return env.dot(t)
    if float32_operand(t):
        args = [evaluate(t.args[0], replace(env, float_dtype=torch.float32))]
    if op == "param":
        out = lookup(env.params[t.value], args, batched=False)
    elif op == "input":
        out = input_lookup(env.inputs[t.value], args, len(t.args))
    else:
        operator = operator_of(t)
        if operator is None:
            raise ValueError(f"cannot evaluate {op}")
        out = operator.evaluate(args, env.float_dtype)
        if operator.form == "unary":
            return out
    if t.type == FLOAT and out.dtype != env.float_dtype:
        out = out.to(env.float_dtype)
    return out


def fold_constants(t: TExpr) -> TExpr:
    """t with every operator over constants replaced by its value (where that value is finite), and
    the exact identities x ** 1 = x, x ** 0 = 1, x * 1 = 1 * x = x, x / 1 = x applied."""
    return fold(t, _fold_node)


def _fold_node(t: TExpr, folded: list[TExpr]) -> TExpr:
    args = tuple(folded)
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
