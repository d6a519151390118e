"""Graph kernels of an adjacency input A [N, N] (or [B, N, N]): masks that are not index expressions.

    diffusion(adj, t)            G = exp(t A)                             (heat kernel on the graph)
    walks(adj, steps, decay)     G = sum_{s=0..steps} decay^s A^s         (random-walk kernel: the
                                 expectation of GKAT's walk-count estimator, truncated at `steps`)

A spec declares one as a derived input, `input G[N, N] = diffusion(adj, t=0.5)`, and reads G[i, j].
`dense_kernel` materializes G (the reference, and lowerings that read G as a table); `apply_kernel`
multiplies G into a block of token vectors without forming G, through products with A: a sparse
(CSR) A when it is sparse, so a graph with nnz edges costs O(nnz) per product instead of O(N^2).
"""
from __future__ import annotations

import math
import warnings

import torch

GRAPH_KERNELS = {"diffusion": {"t": 1.0}, "walks": {"steps": 3, "decay": 0.5}}
SPARSE_DENSITY = 0.1  # below this fraction of non-zero entries, products go through a CSR matrix


def dense_kernel(kind: str, adj: torch.Tensor, options: dict) -> torch.Tensor:
    """G [.., N, N] at the precision of adj."""
    a = adj.to(torch.promote_types(adj.dtype, torch.float32))
    if kind == "diffusion":
        return torch.linalg.matrix_exp(options["t"] * a)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    g = eye.expand_as(a)
    for _ in range(int(options["steps"])):  # Horner: I + c A (I + c A (...))
        g = eye + options["decay"] * (a @ g)
    return g.contiguous()


def _product(a: torch.Tensor):
    """x [N, C] -> A x, with A as CSR when it is sparse enough to pay for it (dense under torch.compile:
    the choice depends on A's values, and sparse tensors do not trace)."""
    if torch.compiler.is_compiling() or (a.is_floating_point() and (a != 0).float().mean() >= SPARSE_DENSITY):
        return lambda x: a @ x
    with warnings.catch_warnings():  # CSR support is marked beta; the product used here is long stable
        warnings.simplefilter("ignore", UserWarning)
        csr = a.to_sparse_csr()
    return lambda x: csr @ x


def apply_kernel(kind: str, adj: torch.Tensor, options: dict, x: torch.Tensor) -> torch.Tensor:
    """G x for one graph adj [N, N] and x [N, C], through products with A only.

    diffusion: the Taylor series sum_s (t A)^s x / s!, summed until a term is below the rounding of
    the sum (A >= 0 is the usual case; then every term has the sign pattern of A^s |x| and nothing
    cancels). walks: Horner's rule, `steps` products."""
    a = adj.to(x.dtype)
    times = _product(a)
    if kind == "walks":
        y = x
        for _ in range(int(options["steps"])):
            y = x + options["decay"] * times(y)
        return y
    t = options["t"]
    if torch.compiler.is_compiling():  # the series' length depends on A's values: one graph forms G instead
        return dense_kernel(kind, a, options) @ x
    norm = float(a.detach().abs().sum(-1).max()) if a.numel() else 0.0  # the series' length: not differentiated
    limit = 30 + 3 * math.ceil(abs(t) * norm)
    tiny = torch.finfo(x.dtype).eps
    term, y = x, x
    for s in range(1, limit + 1):
        term = times(term) * (t / s)
        y = y + term
        if float(term.detach().abs().max()) <= tiny * float(y.detach().abs().max()):
            break
    return y


def graph_attention_transform(kind: str, adj: torch.Tensor, options: dict):
    """u [.., B, H, C, N] -> G u over the token axis, per batch element when adj is [B, N, N]."""
    def transform(u):
        n = u.shape[-1]
        if adj.dim() == 2:
            x = u.reshape(-1, n).T
            return apply_kernel(kind, adj, options, x).T.reshape(u.shape)
        parts = []
        for b in range(u.shape[-4]):
            ub = u.select(-4, b)
            parts.append(apply_kernel(kind, adj[b], options, ub.reshape(-1, n).T).T.reshape(ub.shape))
        return torch.stack(parts, -4)
    return transform
