"""FAVOR+ as algebra on expressions: the kernelized weight that replaces softmax's exp(logits).

favor(x) are positive random features with E[favor(q) . favor(k)] = exp(q . k * scale) (Choromanski
et al., 2021), so softmax logits dot(q[i], k[j]) * scale + b give the weight
dot(favor(q[i]), favor(k[j])) * exp(b). The checker accepts `approx favor` only for such logits;
the pass kernelize_favor rewrites the IR with favor_weight, and the oracle the checked spec.
"""
from __future__ import annotations

from .expr import FLOAT, VEC, TExpr

FAVOR = "favor"  # the name of the random feature map a favor approximation declares


def is_plain_dot_scale(t: TExpr) -> bool:
    """t is dot(q[i], k[j]) * scale (either order)."""
    if t.op != "mul":
        return False
    a, b = t.args
    if b.op == "dot":
        a, b = b, a
    return (a.op == "dot" and b.op == "scale" and [x.op for x in a.args] == ["qrow", "krow"])


def additive_terms(t: TExpr, sign: int = 1) -> list[tuple[int, TExpr]]:
    """t as a signed sum of terms: a - (b + c) -> [(+1, a), (-1, b), (-1, c)]."""
    terms, stack = [], [(sign, t)]
    while stack:  # a sum may be as long as the spec: no recursion
        s, e = stack.pop()
        if e.op in ("add", "sub"):
            stack += [(-s if e.op == "sub" else s, e.args[1]), (s, e.args[0])]
        elif e.op == "neg":
            stack.append((-s, e.args[0]))
        else:
            terms.append((s, e))
    return terms


def split_logits(logits: TExpr) -> TExpr | None | bool:
    """logits = dot(q[i], k[j]) * scale + bias: the bias (None when there is none), or False when
    the logits are not of that form (the dot term missing, repeated, or scaled otherwise)."""
    terms = additive_terms(logits)
    dots = [(s, t) for s, t in terms if t.uses("dot")]
    if len(dots) != 1 or dots[0][0] != 1 or not is_plain_dot_scale(dots[0][1]):
        return False
    bias = None
    for sign, t in terms:
        if t is dots[0][1]:
            continue
        if bias is None:
            bias = t if sign > 0 else TExpr("neg", (t,), None, FLOAT)
        else:
            bias = TExpr("add" if sign > 0 else "sub", (bias, t), None, FLOAT)
    return bias


def favor_weight(bias: TExpr | None) -> TExpr:
    """dot(favor(q[i]), favor(k[j])) * exp(bias): the kernelized weight that replaces exp(logits)."""
    row = lambda op: TExpr("feature", (TExpr(op, (), op[0], VEC),), FAVOR, VEC)
    weight = TExpr("dot", (row("qrow"), row("krow")), None, FLOAT)
    if bias is None:
        return weight
    return TExpr("mul", (weight, TExpr("call", (bias,), "exp", FLOAT)), None, FLOAT)
