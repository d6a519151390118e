"""The normalizers of `normalize ...`: what each one asks of a skeleton.

  softmax  logits through an online max and sum (exp), out = softmax(s) v; the Triton forward
           saves the row logsumexp for its backward. `softmax(sink = e)`: e, an expression of the
           query row (b, h, i), is a logit that joins each row's denominator and takes no value:
           out_i = sum_j e^s_ij v_j / (sum_j e^s_ij + e^sink_i) (GPT-OSS, StreamingLLM)
  rows     fixed weights W summed per row, out = W v / (rowsum W + eps); saves the denominator
  none     fixed weights, out = W v; no row statistic
  ista     no fixed W: the unrolled sparse-reconstruction solver (lowering `ista` only)

A normalizer with `of_score` is written like softmax (`score`, `bias`) and means the fixed weights
W = of_score(score + bias), e.g. sigmoid attention; every skeleton then treats it as weights.
`register_normalizer` adds one for the checker, the oracle, the skeletons and the kernels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .expr import TExpr
from .registry import Registry


@dataclass(frozen=True)
class Normalizer:
    name: str
    online_softmax: bool  # logits through the online-softmax skeleton (else running sums of weights)
    divides_by_row_sum: bool  # out = sum W v / (sum W + eps): eps is read
    row_statistic: bool  # the tiled Triton forward saves a per-row statistic for the backward
    fixed_weights: bool  # W[i, j] is an expression of the pair (a tiled or kernelized skeleton applies)
    score_name: str  # what the pair expression is called in generated holes: logits or weights
    options: dict = field(default_factory=dict)  # keyword options of `normalize NAME(...)`, with defaults
    of_score: Callable[[TExpr], TExpr] | None = None  # W = of_score(score + bias), written like softmax
    row_options: tuple[str, ...] = ()  # options that are expressions of the query row (b, h, i), not constants

    @property
    def takes_score(self) -> bool:
        """Written with `score(i, j)` and `bias(i, j)` (else with `weight(i, j)`)."""
        return self.online_softmax or self.of_score is not None


NORMALIZERS: Registry = Registry("normalizer")
register_normalizer = NORMALIZERS.register
unregister_normalizer = NORMALIZERS.unregister


def default_normalizer(kernelized: bool) -> Normalizer:
    """`normalize` left out: softmax, or rows for a spec written with `weight` or feature maps."""
    return NORMALIZERS["rows" if kernelized else "softmax"]


for builtin in (
        Normalizer("softmax", online_softmax=True, divides_by_row_sum=False, row_statistic=True, fixed_weights=True,
                   score_name="logits", options={"sink": None}, row_options=("sink",)),
        Normalizer("rows", online_softmax=False, divides_by_row_sum=True, row_statistic=True, fixed_weights=True,
                   score_name="weights", options={"eps": 1e-6}),
        Normalizer("none", online_softmax=False, divides_by_row_sum=False, row_statistic=False, fixed_weights=True,
                   score_name="weights"),
        Normalizer("ista", online_softmax=False, divides_by_row_sum=False, row_statistic=False, fixed_weights=False,
                   score_name="weights", options={"steps": 5, "lam": 0.3})):
    register_normalizer(builtin)


def normalizer(spec) -> Normalizer:
    """The record of a CheckedSpec's `normalize`."""
    return NORMALIZERS[spec.normalize]


def pair_scores(spec):
    """The pair expression a tiled skeleton evaluates: the logits (softmax) or the weights."""
    return spec.logits if normalizer(spec).online_softmax else spec.weight
