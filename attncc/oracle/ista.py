"""VARS (Shi et al., "Visual Attention Emerges from Recurrent Sparse Reconstruction", ICML 2022):
attention as T unrolled ISTA steps of a sparse reconstruction of the values.

Per batch element and head, with weight(i, j) = dot(phi(q[i]), psi(k[j])):

    Phi_K   = psi(K) diag(1 / |psi(K)_{:, l}|)  [N, m]    the dictionary: unit columns (a zero column stays 0)
    Phi_Q   = phi(Q) diag(1 / |phi(Q)_{:, l}|)  [Nq, m]   the queries' features, normalized alike
                                              (Phi_Q = Phi_K when q = k, the paper's self-attention;
                                              each side by its own norms keeps |Phi_Q| <= 1 when q != k)
    G       = Phi_K^T Phi_K  [m, m]           b = Phi_K^T V  [m, e]
    L       = |G|_F  (0 -> 1)                 the step constant: the Frobenius norm of G, an upper bound
                                              of its largest eigenvalue, so 1/L is a safe ISTA step
    z_0 = 0,  z_{t+1} = S_{lam/L}(z_t - (G z_t - b) / L),   S_tau(x) = sign(x) max(|x| - tau, 0)
    out     = Phi_Q z_T  [Nq, e]

solves min_z 1/2 |V - Phi_K z|^2 + lam |z|_1 approximately (T steps). One step with lam = 0 is
z_1 = b / L: out = Phi_Q Phi_K^T V / L, kernelized attention without row normalization.
The lowering never forms an N x N matrix: O(N m (m + e) + T m^2 e).
"""
from __future__ import annotations

import torch

from ..frontend.check import CheckedSpec


def unit_columns(x: torch.Tensor) -> torch.Tensor:
    """x [B, H, n, m] with every column scaled to norm 1 over the n tokens; a zero column stays 0."""
    norms = x.pow(2).sum(dim=2, keepdim=True).sqrt()
    return x / norms.masked_fill(norms == 0, 1.0)


def dense_ista(spec: CheckedSpec, phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The naive reference in float64 on the rows' features phi(Q), psi(K): the dictionary formed
    explicitly, each step's gradient taken through the [N, e] residual Phi_K z - V (never through G)."""
    phi_q, phi_k, v = phi_q.double(), phi_k.double(), v.double()
    dictionary, queries = unit_columns(phi_k), unit_columns(phi_q)
    gram = dictionary.transpose(-1, -2) @ dictionary
    step = torch.sqrt((gram * gram).sum(dim=(-2, -1), keepdim=True))
    step = torch.where(step == 0, torch.ones_like(step), step)
    lam = spec.ista.lam
    z = torch.zeros(*v.shape[:2], dictionary.shape[-1], v.shape[-1], dtype=torch.float64, device=v.device)
    for _ in range(spec.ista.steps):
        residual = dictionary @ z - v
        u = z - dictionary.transpose(-1, -2) @ residual / step
        z = torch.where(u.abs() > lam / step, u - torch.sign(u) * lam / step, torch.zeros_like(u))
    return queries @ z
