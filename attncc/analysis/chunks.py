"""Mixed chunk attention (FLASH, Hua et al. 2022): found by analysis of a kernelized weight.

A weight that is a sum of one chunk-local term and kernelized cross-chunk terms,

    W[i,j] = mask(i,j) * ( where(i // c == j // c and P0(i,j), X(i,j), 0)
                           + sum_t where(P_t(i,j), dot(phi_t(q_i), psi_t(k_j)) * A_t(h), 0) )

with X any weight of (q_i, k_j, i, j, h) (FLASH: relu(q.k / c + b[i - j])^2) and, for each linear
term, P_t and the mask together one of

    all       every key                       (FLASH, bidirectional: M = 1)
    earlier   j // c < i // c                 (FLASH, causal: M block-strictly-lower)
    upto      j // c <= i // c
    causal    j <= i                          (token prefix sums)

is computed in O(N c (d + e) + N m e): the local term by dense c x c blocks on the diagonal, each
linear term from the chunk states S_g = sum_{j in chunk g} psi(k_j) v_j^T, z_g = sum psi(k_j),
summed over all chunks or prefix-summed across them. A form is recognised syntactically (sympy
settles each conjunct), then the whole decomposition is cross-checked against the weight on random
grids, tables and dot values.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import sympy
import torch

from ..lang.evaluate import evaluate
from ..lang.expr import BOOL, FLOAT, INT, TExpr, chain, conjuncts, const
from ..lang.operators import fmt
from ..lang.standard import KEY_INDEX, QUERY_INDEX
from .kernel import split_kernel
from .session import BudgetSpent, checkpoint, expr_digest, memoized
from .sampling import random_env
from .structure import I, J, classify_mask, to_sympy

ACROSS = ("all", "earlier", "upto", "causal")


@dataclass(frozen=True)
class LinearTerm:
    dot: TExpr  # dot(phi(q[i]), psi(k[j]))
    amplitude: TExpr | None  # A(h): no i, no j
    across: str  # one of ACROSS

    def describe(self) -> str:
        amp = f" * {fmt(self.amplitude)}" if self.amplitude is not None else ""
        return f"{fmt(self.dot)}{amp} over {self.across} chunks"


@dataclass(frozen=True)
class MixedForm:
    chunk: TExpr  # c: an int constant or a size
    local: TExpr  # X(i, j): the weight inside a chunk
    local_mask: TExpr | None  # P0 and the spec's mask, applied inside chunks
    linear: tuple[LinearTerm, ...]

    def describe(self) -> str:
        return (f"chunks of {fmt(self.chunk)}: local {fmt(self.local)}; linear "
                + "; ".join(t.describe() for t in self.linear))

    def weight(self) -> TExpr:
        """The weight the form computes, the mask folded in:
        where(i // c == j // c and P0, X, 0) + sum_t where(P_t, dot_t * A_t, 0)."""
        block = lambda t: TExpr("floordiv", (t, self.chunk), None, INT)
        inside = TExpr("eq", (block(QUERY_INDEX), block(KEY_INDEX)), None, BOOL)
        if self.local_mask is not None:
            inside = TExpr("and_", (inside, self.local_mask), None, BOOL)
        out = _where(inside, self.local)
        for t in self.linear:
            value = t.dot if t.amplitude is None else TExpr("mul", (t.dot, t.amplitude), None, FLOAT)
            keys = across_condition(t.across, self.chunk)
            out = TExpr("add", (out, value if keys is None else _where(keys, value)), None, FLOAT)
        return out


def across_condition(across: str, chunk: TExpr) -> TExpr | None:
    """The keys a linear term sums over, as a condition on (i, j) (None: every key)."""
    if across == "all":
        return None
    if across == "causal":
        return TExpr("le", (KEY_INDEX, QUERY_INDEX), None, BOOL)
    block = lambda t: TExpr("floordiv", (t, chunk), None, INT)
    return TExpr("lt" if across == "earlier" else "le", (block(KEY_INDEX), block(QUERY_INDEX)), None, BOOL)


def _where(condition: TExpr, value: TExpr) -> TExpr:
    return TExpr("call", (condition, value, const(0.0)), "where", FLOAT)


def _and(parts: list[TExpr]) -> TExpr | None:
    out = None
    for p in parts:
        out = p if out is None else TExpr("and_", (out, p), None, BOOL)
    return out


def _guard(t: TExpr) -> tuple[list[TExpr], TExpr]:
    """where(P, Y, 0) -> (conjuncts of P, Y); any other term -> ([], term)."""
    if t.op == "call" and t.value == "where" and t.args[2].op == "const" and t.args[2].value == 0:
        return conjuncts(t.args[0]), t.args[1]
    return [], t


def _chunk_of(t: TExpr, var: str) -> TExpr | None:
    """c if t is `var // c` with c a positive int constant or a size."""
    if t.op == "floordiv" and t.args[0].op == "var" and t.args[0].value == var:
        c = t.args[1]
        if c.op == "size" or (c.op == "const" and c.type == "int" and c.value > 0):
            return c
    return None


def _same_chunk(t: TExpr) -> TExpr | None:
    """c if t is `i // c == j // c` (either order)."""
    if t.op != "eq":
        return None
    a, b = t.args
    for x, y in ((a, b), (b, a)):
        c = _chunk_of(x, "i")
        if c is not None and c == _chunk_of(y, "j"):
            return c
    return None


@memoized("block relation", lambda t, chunk, symbols: f"{expr_digest(t)}/{expr_digest(chunk)}",
          lambda relation: {"relation": relation}, lambda value, t, chunk, symbols: _stored_relation(value))
def _block_relation(t: TExpr, chunk: TExpr, symbols: dict) -> str | None:
    """`earlier` (J < I), `upto` (J <= I) or `true` for a conjunct that reads i, j only as
    I = i // c, J = j // c; decided on its truth table over I, J in 0..5 once sympy has shown that
    it depends on nothing else. None: not such a conjunct, or no budget left to tell."""
    try:
        expr = to_sympy(t, symbols)
        c = to_sympy(chunk, symbols)
        X, Y = sympy.symbols("X Y", integer=True)
        expr = expr.subs({sympy.floor(I / c): X, sympy.floor(J / c): Y})
        if expr.has(I) or expr.has(J) or expr.free_symbols - {X, Y}:
            return None
        checkpoint()
        table = tuple(bool(expr.subs({X: x, Y: y})) for x, y in itertools.product(range(6), repeat=2))
    except (ValueError, TypeError, BudgetSpent):  # no sympy form, a truth value sympy cannot decide, no budget
        return None
    forms = {"earlier": lambda x, y: y < x, "upto": lambda x, y: y <= x, "true": lambda x, y: True}
    for name, f in forms.items():
        if table == tuple(f(x, y) for x, y in itertools.product(range(6), repeat=2)):
            return name
    return None


def _stored_relation(value: dict) -> str | None:
    if value["relation"] not in (None, "earlier", "upto", "true"):
        raise ValueError(f"not a stored block relation: {value!r}")
    return value["relation"]


def _across(parts: list[TExpr], chunk: TExpr, symbols: dict) -> str | None:
    """The key set of a linear term from the conjuncts of its guard and of the mask.

    j // c < i // c implies j < i, and j <= i implies j // c <= i // c, so:
    {earlier, ...} -> earlier; {upto, causal} -> causal; {upto} -> upto; {causal} -> causal; {} -> all."""
    kinds = set()
    for p in parts:
        rel = _block_relation(p, chunk, symbols)
        if rel is None:
            s = classify_mask(p, symbols)
            rel = "causal" if s.kind == "causal" else "true" if s.kind == "full" else None
        if rel is None:
            return None
        kinds.add(rel)
    kinds.discard("true")
    if "earlier" in kinds:
        return "earlier"
    return "causal" if "causal" in kinds else "upto" if "upto" in kinds else "all"


def find_mixed(weight: TExpr, mask: TExpr | None, symbols: dict) -> MixedForm | None:
    """The mixed chunk form of a kernelized weight (see the module docstring), or None."""
    mask_parts = conjuncts(mask) if mask is not None else []
    local, linear = [], []
    for term in chain(weight, "add"):
        parts, body = _guard(term)
        chunks = [c for c in map(_same_chunk, parts) if c is not None]
        if chunks:
            rest = [p for p in parts if _same_chunk(p) is None]
            local.append((chunks[0], _and(rest + mask_parts), body))
            continue
        split = split_kernel(body)
        if split is None or (split[1] is not None and (split[1].uses("var", "i") or split[1].uses("var", "j"))):
            return None
        linear.append((parts, split))
    if len(local) != 1 or not linear:
        return None
    chunk, local_mask, body = local[0]
    terms = []
    for parts, (dot, amplitude) in linear:
        across = _across(parts + mask_parts, chunk, symbols)
        if across is None:
            return None
        terms.append(LinearTerm(dot, amplitude, across))
    return MixedForm(chunk, body, local_mask, tuple(terms))


def _random_dots(shape: tuple, g: torch.Generator):
    """env.dot for a cross-check: each distinct dot term gets its own random values, drawn once."""
    dots: dict[TExpr, torch.Tensor] = {}

    def dot(d: TExpr) -> torch.Tensor:
        if d not in dots:
            dots[d] = torch.randn(*shape, generator=g, dtype=torch.float64)
        return dots[d]
    return dot


def mixed_holds(weight: TExpr, mask: TExpr | None, form: MixedForm, signature, samples: int = 4, seed: int = 0) -> bool:
    """Cross-check: where(mask, weight, 0) equals the reassembled form on random grids, tables and
    dot values (each distinct dot gets its own random [1, H, Nq, N] values)."""
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    for _ in range(samples):
        env = random_env(signature, rng, g)
        if form.chunk.op == "size":  # chunks much shorter than the sampled lengths: several per row
            env.sizes = {**env.sizes, form.chunk.value: rng.randint(1, 6)}
        nq, nk, heads = env.rsizes["Nq"], env.rsizes["N"], env.rsizes["H"]
        env.i, env.j = torch.arange(nq).view(1, 1, -1, 1).int(), torch.arange(nk).view(1, 1, 1, -1).int()
        env.dot = _random_dots((1, heads, nq, nk), g)
        shape = (1, heads, nq, nk)
        zero = torch.zeros((), dtype=torch.float64)
        m = evaluate(mask, env).expand(shape) if mask is not None else torch.ones(shape, dtype=torch.bool)
        want = torch.where(m, evaluate(weight, env).double().expand(shape), zero)
        got = evaluate(form.weight(), env).double().expand(shape)
        if not torch.allclose(got, want, rtol=1e-9, atol=1e-9, equal_nan=True):
            return False
    return True
