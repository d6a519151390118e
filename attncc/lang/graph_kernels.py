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


def kernel_operator(kind: str, adj: torch.Tensor, options: dict, dtype: torch.dtype):
    """x [N, C] -> G x for one graph adj [N, N], through products with A only (A converted, to CSR
    when sparse, once per operator rather than once per product).

    diffusion: the Taylor series sum_s (t A)^s x / s!, summed until a term is below the rounding of
    the sum (A >= 0 is the usual case; then every term has the sign pattern of A^s |x| and nothing
    cancels). walks: Horner's rule, `steps` products."""
    a = adj.to(dtype)
    times = _product(a)
    if kind == "walks":
        def walks(x):
            y = x
            for _ in range(int(options["steps"])):
                y = x + options["decay"] * times(y)
            return y
        return walks
    t = options["t"]
    if torch.compiler.is_compiling():  # the series' length depends on A's values: one graph forms G instead
        g = dense_kernel(kind, a, options)
        return lambda x: g @ x
    norm = float(a.detach().abs().sum(-1).max()) if a.numel() else 0.0  # the series' length: not differentiated
    limit = 30 + 3 * math.ceil(abs(t) * norm)
    tiny = torch.finfo(dtype).eps

    def diffusion(x):
        term, y = x, x
        for s in range(1, limit + 1):
            term = times(term) * (t / s)
            y = y + term
            if float(term.detach().abs().max()) <= tiny * float(y.detach().abs().max()):
                break
        return y
    return diffusion


def apply_kernel(kind: str, adj: torch.Tensor, options: dict, x: torch.Tensor) -> torch.Tensor:
    """G x for one graph adj [N, N] and x [N, C] (kernel_operator)."""
    return kernel_operator(kind, adj, options, x.dtype)(x)


def graph_attention_transform(kind: str, adj: torch.Tensor, options: dict, dtype: torch.dtype):
    """u [.., B, H, C, N] -> G u over the token axis, per batch element when adj is [B, N, N]. The
    columns go to the products as a row-major [N, C] block (what CSR products stream fastest)."""
    graphs = [adj] if adj.dim() == 2 else list(adj)
    operators = [kernel_operator(kind, a, options, dtype) for a in graphs]

    def apply(op, u):
        n = u.shape[-1]
        return op(u.reshape(-1, n).T.contiguous()).T.reshape(u.shape)

    def transform(u):
        if adj.dim() == 2:
            return apply(operators[0], u)
        return torch.stack([apply(op, u.select(-4, b)) for b, op in enumerate(operators)], -4)
    return transform
