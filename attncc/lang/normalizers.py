"""The normalizers of `normalize ...`: what each one asks of a skeleton.

  softmax  logits through an online max and sum (exp), out = softmax(s) v; the Triton forward
           saves the row logsumexp for its backward
  rows     fixed weights W summed per row, out = W v / (rowsum W + eps); saves the denominator
  none     fixed weights, out = W v; no row statistic
  ista     no fixed W: the unrolled sparse-reconstruction solver (lowering `ista` only)
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Normalizer:
    name: str
    online_softmax: bool  # logits through the online-softmax skeleton (else running sums of weights)
    divides_by_row_sum: bool  # out = sum W v / (sum W + eps): eps is read
    row_statistic: bool  # the tiled Triton forward saves a per-row statistic for the backward
    fixed_weights: bool  # W[i, j] is an expression of the pair (a tiled or kernelized skeleton applies)
    score_name: str  # what the pair expression is called in generated holes: logits or weights


NORMALIZERS = {n.name: n for n in (
    Normalizer("softmax", online_softmax=True, divides_by_row_sum=False, row_statistic=True, fixed_weights=True,
               score_name="logits"),
    Normalizer("rows", online_softmax=False, divides_by_row_sum=True, row_statistic=True, fixed_weights=True,
               score_name="weights"),
    Normalizer("none", online_softmax=False, divides_by_row_sum=False, row_statistic=False, fixed_weights=True,
               score_name="weights"),
    Normalizer("ista", online_softmax=False, divides_by_row_sum=False, row_statistic=False, fixed_weights=False,
               score_name="weights"),
)}


def normalizer(spec) -> Normalizer:
    """The record of a CheckedSpec's `normalize`."""
    return NORMALIZERS[spec.normalize]


def pair_scores(spec):
    """The pair expression a tiled skeleton evaluates: the logits (softmax) or the weights."""
    return spec.logits if normalizer(spec).online_softmax else spec.weight
