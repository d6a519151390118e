"""Feature maps phi: R^d -> R^m applied to rows of q and k in kernelized attention.

Elementwise maps (m = d) are described once in FEATURE_MAPS; the reference, the torch emitter and
the Triton emitter all read that table. Random-feature maps (RANDOM_MAPS) project rows onto m
random directions drawn from a seed; a compiled module holds the projection as a buffer and
computes the features once per call, before any kernel runs (so every lowering sees rows of
width m, and the generated kernels treat the map as the identity).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .operators import FUNCTIONS
from .registry import Registry
from .source import AttnccError


@dataclass(frozen=True)
class FeatureMap:
    name: str
    doc: str
    kwargs: dict  # allowed keyword arguments and their defaults
    torch_expr: str  # elementwise torch expression of `x`
    triton_expr: str  # elementwise Triton expression of `x`
    triton_grad: str  # its derivative in `x`, as torch's autograd takes it (backward kernels)
    # The oracle's implementation, written apart from torch_expr on purpose: generated code is
    # checked against it, so the two should not share a typo.
    reference: Callable[[torch.Tensor], torch.Tensor]


FEATURE_MAPS: Registry = Registry("feature map")
ALL_MAPS: dict[str, "FeatureMap | RandomMap"] = {}  # the elementwise and the random maps: names a spec may use


def register_feature_map(fmap: FeatureMap) -> FeatureMap:
    """Make an elementwise feature map known to the checker, the emitters and the oracle."""
    if fmap.name in ALL_MAPS:
        raise AttnccError(f"feature map `{fmap.name}` is registered twice")
    if fmap.name in FUNCTIONS:  # `softplus(x)` must keep meaning the function of numbers
        raise AttnccError(f"`{fmap.name}` is a function of the language; name the feature map otherwise")
    ALL_MAPS[fmap.name] = FEATURE_MAPS.register(fmap)
    return fmap


def unregister_feature_map(name: str) -> None:
    """Forget a map registered with register_feature_map (tests, notebooks)."""
    FEATURE_MAPS.unregister(name)
    ALL_MAPS.pop(name, None)


register_feature_map(FeatureMap("elu1", "elu(x) + 1 (Katharopoulos et al.), positive", {},
                                "torch.nn.functional.elu(x) + 1", "tl.where(x > 0, x + 1, tl.exp(x))",
                                "tl.where(x > 0, 1.0, tl.exp(x))", lambda x: F.elu(x) + 1))
register_feature_map(FeatureMap("relu", "max(x, 0)", {}, "torch.relu(x)", "tl.maximum(x, 0)",
                                "tl.where(x > 0, 1.0, 0.0)", lambda x: x.clamp(min=0)))
register_feature_map(FeatureMap("identity", "x (plain dot-product kernel)", {}, "x", "x", "1.0", lambda x: x))


@dataclass(frozen=True)
class RandomMap:
    name: str
    doc: str
    kwargs: dict
    width: int  # output columns per random direction

    def out_dim(self, features: int) -> int:
        return self.width * features


RANDOM_KWARGS = {"features": 64, "seed": 0, "orthogonal": 1, "redraw": 1}
RANDOM_MAPS = {
    "favor": RandomMap("favor", "positive random features (FAVOR+, Choromanski et al.): "
                       "exp(w.x' - |x'|^2 / 2) / sqrt(m), x' = x d^(-1/4); E[phi(q).phi(k)] = exp(q.k / sqrt(d))",
                       RANDOM_KWARGS, 1),
    "trig": RandomMap("trig", "trigonometric random features (RFA, Rahimi & Recht): "
                      "exp(|x'|^2 / 2) [sin(W x'), cos(W x')] / sqrt(m), x' = x d^(-1/4); "
                      "E[phi(q).phi(k)] = exp(q.k / sqrt(d)); signed", RANDOM_KWARGS, 2),
}
ALL_MAPS.update(RANDOM_MAPS)


def apply_feature_map(name: str, x: torch.Tensor) -> torch.Tensor:
    """The oracle's implementation of an elementwise map (FeatureMap.reference)."""
    return FEATURE_MAPS[name].reference(x)


def seeded_generator(seed: int, draw: int) -> torch.Generator:
    """A CPU generator for draw number `draw` of `seed`: the same numbers on every device and run."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(draw)) % (1 << 63))


def draw_projection(features: int, dim: int, seed: int, draw: int, orthogonal: bool) -> torch.Tensor:
    """W [features, dim], rows ~ N(0, I_dim): draw number `draw` of `seed`.

    Drawn in float64 on the CPU from a generator seeded by (seed, draw), so a seed gives the same
    features on every device and every run. Orthogonal draws (Performer): blocks of `dim` rows
    are orthonormal (QR of a Gaussian block), each row rescaled to the norm of a Gaussian vector,
    so every row keeps the N(0, I) marginal while the rows of a block do not overlap."""
    g = seeded_generator(seed, draw)
    if not orthogonal:
        return torch.randn(features, dim, generator=g, dtype=torch.float64).float()
    blocks = []
    for _ in range(-(-features // max(dim, 1))):
        q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
        blocks.append((q * torch.sign(torch.diagonal(r))).T)  # sign fix: Haar-distributed rows
    rows = torch.cat(blocks)[:features]
    norms = torch.randn(features, dim, generator=g, dtype=torch.float64).norm(dim=-1, keepdim=True)
    return (rows * norms).float()


def random_features(kind: str, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """phi(x) for rows x [..., d] and a projection w [m, d], at the precision of x (float32 at least).

    favor: exp(w.x' - |x'|^2 / 2) / sqrt(m);  trig: exp(|x'|^2 / 2) [sin(w.x'), cos(w.x')] / sqrt(m);
    x' = x d^(-1/4), so phi(q).phi(k) estimates exp(q.k / sqrt(d)) without bias."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    x = x.to(dtype) * x.shape[-1] ** -0.25
    u = x @ w.to(device=x.device, dtype=dtype).T
    half_norm = 0.5 * (x * x).sum(-1, keepdim=True)
    norm = w.shape[0] ** -0.5
    if kind == "favor":
        return torch.exp(u - half_norm) * norm
    if kind == "trig":
        return torch.cat([torch.sin(u), torch.cos(u)], -1) * (torch.exp(half_norm) * norm)
    raise KeyError(kind)


# Tensor-power features of a polynomial kernel (passes/polynomial.py): the query side carries the
# coefficients, the key side is plain, so sum_n c_n (q.k)^n = T_c(q) . T(k) for any signs of c_n.
TENSOR_POWER_Q, TENSOR_POWER_K = "tensor_power_q", "tensor_power_k"
MODULE_MAPS = (TENSOR_POWER_Q, TENSOR_POWER_K)  # applied by the module before any lowering, like random maps


def tensor_power_width(d, degrees) -> object:
    """Columns of [x^(x)n]_n for rows of width d (a number or a sympy symbol): 1, d, d (d + 1) / 2
    (the symmetric part of x (x) x), d^n beyond."""
    return sum((1, d, d * (d + 1) / 2)[n] if n <= 2 else d ** n for n in degrees)


def tensor_powers(x: torch.Tensor, degrees) -> list[torch.Tensor]:
    """[x^(x)n for n in degrees] flattened over the last dimension; n = 2 keeps the upper triangle of
    x x^T with its off-diagonal entries times sqrt(2), so that T2(x) . T2(y) = (x . y)^2 exactly."""
    d = x.shape[-1]
    out = []
    for n in degrees:
        if n == 0:
            out.append(x.new_ones(*x.shape[:-1], 1))
        elif n == 1:
            out.append(x)
        elif n == 2:
            rows, cols = torch.triu_indices(d, d, device=x.device)
            weight = torch.where(rows == cols, 1.0, torch.tensor(2.0, dtype=x.dtype).sqrt())  # sqrt(2) in x's precision
            out.append(x[..., rows] * x[..., cols] * weight)
        else:
            power = x
            for _ in range(n - 1):
                power = (power.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)
            out.append(power)
    return out


def tensor_power_features(q: torch.Tensor, k: torch.Tensor, terms) -> tuple[torch.Tensor, torch.Tensor]:
    """(T_c(q), T(k)) for terms ((n, c_n), ...): T_c(q) . T(k) = sum_n c_n (q . k)^n."""
    degrees = [n for n, _ in terms]
    fq = torch.cat([c * p for (_, c), p in zip(terms, tensor_powers(q, degrees))], -1)
    return fq, torch.cat(tensor_powers(k, degrees), -1)
