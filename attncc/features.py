"""Feature maps phi: R^d -> R^m applied to rows of q and k in kernelized attention.

Each map is described once here; the reference, the torch emitter and the Triton emitter all read
this table, so a new map is one entry plus its three one-line implementations.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class FeatureMap:
    name: str
    doc: str
    kwargs: dict  # allowed keyword arguments and their defaults
    torch_expr: str  # elementwise torch expression of `x`
    triton_expr: str  # elementwise Triton expression of `x`


FEATURE_MAPS = {
    "elu1": FeatureMap("elu1", "elu(x) + 1 (Katharopoulos et al.), positive", {},
                       "torch.nn.functional.elu(x) + 1", "tl.where(x > 0, x + 1, tl.exp(x))"),
    "relu": FeatureMap("relu", "max(x, 0)", {}, "torch.relu(x)", "tl.maximum(x, 0)"),
    "identity": FeatureMap("identity", "x (plain dot-product kernel)", {}, "x", "x"),
}


def apply_feature_map(name: str, x: torch.Tensor) -> torch.Tensor:
    """Reference implementation, kept apart from the emitted code on purpose."""
    if name == "elu1":
        return F.elu(x) + 1
    if name == "relu":
        return torch.relu(x)
    if name == "identity":
        return x
    raise KeyError(name)
