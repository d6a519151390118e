"""Declared approximations of softmax attention: `normalize softmax approx NAME(...)`.

The spec states the exact target (softmax of its logits, under its mask) and the approximation
that computes it. A compiled module's `reference` is the dense float64 evaluation of the
approximation's own formulas (same random draw, same block selection): every backend must equal it
exactly. Its `target` is the exact softmax: the approximation's error is measured against it.

    favor(features, seed, orthogonal, redraw)  exp(q.k s) ~ phi(q).phi(k) with FAVOR+ features: the spec
        becomes kernelized attention, W = mask * phi(q).phi(k) * exp(bias), normalized by rows, so
        every kernelized lowering (linear, prefix sums, FFT for a Toeplitz bias, ...) applies.
    mra(block, blocks_per_row, mode, first, diagonal)  MRA-2 (Zeng et al. 2022): exact scores on the
        top-k blocks of the low-resolution logits (plus priors), block means elsewhere (mode = full)
        or nothing (mode = sparse).
    lara(landmarks, seed, alpha, redraw)  LARA (Zheng et al. 2022): self-normalized multiple importance
        sampling with one proposal per pooled landmark; O(N C d).
    ra(samples, seed, redraw)  RA (Zheng et al. 2022): unbiased randomized attention, quadratic; per
        query, samples from the softmax-weighted Gaussian mixture.
"""
from __future__ import annotations

from ..lang.expr import FLOAT, VEC, TExpr
from ..lang.features import RANDOM_KWARGS

# method -> its keyword arguments and defaults; a string default means a choice among names
APPROXIMATIONS = {
    "favor": dict(RANDOM_KWARGS),
    "mra": {"block": 32, "blocks_per_row": 8, "mode": "full", "first": 1, "diagonal": 5},
    "lara": {"landmarks": 49, "seed": 0, "alpha": 1.0, "redraw": 1},
    "ra": {"samples": 16, "seed": 0, "redraw": 1},
}
CHOICES = {("mra", "mode"): ("full", "sparse")}
POSITIVE = {"features", "block", "blocks_per_row", "landmarks", "samples"}  # integers >= 1
COUNTS = {"first", "diagonal", "seed"}  # integers >= 0
FLAGS = {"orthogonal", "redraw"}  # 0 or 1
PLAIN_ONLY = ("mra", "lara", "ra")  # need logits dot(q[i], k[j]) * scale with no mask or bias
RANDOM = ("favor", "lara", "ra")  # draw random numbers: seeded, redrawn per training call if redraw=1
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
