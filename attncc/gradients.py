"""How each lowering is differentiated, per backend: what `attncc inspect` and docs/training.md say.

The torch backend is plain autograd through its skeleton (attncc.torch_algorithms). The Triton
backend's forward kernels have no backward of their own: with_torch_backward recomputes the torch
backend from the saved inputs and tables and differentiates that; lowerings without a Triton kernel
run the torch backend in both directions. Gradients reach q, k, v, every learned table and every
float input (tests/test_gradients.py holds them to the float64 reference's autograd).
"""
from __future__ import annotations

from .emit.triton import TORCH_ONLY

TORCH_BACKWARD = {
    "tiled": "autograd through the query chunks (each chunk's scores are kept for the backward; plain "
             "softmax with a full or causal mask: SDPA's own backward)",
    "block_sparse": "autograd through the query blocks (the visited blocks' scores are kept for the backward)",
    "linear": "autograd through phi(K)^T V and the normalizer (O(N m e) kept, no N x N)",
    "linear_chunked": "autograd through the chunks and the carried prefix state (C x C per chunk kept)",
    "fft": "autograd through torch.fft (the backward is FFT convolutions too)",
    "fft2": "autograd through torch.fft.rfft2 (the backward is 2-D FFT convolutions too)",
    "rings": "autograd through the summed-area tables and their box reads",
    "graph": "autograd through the products with the adjacency (dense under torch.compile)",
    # approximations: the gradient of the approximation's own formulas, its selection and draw held fixed
    "mra": "autograd through the selected blocks' tiles and the low-resolution part (the block selection "
           "is piecewise constant: no gradient through it)",
    "lara": "autograd through the landmark products, the draw held fixed",
    "ra": "autograd through the per-sample softmaxes, the samples held fixed",
}


def gradient_paths(lowering: str, triton_kernel: bool | None = None) -> dict[str, str]:
    """{backend: how its gradient is computed} for a lowering; triton_kernel: whether the Triton
    backend has a kernel for it (default: unless the lowering is torch-only; MRA has one for some blocks)."""
    torch_note = TORCH_BACKWARD[lowering]
    if not (lowering not in TORCH_ONLY if triton_kernel is None else triton_kernel):
        return {"torch": torch_note, "triton": "as the torch backend (no Triton kernel for this lowering)"}
    return {"torch": torch_note, "triton": "Triton forward; backward: the torch backend's, recomputed from the "
                                           "saved q, k, v and tables (no Triton backward kernel)"}
