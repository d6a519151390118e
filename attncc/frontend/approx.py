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
"""
from __future__ import annotations

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
