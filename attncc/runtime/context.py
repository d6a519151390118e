"""What a compiled module is built and called with, checked: its sizes (at construction), its learned
tables' initial values, and each call's q, k, v and declared inputs, which become the call's Context
(everything a generated hole may read). Errors name the spec and say what was expected.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..lang.source import AttnccError, ShapeError, did_you_mean


@dataclass(frozen=True)
class ParamSpec:
    shape: Callable[[dict], tuple]
    init: str
    args: dict


@dataclass(frozen=True)
class InputSpec:
    dims: Callable[[dict], tuple]
    dtype: str


@dataclass
class Context:
    """Everything a generated hole may read: sizes, tables and the run-time dims."""

    sizes: dict
    params: dict
    inputs: dict
    N: int
    Nq: int
    H: int
    D: int
    E: int
    dtype: torch.dtype = torch.float32  # of the computation: float64 for float64 inputs
    noise: object = None  # the random draw of an approximation (lara, ra) for this call
    B: int = 1  # batch rows (the batch index `b` runs over them)
    lowering: str = ""  # the lowering this call runs (the module's DISPATCH entry for N); "": LOWERING
    Hkv: int = 0  # key/value heads (grouped-query attention: H // Hkv query heads read each); 0: H

    def __post_init__(self):
        self.Hkv = self.Hkv or self.H

    @property
    def group(self) -> int:
        """Query heads per key/value head: query head h reads key/value head h // group."""
        return self.H // self.Hkv

    @property
    def scale(self) -> float:
        return self.D ** -0.5

    def fp(self, x: float) -> torch.Tensor:
        """A float literal at the precision of the computation."""
        return torch.tensor(x, dtype=self.dtype)


def init_table(shape: tuple, init: str, args: dict) -> torch.Tensor:
    if init == "zeros":
        return torch.zeros(shape)
    if init == "ones":
        return torch.ones(shape)
    if init == "constant":
        return torch.full(shape, float(args["value"]))
    if init == "normal":
        return torch.randn(shape) * args["std"] + args["mean"]
    if init == "uniform":
        return torch.rand(shape) * (args["high"] - args["low"]) + args["low"]
    if init == "alibi":  # ALiBi slopes 2^(-8 k / n), k = 1..n, along the first dimension
        n = shape[0]
        slopes = torch.tensor([2.0 ** (-8.0 * (idx + 1) / n) for idx in range(n)])
        return slopes.view(n, *([1] * (len(shape) - 1))).expand(shape).clone()
    raise AttnccError(f"unknown initializer {init}")


def sizes_text(sizes: dict) -> str:
    return ", ".join(f"{n} = {v}" for n, v in sizes.items())


def checked_sizes(spec, sizes: dict) -> tuple[dict, dict, dict]:
    """(sizes, fixed, shapes) of a module of the compiled class `spec` (its SPEC_NAME, SIZES, NEEDS,
    DERIVED, DIVISORS, PARAMS) built with the keywords `sizes`: every declared size with its override
    and the derived ones recomputed, the NEEDS dims fixed at construction, and each learned table's
    shape. An unknown, derived, non-integer, negative or too large size, or one that empties a
    divisor or a table, raises AttnccError naming it."""
    unknown = set(sizes) - set(spec.SIZES) - set(spec.NEEDS)
    if unknown:
        name = sorted(unknown)[0]
        hint = did_you_mean(name, set(spec.SIZES) | set(spec.NEEDS))
        raise AttnccError(f"{spec.SPEC_NAME}: unknown size `{name}`" + (f"; {hint}" if hint else ""))
    missing = [n for n in spec.NEEDS if n not in sizes]
    if missing:
        raise AttnccError(f"{spec.SPEC_NAME}: its tables are sized by {', '.join(missing)}; pass "
                          + ", ".join(f"{n}=..." for n in missing) + " to the constructor")
    derived = sorted(set(sizes) & set(spec.DERIVED))
    if derived:
        raise AttnccError(f"{spec.SPEC_NAME}: size `{derived[0]}` is derived from other sizes; set those instead")
    bad = [n for n, v in sizes.items() if isinstance(v, bool) or not isinstance(v, int)]
    if bad:
        raise AttnccError(f"{spec.SPEC_NAME}: size `{bad[0]}` must be an integer, got {sizes[bad[0]]!r}")
    too_big = [n for n, v in sizes.items() if abs(v) >= 2**31]
    if too_big:
        raise AttnccError(f"{spec.SPEC_NAME}: size `{too_big[0]}` must be below 2^31 (ints are 32-bit)")
    try:
        own = {**spec.SIZES, **{n: int(v) for n, v in sizes.items() if n in spec.SIZES}}
        fixed = {n: int(sizes[n]) for n in spec.NEEDS}
        for name, fn in spec.DERIVED.items():  # in declaration order, so chains resolve
            own[name] = int(fn(own))
        shapes = {name: tuple(int(d) for d in p.shape({**own, **fixed}))
                  for name, p in spec.PARAMS.items()}
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise AttnccError(f"{spec.SPEC_NAME}: bad sizes {sizes}: {exc}") from None
    too_big = [n for n in spec.DERIVED if abs(own[n]) >= 2**31]
    if too_big:
        name = too_big[0]
        raise AttnccError(f"{spec.SPEC_NAME}: size `{name}` (derived from other sizes) would be {own[name]}, "
                          "beyond the 32-bit ints of the spec and its kernels; make the sizes it is computed from smaller")
    negative = [n for n, v in {**own, **fixed}.items() if v < 0]
    if negative:
        raise AttnccError(f"{spec.SPEC_NAME}: size `{negative[0]}` must be >= 0")
    if any(fn(own) == 0 for fn in spec.DIVISORS):
        raise AttnccError(f"{spec.SPEC_NAME}: sizes {own} make a divisor of the spec 0")
    for name, shape in shapes.items():
        if any(d <= 0 for d in shape):
            raise AttnccError(f"{spec.SPEC_NAME}: table `{name}` would have shape {shape}")
    return own, fixed, shapes


def call_dims(name: str, q, k, v) -> dict:
    """{N, Nq, H, D, E, Hkv} of a call: q [B, H, Nq, D], k [B, Hkv, N, D], v [B, Hkv, N, E], floating
    point, of one dtype and device, Hkv dividing H (grouped-query attention); else a ShapeError."""
    for arg, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ShapeError(f"{name}: `{arg}` must be a tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ShapeError(f"{name}: `{arg}` must be [batch, heads, tokens, dim], got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ShapeError(f"{name}: `{arg}` must be floating point, got {t.dtype}")
    B, H, Nq, D = q.shape
    N, Hkv = k.shape[2], k.shape[1]
    want = {"k": (B, Hkv, N, D), "v": (B, Hkv, N, v.shape[-1])}
    if Hkv == 0 or H % Hkv:
        raise ShapeError(f"{name}: `k` has {Hkv} heads, which do not divide the {H} heads of q "
                         f"(q is {tuple(q.shape)}, k {tuple(k.shape)}); expected k [B, Hkv, N, D] and "
                         "v [B, Hkv, N, E] with Hkv dividing H (grouped-query attention; Hkv = H: one "
                         "key/value head per query head)")
    for arg, t in (("k", k), ("v", v)):
        if tuple(t.shape) != want[arg]:
            raise ShapeError(f"{name}: `{arg}` has shape {tuple(t.shape)}, expected {want[arg]} "
                             f"(q is {tuple(q.shape)}; k and v share their heads, dividing q's, and their "
                             "token count)")
        if t.dtype != q.dtype or t.device != q.device:
            raise ShapeError(f"{name}: `{arg}` is {t.dtype} on {t.device}, q is {q.dtype} on {q.device}")
    return {"N": N, "Nq": Nq, "H": H, "D": D, "E": v.shape[-1], "Hkv": Hkv}


def checked_inputs(name: str, declared: dict, inputs: dict, sizes: dict, batch: int, device,
                   dtype: torch.dtype) -> dict:
    """The call's `inputs` against the `declared` InputSpecs: each present, real, of its declared
    shape (at `sizes`, with or without a leading batch of `batch`), as int32, bool or float `dtype`
    tensors on `device`; an unknown or missing one is a ShapeError."""
    unknown = set(inputs) - set(declared)
    if unknown:
        arg = sorted(unknown)[0]
        hint = did_you_mean(arg, declared)
        raise ShapeError(f"{name}: unexpected input `{arg}`" + (f"; {hint}" if hint else ""))
    checked = {}
    for arg, spec in declared.items():
        if arg not in inputs:
            raise ShapeError(f"{name}: missing input `{arg}` (declared `input {arg}[...]`)")
        try:
            t = torch.as_tensor(inputs[arg], device=device)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ShapeError(f"{name}: input `{arg}` must be a tensor or a nested list of "
                             f"numbers, got {type(inputs[arg]).__name__} ({exc})") from None
        if t.is_complex():
            raise ShapeError(f"{name}: input `{arg}` must be real, got {t.dtype}")
        shape = tuple(int(d) for d in spec.dims(sizes))
        if tuple(t.shape) not in (shape, (batch, *shape)):
            raise ShapeError(f"{name}: input `{arg}` has shape {tuple(t.shape)}, expected "
                             f"{shape} or {(batch, *shape)}")
        if spec.dtype in ("int", "bool") and t.is_floating_point():
            raise ShapeError(f"{name}: input `{arg}` must be {spec.dtype}, got {t.dtype}")
        checked[arg] = t.int() if spec.dtype == "int" else t.bool() if spec.dtype == "bool" else t.to(dtype)
    return checked


def call_context(name: str, q, k, v, inputs: dict, *, declared: dict, sizes: dict, fixed: dict,
                 params: dict) -> Context:
    """The checked Context of a call of the module `name` built with `sizes` and `fixed` dims: q, k,
    v (call_dims; a fixed dim must match), the declared inputs (checked_inputs) and the learned tables
    `params`, floats at the computation's precision (float64 for float64 q, else float32)."""
    dims = call_dims(name, q, k, v)
    for n, value in fixed.items():
        if dims[n] != value:
            raise ShapeError(f"{name}: built for {n} = {value}, called with {n} = {dims[n]}")
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32  # float inputs and tables join at it
    checked = checked_inputs(name, declared, inputs, {**sizes, **dims}, q.shape[0], q.device, dtype)
    if q.dtype == torch.float64:  # tables join the computation at its precision
        params = {n: p.double() for n, p in params.items()}
    return Context(sizes, params, checked, **dims, dtype=dtype, B=q.shape[0])


__all__ = ["Context", "InputSpec", "ParamSpec", "call_context", "call_dims", "checked_inputs", "checked_sizes",
           "init_table", "sizes_text"]
