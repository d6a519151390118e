"""What a mask or modulation depends on, proven with sympy and cross-checked by sampling.

A Structure says for which (i, j) an expression is non-zero (masks) or how it varies (modulations):
  full                      every (i, j)
  band(lo, hi)              exactly lo <= i - j <= hi (causal is band(0, oo)); lo, hi sympy in sizes
  toeplitz                  depends on (i, j) only through d = i - j (and on h)
  general                   nothing proven
"""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Callable

import sympy
import torch

from ..lang.expr import BOOL, FLOAT, TExpr, conjuncts, const, fold, postorder, substitute
from ..lang.evaluate import Env, evaluate, fold_constants
from ..lang.operators import operator_of
from .session import (BudgetSpent, NotEncodable, budget_note, checkpoint, expr_digest, memoized, stored_bool,
                      sympy_from_json, sympy_to_json)

I, J, DIFF, HEAD = sympy.symbols("i j d h", integer=True)
BATCH = sympy.Symbol("b", integer=True, nonnegative=True)  # the batch index: like h, a free integer
HEAD_KV = sympy.Symbol("hk", integer=True, nonnegative=True)  # h's key/value head: like h, a free integer


@dataclass(frozen=True)
class Structure:
    kind: str  # full | causal | band | toeplitz | general
    lo: object = -sympy.oo
    hi: object = sympy.oo
    reason: str = ""

    @property
    def is_toeplitz(self) -> bool:
        """Depends on (i, j) only through i - j: true of full, causal and band masks too."""
        return self.kind != "general"

    @property
    def bounded(self) -> bool:
        """Whether a band [lo, hi] on i - j is known to contain every unmasked pair."""
        return sympy.sympify(self.lo).is_finite or sympy.sympify(self.hi).is_finite

    def bounds_at(self, values: dict) -> tuple[int | None, int | None]:
        """(lo, hi) as ints at concrete sizes (values by symbol name); None for an unbounded side."""
        def at(b):
            b = sympy.sympify(b)
            return int(b.subs({s: values[s.name] for s in b.free_symbols})) if b.is_finite else None
        return at(self.lo), at(self.hi)

    def describe(self) -> str:
        if self.kind == "band":
            return f"band {self.lo} <= i - j <= {self.hi}"
        if self.kind in ("general", "toeplitz") and self.bounded:
            return f"{self.kind} within {self.lo} <= i - j <= {self.hi}"
        return self.kind


FULL = Structure("full", reason="no mask")


LOGIC = {"and_": sympy.And, "or_": sympy.Or}


class _Chain:
    """The operands of a chain of one logical operator, built into one n-ary sympy call when it is
    used: sympy flattens and sorts the operands of every And / Or it builds, so building a chain of
    n `or`s two at a time would cost n^2 log n."""

    def __init__(self, op: str, operands: tuple):
        self.op, self.operands, self._built = op, operands, None

    def built(self):
        if self._built is None:
            self._built = LOGIC[self.op](*self.operands)
        return self._built


def to_sympy(t: TExpr, symbols: dict[str, sympy.Symbol]):
    """Typed expression -> sympy; lookups, bit operations and popcount stay uninterpreted functions."""
    return _built(dict(_sympy_forms(t, symbols))[t])


def _sympy_forms(t: TExpr, symbols: dict):
    """(e, sympy form of e) for the distinct subexpressions e of t, arguments first; the form of an
    and/or is a _Chain until something uses it."""
    checkpoint()
    done = {}
    for e in postorder(t):
        args = [done[a] for a in e.args]
        if e.op in LOGIC:
            operands = ()
            for a in args:
                operands += a.operands if isinstance(a, _Chain) and a.op == e.op else (_built(a),)
            done[e] = _Chain(e.op, operands)
        else:
            done[e] = _sympy_node(e, [_built(a) for a in args], symbols)
        yield e, done[e]


def _built(form):
    return form.built() if isinstance(form, _Chain) else form


def _sympy_node(t: TExpr, a: list, symbols: dict[str, sympy.Symbol]):
    op = t.op
    if op == "const":
        return sympy.true if t.value is True else sympy.false if t.value is False else sympy.sympify(t.value)
    if op == "var":
        return {"i": I, "j": J, "h": HEAD, "hk": HEAD_KV, "b": BATCH}[t.value]
    if op in ("size", "rsize"):
        return symbols[t.value]
    if op == "scale":
        return symbols["D"] ** sympy.Rational(-1, 2)
    if op in ("dot", "feature", "qrow", "krow"):
        raise ValueError("q/k terms have no index structure")
    if op in ("param", "input"):
        f = sympy.Function(f"{op}_{t.value}")(*a)
        return sympy.Eq(f, 1) if t.type == BOOL else f  # a bool lookup must stay a sympy Boolean
    operator = operator_of(t)
    if operator is None:
        raise ValueError(f"no sympy form for {op}")
    return operator.sympy(t, a)


def relation_to_zero(rel):
    """a (op) b -> a - b (op) 0, written with a positive coefficient of d where it has one."""
    moved = rel.func(sympy.expand(rel.lhs - rel.rhs), 0)
    coeff = moved.lhs.coeff(DIFF, 1)
    return moved.reversedsign if coeff.is_number and coeff < 0 else moved


# simplify on more sympy operations than this may run for minutes; masks that large that only a
# simplify would put in d = i - j are not worth the wait (they stay general).
SIMPLIFY_LIMIT = 120
# Where j survives a substitution for good: nothing rewrites doc[j], a bit operation of j, or
# (j + d) // w, (j + d) % w into an expression of d alone.
OPAQUE_IN_J = (sympy.core.function.AppliedUndef, sympy.floor, sympy.ceiling, sympy.Mod)


@functools.lru_cache(maxsize=512)
def _in_d(expr):
    """Rewrite an (i, j) expression in d = i - j; None if j does not cancel.

    Substitution alone settles most masks. `simplify` (slow) runs only when j survives outside any
    lookup, floor or mod and inside no comparison that is a polynomial in j, and only on a small
    expression: j == 3 or doc[j] never cancel, and simplify on hundreds of terms takes minutes."""
    if not (expr.has(I) or expr.has(J)):
        return expr
    checkpoint()
    if _keeps_j(expr):
        return None
    rewritten = expr.subs(I, J + DIFF)
    if rewritten.has(J):  # j <= j + d: move every comparison to `lhs - rhs (op) 0`, which cancels j cheaply
        rewritten = rewritten.replace(lambda e: isinstance(e, sympy.core.relational.Relational), relation_to_zero)
    if not rewritten.has(J):
        return rewritten
    checkpoint()
    if sympy.count_ops(rewritten) > SIMPLIFY_LIMIT:
        return None
    rewritten = sympy.simplify(rewritten)
    return None if rewritten.has(J) else rewritten


def _keeps_j(expr) -> bool:
    """Whether some part of expr reads j after i = j + d whatever the rest does: a lookup, floor or
    mod of j, or a comparison whose sides differ by a polynomial in j (j == 3, i + j < N). Tried part
    by part, so that on a mask of hundreds of comparisons the first such one settles it."""
    shift = lambda e: e.subs(I, J + DIFF)
    for f in expr.atoms(*OPAQUE_IN_J):
        if (f.has(I) or f.has(J)) and shift(f).has(J):
            return True
    for r in expr.atoms(sympy.core.relational.Relational):
        checkpoint()
        e = sympy.expand(shift(r.lhs - r.rhs)) if r.has(I) or r.has(J) else sympy.Integer(0)
        if e.has(J) and e.is_polynomial(J):
            return True
    return False


def _exact_in_sizes(c) -> bool:
    """Whether c is exact integer arithmetic over sizes: no float, no table, no head or batch index, no
    irrational power.
    Only such bounds are the same number in every backend, for every head, and in Python launchers."""
    return (not c.atoms(sympy.Float) and not c.atoms(sympy.core.function.AppliedUndef)
            and all(s.is_integer and s not in (I, J, HEAD, HEAD_KV, BATCH, DIFF) for s in c.free_symbols)
            and all(p.exp.is_integer for p in c.atoms(sympy.Pow)))


def _linear_bound(rel):
    """a*d + c (op) 0 with rational a != 0 and c exact in sizes -> [('lo'|'hi', bound)] on the integer d."""
    e = sympy.expand(rel.lhs - rel.rhs)
    a = e.coeff(DIFF, 1)
    c = sympy.expand(e - a * DIFF)
    if not a.is_Rational or a == 0 or c.has(DIFF) or not _exact_in_sizes(c):
        return None
    x = -c / a
    op = type(rel)
    if a < 0:  # dividing by a negative flips the comparison
        op = {sympy.Lt: sympy.Gt, sympy.Le: sympy.Ge, sympy.Gt: sympy.Lt, sympy.Ge: sympy.Le}.get(op, op)
    if op is sympy.Lt:
        return [("hi", sympy.ceiling(x) - 1)]
    if op is sympy.Le:
        return [("hi", sympy.floor(x))]
    if op is sympy.Gt:
        return [("lo", sympy.floor(x) + 1)]
    if op is sympy.Ge:
        return [("lo", sympy.ceiling(x))]
    if op is sympy.Eq:  # d == x has a solution only if x is an integer: claim a band only when provable
        return [("lo", x), ("hi", x)] if x.is_integer else None
    return None


def _split_extremum(rel):
    """max(a, b) <= w  <=>  a <= w and b <= w;  min(a, b) >= w  <=>  a >= w and b >= w (either side)."""
    op, lhs, rhs = type(rel), rel.lhs, rel.rhs
    flip = {sympy.Le: sympy.Ge, sympy.Lt: sympy.Gt, sympy.Ge: sympy.Le, sympy.Gt: sympy.Lt}
    if op not in flip:
        return None
    if isinstance(rhs, (sympy.Max, sympy.Min)) and not isinstance(lhs, (sympy.Max, sympy.Min)):
        op, lhs, rhs = flip[op], rhs, lhs
    if (isinstance(lhs, sympy.Max) and op in (sympy.Le, sympy.Lt)) or \
            (isinstance(lhs, sympy.Min) and op in (sympy.Ge, sympy.Gt)):
        return sympy.And(*(op(a, rhs) for a in lhs.args))
    return None


def _interval(cond):
    """Interval [lo, hi] of integers d where cond holds, if cond is a conjunction of linear bounds."""
    if cond is sympy.true:
        return -sympy.oo, sympy.oo
    if isinstance(cond, sympy.And):
        lo, hi = -sympy.oo, sympy.oo
        for part in cond.args:
            sub = _interval(part)
            if sub is None:
                return None
            lo, hi = sympy.Max(lo, sub[0]), sympy.Min(hi, sub[1])
        return lo, hi
    if isinstance(cond, sympy.core.relational.Relational):
        split = _split_extremum(cond)
        if split is not None:
            return _interval(split)
        if cond.has(sympy.Abs):  # |u| <= w  <=>  -w <= u <= w
            lhs, rhs = cond.lhs, cond.rhs
            if isinstance(lhs, sympy.Abs) and type(cond) in (sympy.Le, sympy.Lt):
                u = lhs.args[0]
                return _interval(sympy.And(type(cond)(u, rhs), type(cond)(-u, rhs)))
            if isinstance(rhs, sympy.Abs) and type(cond) in (sympy.Ge, sympy.Gt):
                flip = {sympy.Ge: sympy.Le, sympy.Gt: sympy.Lt}[type(cond)]
                return _interval(flip(rhs, lhs))
            return None
        bounds = _linear_bound(cond)
        if bounds is None:
            return None
        lo, hi = -sympy.oo, sympy.oo
        for side, value in bounds:
            lo, hi = (value, hi) if side == "lo" else (lo, value)
        return lo, hi
    return None


COMPARISONS = ("eq", "ne", "lt", "le", "gt", "ge")
OPAQUE_OPS = ("floordiv", "mod", "param", "input", "xor", "bitand", "bitor")
OPAQUE_CALLS = ("popcount", "gray")


def _unless_reads_j(t: TExpr, symbols: dict):
    """t in sympy, or None as soon as one of its comparisons, floors, mods or lookups reads j beyond
    i - j (see _keeps_j): on a mask of hundreds of comparisons (global tokens spelled out with `or`)
    the first `i == 3` settles it, before the rest is built."""
    for e, form in _sympy_forms(t, symbols):
        if (e.op in COMPARISONS or e.op in OPAQUE_OPS or (e.op == "call" and e.value in OPAQUE_CALLS)) \
                and _keeps_j(form):
            return None
    return _built(form)


def _conjunct_bounds(forms: list) -> tuple:
    """A band that contains the mask: its conjuncts (sympy, None where one reads j beyond i - j)
    that are linear bounds on i - j."""
    lo, hi = -sympy.oo, sympy.oo
    for form in forms:
        in_d = _in_d(form) if form is not None else None
        interval = _interval(in_d) if in_d is not None else None
        if interval is not None:
            lo, hi = sympy.Max(lo, interval[0]), sympy.Min(hi, interval[1])
    return lo, hi


def _guarded(classify):
    """Analysis only ever proves more structure: if sympy fails on an expression, or the analysis
    budget runs out, it is `general` (the reason says which, for the plan)."""
    def run(t: TExpr | None, symbols: dict) -> Structure:
        try:
            return classify(t, symbols)
        except BudgetSpent:
            return Structure("general", reason=budget_note())
        except Exception as exc:  # noqa: BLE001  (sympy raises many kinds; none may reach users)
            return Structure("general", reason=f"not analysed: sympy could not settle this expression "
                                               f"({type(exc).__name__}); nothing is claimed")
    run.__doc__ = classify.__doc__
    return run


def _encode_structure(s: Structure):
    try:
        return {"kind": s.kind, "lo": sympy_to_json(s.lo), "hi": sympy_to_json(s.hi), "reason": s.reason}
    except NotEncodable:
        return None


KINDS = ("full", "causal", "band", "toeplitz", "general")


def _decode_structure(value: dict, t: TExpr | None, symbols: dict) -> Structure:
    if value["kind"] not in KINDS or not isinstance(value["reason"], str):
        raise ValueError(f"not a stored structure: {value!r}")
    return Structure(value["kind"], sympy_from_json(value["lo"], symbols), sympy_from_json(value["hi"], symbols),
                     value["reason"])


def _memoized_structure(name: str):
    return memoized(name, lambda t, symbols: expr_digest(t), _encode_structure, _decode_structure)


@_memoized_structure("mask")
@_guarded
def classify_mask(mask: TExpr | None, symbols: dict[str, sympy.Symbol]) -> Structure:
    """Structure of a boolean mask(i, j, h)."""
    if mask is None:
        return FULL
    parts = conjuncts(mask)
    forms = [_unless_reads_j(c, symbols) for c in parts]  # each conjunct once; the mask is their And
    exact = [f for c, f in zip(parts, forms) if not any(e.type == FLOAT for e in c.walk())]
    if len(exact) < len(parts):  # float rounding differs per (i, j): no claim beyond exact conjuncts
        lo, hi = _conjunct_bounds(exact)
        return Structure("general", lo, hi, reason="mask uses float arithmetic; only its integer conjuncts bound it")
    in_d = None
    if all(f is not None for f in forms):
        expr = sympy.And(*forms)
        if expr is sympy.true:
            return Structure("full", reason="mask is always true")
        in_d = _in_d(expr)
    if in_d is None:
        lo, hi = _conjunct_bounds(forms)
        within = f"; keys outside {lo} <= i - j <= {hi} are masked" if (lo, hi) != (-sympy.oo, sympy.oo) else ""
        return Structure("general", lo, hi, reason="mask depends on more than i - j" + within)
    interval = _interval(in_d)
    if interval is None:
        lo, hi = _conjunct_bounds(forms)
        return Structure("toeplitz", lo, hi, reason=f"mask depends only on d = i - j: {in_d}")
    lo, hi = interval
    if lo == -sympy.oo and hi == sympy.oo:
        return Structure("full", reason=f"{in_d} holds for every d")
    if lo == 0 and hi == sympy.oo:
        return Structure("causal", 0, sympy.oo, reason=f"{in_d} <=> i - j >= 0")
    return Structure("band", lo, hi, reason=f"{in_d} <=> {lo} <= i - j <= {hi}")


def decay_form(m: TExpr | None, symbols: dict) -> tuple[TExpr, TExpr] | None:
    """M(i, j, h) = A(h) * gamma(h)^(i - j)? Then (A, gamma) as expressions, else None.

    Proof (is_decay): in d = i - j, j cancels and log f(d + 1) - log f(d) no longer depends on d; then
    A = M(0, 0) and gamma = M(1, 0) / M(0, 0). Float arithmetic is allowed: it only rounds the factors."""
    if m is None or not is_decay(m, symbols):
        return None
    at = lambda i, j: fold_constants(substitute(m, {"i": const(i), "j": const(j)}))
    amplitude, ratio = at(0, 0), fold_constants(TExpr("div", (at(1, 0), at(0, 0)), None, FLOAT))
    if amplitude.op == "const":
        return amplitude, ratio
    # where A = 0 every weight is 0 and gamma is irrelevant: 1 keeps the recurrence finite
    zero = TExpr("eq", (amplitude, const(0.0)), None, BOOL)
    return amplitude, TExpr("call", (zero, const(1.0), ratio), "where", FLOAT)


@memoized("decay", lambda m, symbols: expr_digest(m), lambda proven: proven,
          lambda value, m, symbols: stored_bool(value))
def is_decay(m: TExpr, symbols: dict) -> bool:
    """Whether M(i, j, h) = A(h) gamma(h)^(i - j) (see decay_form); no proof (or no budget left): False."""
    try:
        f = _in_d(to_sympy(m, symbols))
        if f is None or not f.has(DIFF):
            return False
        checkpoint()
        log_f = sympy.expand_log(sympy.log(f), force=True)  # log A + d log gamma, if it is a decay
        return not sympy.expand(log_f.subs(DIFF, DIFF + 1) - log_f).has(DIFF)
    except Exception:  # noqa: BLE001  (no proof, no claim)
        return False


def holds_on_causal_pairs(m: TExpr, want: Callable, signature, samples: int = 4, seed: int = 0) -> bool:
    """Cross-check M(i, j) == want(env, i, j) at the pairs j <= i of `samples` random environments
    (lengths, tables, inputs); want gives float64 values broadcastable to M's grid."""
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    for _ in range(samples):
        env = random_env(signature, rng, g)
        i, j = torch.arange(env.rsizes["Nq"]), torch.arange(env.rsizes["N"])
        got = values_on_grid(m, env, i, j).double()
        expected = want(env, i, j).expand_as(got)
        causal = (i.view(-1, 1) >= j.view(1, -1)).expand_as(got)
        if not torch.allclose(got[causal], expected[causal], rtol=1e-6, atol=1e-12):
            return False
    return True


def decay_holds(m: TExpr, amplitude: TExpr, gamma: TExpr, signature, samples: int = 4, seed: int = 0) -> bool:
    """Cross-check M(i, j) == A gamma^(i - j) at sampled pairs j <= i with random tables."""
    def want(env, i, j):
        zero = torch.zeros(1, dtype=torch.long)
        a, gam = (values_on_grid(t, env, zero, zero).double() for t in (amplitude, gamma))
        return a * torch.pow(gam, (i.view(-1, 1) - j.view(1, -1)).double())
    return holds_on_causal_pairs(m, want, signature, samples, seed)


@_memoized_structure("modulation")
@_guarded
def classify_modulation(m: TExpr | None, symbols: dict[str, sympy.Symbol]) -> Structure:
    """Structure of a numeric factor M(i, j, h) multiplying the kernel."""
    if m is None:
        return FULL
    expr = _unless_reads_j(m, symbols)
    if expr is None:
        return Structure("general", reason="modulation depends on more than i - j")
    if not (expr.has(I) or expr.has(J)):
        return Structure("full", reason=f"modulation {expr} does not depend on i, j")
    if _in_d(expr) is not None:
        return Structure("toeplitz", reason="modulation depends only on d = i - j")
    return Structure("general", reason="modulation depends on more than i - j")


def random_env(signature, rng: random.Random, g: torch.Generator) -> Env:
    """Random lengths, tables and inputs: claims must hold for every table, not just the init."""
    nq, nk, heads = rng.randint(1, 40), rng.randint(1, 40), 2
    sizes = dict(signature.sizes)
    rsizes = {"H": heads, "D": 4, "E": 4, "N": nk, "Nq": nq}
    shape_of = lambda dims: tuple(int(evaluate(d, Env(sizes=sizes, rsizes=rsizes))) for d in dims)
    params = {n: torch.randn(shape_of(p.shape), generator=g, dtype=torch.float64) for n, p in signature.params.items()}
    inputs = {}
    for name, info in signature.inputs.items():
        shape = (1, *shape_of(info.dims))
        inputs[name] = (torch.randint(0, 3, shape, generator=g) if info.dtype == "int" else
                        torch.rand(shape, generator=g) > 0.5 if info.dtype == "bool" else
                        torch.randn(shape, generator=g, dtype=torch.float64))
    return Env(sizes=sizes, rsizes=rsizes, params=params, inputs=inputs, h=torch.arange(heads).view(1, heads, 1, 1),
               b=torch.full((1, 1, 1, 1), rng.randint(0, 3)))  # the one batch row sampled may be any b


def values_on_grid(t: TExpr, env: Env, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """t on the grid i [Nq, 1] x j [1, N], as a [1, H, Nq, N] tensor."""
    env.i, env.j = i.view(1, 1, -1, 1), j.view(1, 1, 1, -1)
    return evaluate(t, env).expand(1, env.rsizes["H"], i.numel(), j.numel())


def _inside(s: Structure, env: Env) -> torch.Tensor:
    """[Nq, N] bool: whether i - j lies in the structure's band."""
    nq, nk = env.rsizes["Nq"], env.rsizes["N"]
    lo, hi = s.bounds_at({**env.sizes, **env.rsizes})
    d = torch.arange(nq).view(-1, 1) - torch.arange(nk).view(1, -1)
    inside = torch.ones_like(d, dtype=torch.bool)
    if lo is not None:
        inside &= d >= lo
    if hi is not None:
        inside &= d <= hi
    return inside


def structure_holds(t: TExpr, s: Structure, signature, is_mask: bool, samples: int = 4, seed: int = 0) -> bool:
    """Cross-check a proven structure on random grids, tables and inputs: a mismatch is a compiler bug.

    mask, band [lo, hi] (any kind):  mask(i, j) is false whenever i - j lies outside [lo, hi]
    mask, band / causal / full:      mask(i, j) is true exactly inside [lo, hi]
    toeplitz (mask or modulation):   value(i, j) == value(i + s, j + s)
    full modulation:                 value(i, j) == value(0, 0)
    """
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    for _ in range(samples):
        env = random_env(signature, rng, g)
        i, j = torch.arange(env.rsizes["Nq"]), torch.arange(env.rsizes["N"])
        got = values_on_grid(t, env, i, j)
        if is_mask:
            inside = _inside(s, env).expand_as(got)
            if (got.bool() & ~inside).any():
                return False
            if s.kind in ("full", "causal", "band") and not torch.equal(got.bool(), inside):
                return False
        if s.kind == "toeplitz":
            shift = rng.randint(1, 50)
            other = values_on_grid(t, env, i + shift, j + shift)
        elif not is_mask and s.kind == "full":
            zero = torch.zeros(1, dtype=torch.long)
            other = values_on_grid(t, env, zero, zero).expand_as(got)
        else:
            continue
        if not torch.allclose(got.double(), other.double(), equal_nan=True):
            return False
    return True


__all__ = ["Structure", "classify_mask", "classify_modulation", "nonnegative", "structure_holds", "to_sympy"]


def nonnegative(t: TExpr) -> bool:
    """Whether an integer expression is >= 0 at every index and size (sign knowledge for the emitters:
    where a dividend is, truncating division is floor division).

    i, j, h, sizes and lengths are >= 0; so are sums, products, floor quotients and remainders (by
    the divisor's sign), min and xor / or of such values, max and and of any, popcount, and the Gray
    code x ^ (x >> 1) of x >= 0. Nothing else is claimed (abs(-2**31) wraps to a negative int32)."""
    return fold(t, _nonnegative_node)


def _nonnegative_node(t: TExpr, args: list[bool]) -> bool:
    if t.op == "const":
        return t.type != BOOL and t.value >= 0
    if t.op in ("var", "size", "rsize"):
        return True
    if t.op in ("add", "mul", "floordiv", "mod", "xor", "bitor") or (t.op == "call" and t.value in ("min", "gray")):
        return all(args)
    if t.op == "bitand" or (t.op == "call" and t.value == "max"):
        return any(args)
    return t.op == "call" and t.value == "popcount"
