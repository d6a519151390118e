"""Data-dependent (scalar) gates: M(i, j, h) = A(h) * exp(G(i) - G(j)), G one expression of a token
index (a cumulative log-gate read from an input, as simple GLA, Mamba-2's SSD and gated RetNet write
it). Found structurally, proven with sympy (G(j) is G(i) with i -> j) and cross-checked by sampling."""
from __future__ import annotations


import sympy
import torch

from ..lang.expr import FLOAT, TExpr, const, substitute
from ..lang.evaluate import fold_constants
from .kernel import product_factors
from ..lang.standard import KEY_INDEX
from .sampling import holds_on_causal_pairs, values_on_grid
from .structure import I, J, to_sympy


def _reads(t: TExpr, var: str) -> bool:
    return t.uses("var", var)


def _index_free(t: TExpr) -> bool:
    return not (_reads(t, "i") or _reads(t, "j"))


def _mul(a: TExpr | None, b: TExpr) -> TExpr:
    return b if a is None else TExpr("mul", (a, b), None, FLOAT)


def _add(a: TExpr | None, b: TExpr) -> TExpr:
    return b if a is None else TExpr("add", (a, b), None, FLOAT)


def _signed_terms(t: TExpr) -> list[tuple[TExpr, bool]]:
    """x = sum of +-terms: (term, negated) through +, -, unary minus and index-free coefficients
    (c * (a - b) -> c * a, -(c * b)); without recursion."""
    out, stack = [], [(t, False, None)]
    while stack:
        e, neg, coeff = stack.pop()
        if e.op in ("add", "sub"):
            stack += [(e.args[1], neg != (e.op == "sub"), coeff), (e.args[0], neg, coeff)]
        elif e.op == "neg":
            stack.append((e.args[0], not neg, coeff))
        elif e.op == "mul" and _index_free(e.args[0]) != _index_free(e.args[1]):
            c, rest = e.args if _index_free(e.args[0]) else e.args[::-1]
            stack.append((rest, neg, _mul(coeff, c)))
        else:
            out.append((_mul(coeff, e) if coeff is not None else e, neg))
    return out


def _split_gate(m: TExpr) -> tuple[TExpr, TExpr, TExpr] | None:
    """M -> (A, G_i, G_j) with M = A exp(G_i - G_j), G_i reading only i, G_j only j; None if not so."""
    amplitude, gi, gj = None, None, None
    for factor in product_factors(m):
        if _index_free(factor):
            amplitude = _mul(amplitude, factor)
            continue
        if not (factor.op == "call" and factor.value == "exp"):
            return None
        for term, neg in _signed_terms(factor.args[0]):
            signed = TExpr("neg", (term,), None, FLOAT) if neg else term
            if _index_free(term):
                amplitude = _mul(amplitude, TExpr("call", (signed,), "exp", FLOAT))
            elif not _reads(term, "j"):
                gi = _add(gi, signed)
            elif not _reads(term, "i"):
                gj = _add(gj, term if neg else TExpr("neg", (term,), None, FLOAT))
            else:
                return None
    if gi is None or gj is None:
        return None
    return (amplitude if amplitude is not None else const(1.0)), gi, gj


def gate_form(m: TExpr | None, symbols: dict) -> tuple[TExpr, TExpr] | None:
    """M(i, j, h) = A(h) * exp(G(i) - G(j))? Then (A, G) with G an expression of i, else None.

    Found in the factors of M: index-free factors go to A; each exp factor's argument is split into
    signed terms, those reading only i summed into G_i, only j into G_j, neither into A. Proof: G_j
    equals G_i with i -> j (sympy, after expansion); inputs and tables are uninterpreted functions."""
    if m is None or (split := _split_gate(m)) is None:
        return None
    amplitude, gi, gj = split
    try:
        same = sympy.expand(to_sympy(gi, symbols).subs(I, J) - to_sympy(gj, symbols)) == 0
    except Exception:  # noqa: BLE001  (no sympy form: no proof, no claim)
        return None
    return (fold_constants(amplitude), gi) if same else None


def gate_holds(m: TExpr, amplitude: TExpr, gate: TExpr, signature, samples: int = 4, seed: int = 0) -> bool:
    """Cross-check M(i, j) == A exp(G(i) - G(j)) at sampled pairs j <= i with random tables and inputs."""
    def want(env, i, j):
        zero = torch.zeros(1, dtype=torch.long)
        a = values_on_grid(amplitude, env, zero, zero).double()
        gq = values_on_grid(gate, env, i, zero).double()
        gk = values_on_grid(substitute(gate, {"i": KEY_INDEX}), env, zero, j).double()
        return a * torch.exp(gq - gk)
    return holds_on_causal_pairs(m, want, signature, samples, seed)
