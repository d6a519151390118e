"""The Triton helper functions that generated kernels call (written once per generated module, only
those its expressions use): floor division and modulo with Python's signs, powers, tanh, log1p, expm1,
softplus, float-to-int rounding and popcount, which Triton's own library lacks or defines otherwise."""
from __future__ import annotations

from ..lang.expr import TExpr
from ..lang.operators import operator_of
from .exprs import division_helper

HELPERS = {
    "_floordiv": '''@triton.jit
def _floordiv(a, b):
    """Floor division on integers (Triton's // truncates toward zero); x // 0 = 0."""
    safe = tl.where(b == 0, 1, b)
    q = a // safe
    return tl.where(b == 0, 0, tl.where(((a % safe) != 0) & ((a < 0) != (safe < 0)), q - 1, q))
''',
    "_floormod": '''@triton.jit
def _floormod(a, b):
    """Modulo on integers with the divisor's sign; x % 0 = x."""
    safe = tl.where(b == 0, 1, b)
    r = a % safe
    return tl.where(b == 0, a, tl.where((r != 0) & ((r < 0) != (safe < 0)), r + safe, r))
''',
    "_floordiv_size": '''@triton.jit
def _floordiv_size(a, b: tl.constexpr, SHIFT: tl.constexpr, NONNEG: tl.constexpr):
    """a // b (floor) by a size b >= 1: a shift where b = 2 ** SHIFT, truncation where a >= 0 (NONNEG)."""
    if SHIFT >= 0:
        return a >> SHIFT
    elif NONNEG:
        return a // b
    else:
        q = a // b
        return tl.where((q * b != a) & (a < 0), q - 1, q)
''',
    "_floormod_size": '''@triton.jit
def _floormod_size(a, b: tl.constexpr, SHIFT: tl.constexpr, NONNEG: tl.constexpr):
    """a % b (the floor remainder, >= 0) by a size b >= 1: a mask where b = 2 ** SHIFT, else Triton's %."""
    if SHIFT >= 0:
        return a & (b - 1)
    elif NONNEG:
        return a % b
    else:
        r = a % b
        return tl.where(r < 0, r + b, r)
''',
    "_powf": '''@triton.jit
def _powf(a, b):
    """a ** b on floats as in torch: negative bases need integral exponents (else NaN)."""
    r = tl.exp(b * tl.log(tl.abs(a)))
    whole = tl.floor(b) == b
    odd = whole & (tl.abs(b - 2.0 * tl.floor(b * 0.5)) == 1.0)
    r = tl.where(a < 0.0, tl.where(whole, tl.where(odd, -r, r), float('nan')), r)
    return tl.where(a == 0.0, tl.where(b == 0.0, 1.0, tl.where(b > 0.0, 0.0, float('inf'))), r)
''',
    "_tanh": '''@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0
''',
    "_log1p": '''@triton.jit
def _log1p(x):
    """log(1 + x), accurate near 0: log(u) * x / (u - 1) with u = 1 + x as rounded (Goldberg)."""
    u = 1.0 + x
    d = u - 1.0
    r = tl.log(u) * (x / tl.where(d == 0.0, 1.0, d))
    return tl.where(d == 0.0, x, tl.where(u == float('inf'), u, r))
''',
    "_expm1": '''@triton.jit
def _expm1(x):
    """exp(x) - 1, accurate near 0: (u - 1) * x / log(u) with u = exp(x) as rounded (Kahan)."""
    u = tl.exp(x)
    lu = tl.log(u)
    r = (u - 1.0) * (x / tl.where(u == 1.0, 1.0, lu))
    return tl.where(u == 1.0, x, tl.where(u - 1.0 == -1.0, -1.0, tl.where(u == float('inf'), u, r)))
''',
    "_softplus": '''@triton.jit
def _softplus(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), which never overflows."""
    e = tl.exp(-tl.abs(x))
    u = 1.0 + e
    d = u - 1.0
    return tl.maximum(x, 0.0) + tl.where(d == 0.0, e, tl.log(u) * (e / tl.where(d == 0.0, 1.0, d)))
''',
    "_floor_int": '''@triton.jit
def _floor_int(x):
    """floor(x) as an int32, saturating at the int32 range, NaN giving 0 (as rt.float_to_int)."""
    x = tl.where(x == x, x, 0.0)
    r = tl.floor(tl.minimum(tl.maximum(x, -2147483648.0), 2147483520.0)).to(tl.int32)
    return tl.where(x >= 2147483648.0, 2147483647, r)
''',
    "_trunc_int": '''@triton.jit
def _trunc_int(x):
    """x truncated toward 0 as an int32, saturating at the int32 range, NaN giving 0 (as rt.float_to_int)."""
    x = tl.where(x == x, x, 0.0)
    r = tl.minimum(tl.maximum(x, -2147483648.0), 2147483520.0).to(tl.int32)
    return tl.where(x >= 2147483648.0, 2147483647, r)
''',
    "_popcount": '''@triton.jit
def _popcount(x):
    """Set bits of the 32-bit pattern of x (SWAR)."""
    u = x.to(tl.int32).to(tl.uint32, bitcast=True)
    u = u - ((u >> 1) & 0x55555555)
    u = (u & 0x33333333) + ((u >> 2) & 0x33333333)
    u = (u + (u >> 4)) & 0x0F0F0F0F
    return ((u * 0x01010101) >> 24).to(tl.int32)
''',
}


def helpers_of(t: TExpr):
    """The names of the HELPERS that the code of t calls."""
    for e in t.walk():
        special = division_helper(e)
        if special is not None:  # "" for a division printed inline (a shift, or truncation)
            if special:
                yield special
            continue
        operator = operator_of(e)
        helper = operator.triton_helper(e) if operator is not None else None
        if helper is not None:
            yield helper
