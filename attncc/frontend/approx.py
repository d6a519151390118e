"""Declared approximations of softmax attention: `normalize softmax approx NAME(...)`.

The spec states the exact target (softmax of its logits, under its mask) and the approximation
that computes it. A compiled module's `reference` is the dense float64 evaluation of the
approximation's own formulas (same random draw, same block selection): every backend must equal it
exactly. Its `target` is the exact softmax: the approximation's error is measured against it.

    favor(features, seed, orthogonal, redraw)  exp(q.k s) ~ phi(q).phi(k) with FAVOR+ features: the pass
        kernelize_favor makes it kernelized attention, W = mask * phi(q).phi(k) * exp(bias), normalized
        by rows, so every kernelized lowering (linear, prefix sums, FFT for a Toeplitz bias, ...) applies
        (lang/favor.py has the algebra; favor_kernelized in check.py is the spec the oracle evaluates).
    mra(block, blocks_per_row, mode, first, diagonal)  MRA-2 (Zeng et al. 2022): exact scores on the
        top-k blocks of the low-resolution logits (plus priors), block means elsewhere (mode = full)
        or nothing (mode = sparse).
    lara(landmarks, seed, alpha, redraw)  LARA (Zheng et al. 2022): self-normalized multiple importance
        sampling with one proposal per pooled landmark; O(N C d).
    ra(samples, seed, redraw)  RA (Zheng et al. 2022): unbiased randomized attention, quadratic; per
        query, samples from the softmax-weighted Gaussian mixture.

ApproxChecks (a mixin of the checker in attncc/frontend/check.py) checks `approx METHOD(...)`.
"""
from __future__ import annotations

from dataclasses import replace

from . import ast
from ..lang.favor import is_plain_dot_scale, split_logits
from ..lang.features import RANDOM_KWARGS
from ..lang.normalizers import NORMALIZERS
from ..lang.source import did_you_mean
from .records import ApproxInfo

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


class ApproxChecks:
    """Uses the checker's bag, spec, defs, normalize and _const_number."""

    def _approximated(self, spec):
        """The CheckedSpec `spec` computed by its declared approximation; `target` keeps the exact one."""
        a = self.normalize.approx
        if a.method not in APPROXIMATIONS:
            self.bag.error(f"unknown approximation `{a.method}`", a.method_span,
                           did_you_mean(a.method, APPROXIMATIONS) or f"use one of {', '.join(APPROXIMATIONS)}")
        elif not NORMALIZERS[spec.normalize].online_softmax:
            self.bag.error(f"`approx {a.method}` approximates softmax attention, but this spec normalizes "
                           f"with `{spec.normalize}`", a.method_span, "write `normalize softmax approx ...`")
        else:
            info = self._approx_options(a)
            if info is not None and self._approx_applies(spec, info, a):
                self.bag.raise_if_any()
                return replace(spec, approx=info, target=spec)
        self.bag.raise_if_any()
        return spec

    def _approx_options(self, a: ast.Approx) -> ApproxInfo | None:
        allowed = APPROXIMATIONS[a.method]
        if a.args:
            self.bag.error(f"approx {a.method} takes keyword arguments only", a.args[0].span,
                           f"write {', '.join(f'{k}=...' for k in allowed)}")
            return None
        out = dict(allowed)
        for kw in a.kwargs:
            if kw.name not in allowed:
                self.bag.error(f"approx {a.method} has no argument `{kw.name}`", kw.span,
                               did_you_mean(kw.name, allowed) or f"its arguments: {', '.join(allowed)}")
                return None
            choices = CHOICES.get((a.method, kw.name))
            if choices:
                if not isinstance(kw.value, ast.Name) or kw.value.id not in choices:
                    self.bag.error(f"`{kw.name}` of approx {a.method} is one of {', '.join(choices)}", kw.value.span,
                                   f"write `{kw.name} = {choices[0]}`")
                    return None
                out[kw.name] = kw.value.id
                continue
            value = self._const_number(kw.value, f"argument `{kw.name}`")
            if value is None:
                return None
            lowest = 1 if kw.name in POSITIVE else 0 if kw.name in COUNTS | FLAGS else None
            if lowest is not None and (not isinstance(value, int) or value < lowest
                                       or (kw.name in FLAGS and value > 1) or value >= 2**31):
                what = "0 or 1" if kw.name in FLAGS else f"an integer >= {lowest}"
                self.bag.error(f"`{kw.name}` of approx {a.method} must be {what}, got {value}", kw.value.span)
                return None
            out[kw.name] = value
        return ApproxInfo(a.method, tuple(out.items()))

    def _approx_applies(self, spec, info: ApproxInfo, a: ast.Approx) -> bool:
        """favor: logits dot(q[i], k[j]) * scale + bias(i, j), any mask; mra, lara, ra: the plain logits."""
        where = self.defs["score"].body.span if "score" in self.defs else a.method_span
        if spec.features:
            self.bag.error(f"approx {info.method} approximates exp(q.k * scale): it takes no feature map",
                           self.spec.name_span, "drop the `feature` declaration")
            return False
        if info.method in PLAIN_ONLY:
            for kind in ("mask", "bias"):
                if kind in self.defs:
                    self.bag.error(f"approx {info.method} approximates unmasked softmax without a bias",
                                   self.defs[kind].kind_span, f"drop `{kind}`, or use `approx favor(...)`, "
                                   "which keeps masks and biases")
                    return False
            if not is_plain_dot_scale(spec.logits):
                self.bag.error(f"approx {info.method} needs the score `dot(q[i], k[j]) * scale`", where,
                               "it approximates softmax(Q K^T / sqrt(D)) and nothing else")
                return False
            return True
        if split_logits(spec.logits) is False:
            self.bag.error("approx favor needs the score `dot(q[i], k[j]) * scale` plus terms without `dot`",
                           where, "FAVOR+ estimates exp(q.k / sqrt(D)); other terms become a modulation exp(bias)")
            return False
        return True
