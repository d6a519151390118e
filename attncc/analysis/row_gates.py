"""Per-dimension gates inside `dot` (GLA, Yang et al. 2023):

    dot(X(i) o exp(G(i)), Y(j) o exp(-G(j))) = sum_d X_d(i) Y_d(j) exp(G_d(i) - G_d(j))

with G(i) a row of the query index (a cumulative log-gate per key dimension, read from an input) and
its key-side term the same row at j. Found in the factors of each side (the exp factors' arguments
summed into the side's exponent, the rest its row), proven with sympy (the key exponent is minus the
query exponent with i -> j; a row input is an uninterpreted function of its indices), cross-checked
by evaluating both sides on random rows. Found on the spec's own dot, before prepare_rows forms
X o exp(G) as a row: exp(G) alone underflows and exp(-G) overflows once the gates reach a few hundred."""
from __future__ import annotations

import random
from dataclasses import dataclass

import sympy
import torch

from ..lang.evaluate import evaluate
from ..lang.expr import FLOAT, VEC, TExpr, const, postorder, substitute
from ..lang.features import apply_feature_map
from ..lang.operators import fmt, operator_of
from ..lang.rows import input_rows, row_input_layout, side
from ..lang.standard import KEY_INDEX
from .kernel import product_factors
from .structure import I, J, random_env, to_sympy


@dataclass(frozen=True)
class RowGate:
    """dot(query o exp(gate), key o exp(-gate with i -> j)): the sides without their gates, and G(i)."""
    query: TExpr
    key: TExpr
    gate: TExpr

    def describe(self) -> str:
        return f"dot({fmt(self.query)}, {fmt(self.key)}) gated by exp(G(i) - G(j)) per dimension, G(i) = {fmt(self.gate)}"


def _combine(op: str, a: TExpr | None, b: TExpr) -> TExpr:
    return b if a is None else TExpr(op, (a, b), None, VEC if VEC in (a.type, b.type) else FLOAT)


def _split_side(t: TExpr) -> tuple[TExpr | None, TExpr | None]:
    """A side = rest o exp(e_1) o exp(e_2) ... -> (rest, e_1 + e_2 + ...); rest None if only exps."""
    rest, exponent = None, None
    for factor in product_factors(t):
        if factor.op == "call" and factor.value == "exp":
            exponent = _combine("add", exponent, factor.args[0])
        else:
            rest = _combine("mul", rest, factor)
    return rest, exponent


def _row_sympy(t: TExpr, symbols: dict):
    """A row expression of sums, differences, negations and numeric multiples of row inputs and
    numbers, as sympy: `X[h, i]` is the function X(h, i); None for any other row form."""
    forms = {}
    for e in postorder(t, descend=lambda x: x.type == VEC):
        if e.type != VEC:
            forms[e] = to_sympy(e, symbols)
            continue
        a = [forms[x] for x in e.args]
        if any(x is None for x in a):
            return None
        if e.op == "rowin":
            forms[e] = sympy.Function(f"row_{e.value}")(*a)
        elif e.op == "neg":
            forms[e] = -a[0]
        elif e.op in ("add", "sub"):
            forms[e] = a[0] + a[1] if e.op == "add" else a[0] - a[1]
        elif e.op == "mul" and (e.args[0].type != VEC or e.args[1].type != VEC):  # a number times a row
            forms[e] = a[0] * a[1]
        else:
            return None
    return forms[t]


def row_gate_form(dot: TExpr, symbols: dict) -> RowGate | None:
    """dot(X(i) o exp(G(i)), Y(j) o exp(-G(j))) with G reading a row (not only numbers)? Then RowGate."""
    if dot.op != "dot" or any(a.op == "feature" for a in dot.args):
        return None
    (query, gi), (key, gj) = (_split_side(a) for a in dot.args)
    if None in (query, key, gi, gj) or VEC not in (query.type, key.type) or \
            not any(e.type == VEC for e in gi.walk()):
        return None
    if not (side(query) | side(gi) <= {"i"} and side(key) | side(gj) <= {"j"}):
        return None
    try:
        forms = _row_sympy(gi, symbols), _row_sympy(gj, symbols)
        if None in forms or forms[0].has(J) or sympy.expand(forms[0].subs(I, J) + forms[1]) != 0:
            return None
    except Exception:  # noqa: BLE001  (no sympy form: no proof, no claim)
        return None
    return RowGate(query, key, gi)


def _rows(t: TExpr, env, q, k, tokens: int, input_dims: dict) -> torch.Tensor:
    """A row expression of one side on its first `tokens` tokens, [1, H, tokens, W] float64 (formed:
    exp taken where written; the sampled inputs are moderate)."""
    done = {}
    for e in postorder(t, descend=lambda x: x.type == VEC):
        args = [done[a] for a in e.args]
        if e.type != VEC:
            done[e] = evaluate(e, env).double()
        elif e.op in ("qrow", "krow"):
            done[e] = q if e.op == "qrow" else k
        elif e.op == "rowin":
            per_head, _ = row_input_layout(input_dims[e.value])
            x = input_rows(env.inputs[e.value], len(input_dims[e.value]), per_head, tokens, e.value)
            done[e] = x.double()
        elif e.op == "feature":
            done[e] = apply_feature_map(e.value, args[0])
        else:
            done[e] = operator_of(e).evaluate(args, torch.float64)
    return done[t]


def row_gate_holds(dot: TExpr, gate: RowGate, signature, samples: int = 4, seed: int = 0) -> bool | None:
    """Cross-check sum_d A_d(i) B_d(j) == sum_d X_d(i) Y_d(j) exp(G_d(i) - G_d(j)) at every pair of
    random environments (rows, inputs, tables), A, B the dot's written sides; None when the sampled
    environment cannot hold the rows (row inputs of different fixed widths: no check, so no claim)."""
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    dims = {name: info.dims for name, info in signature.inputs.items()}
    for _ in range(samples):
        env = random_env(signature, rng, g)
        nq = min(env.rsizes["Nq"], env.rsizes["N"])
        env.rsizes.update(Nq=nq, N=nq)
        width = _width(dot, env)
        if width is None:
            return None
        q, k = (torch.randn(1, env.rsizes["H"], nq, width, generator=g, dtype=torch.float64) for _ in range(2))
        env.i = env.j = torch.arange(nq).view(1, 1, -1, 1)  # each side on its own tokens 0 .. n-1
        a, b, x, y, gi, gj = (_rows(t, env, q, k, nq, dims).expand(1, env.rsizes["H"], nq, width)
                              for t in (*dot.args, gate.query, gate.key, gate.gate,
                                        substitute(gate.gate, {"i": KEY_INDEX})))
        want = (x[..., :, None, :] * y[..., None, :, :] * torch.exp(gi[..., :, None, :] - gj[..., None, :, :])).sum(-1)
        if not torch.allclose(a @ b.transpose(-1, -2), want, rtol=1e-6, atol=1e-9):
            return False
    return True


def _width(dot: TExpr, env) -> int | None:
    """The width of the dot's rows in this environment: a row input's last dimension (D = 4 otherwise)."""
    widths = {env.inputs[e.value].shape[-1] for e in dot.walk() if e.op == "rowin"}
    return widths.pop() if len(widths) == 1 else None if widths else env.rsizes["D"]


def row_gate_terms(gate: TExpr) -> tuple[list[tuple[TExpr, TExpr]], TExpr | None] | None:
    """G = sum_t c_t X_t[h?, i] + g(i): ([(row input lookup X_t, number c_t)], g or None), through
    sums, differences, negations and multiples by numbers free of i and j; None for other row forms
    (what the Triton backward scatters its dG onto: c_t dG to X_t's rows, sum_d dG_d through g)."""
    rows, scalar, stack = [], None, [(gate, const(1.0))]
    while stack:
        e, c = stack.pop()
        if e.type != VEC:
            scalar = _combine("add", scalar, e if _is_one(c) else TExpr("mul", (c, e), None, FLOAT))
        elif e.op == "rowin":
            rows.append((e, c))
        elif e.op in ("add", "sub"):
            minus = TExpr("neg", (c,), None, FLOAT)
            stack += [(e.args[0], c), (e.args[1], c if e.op == "add" else minus)]
        elif e.op == "neg":
            stack.append((e.args[0], TExpr("neg", (c,), None, FLOAT)))
        elif e.op == "mul" and e.args[0].type != VEC and not side(e.args[0]):
            stack.append((e.args[1], TExpr("mul", (c, e.args[0]), None, FLOAT)))
        elif e.op == "mul" and e.args[1].type != VEC and not side(e.args[1]):
            stack.append((e.args[0], TExpr("mul", (c, e.args[1]), None, FLOAT)))
        else:
            return None
    return rows, scalar


def _is_one(c: TExpr) -> bool:
    return c.op == "const" and c.value == 1
