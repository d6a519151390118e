"""How the torch backend differentiates each lowering: the `torch backward:` line of `attncc inspect`.

The torch backend is plain autograd through its skeleton (attncc.torch_algorithms); the Triton
backend's backward is described by attncc.emit.triton_backward.backward_line. Gradients reach
q, k, v, every learned table and every float input (tests/test_gradients.py holds them to the
float64 reference's autograd).
"""
from __future__ import annotations

TORCH_BACKWARD = {
    "tiled": "through the query chunks (each chunk's scores are kept for the backward: O(Nq N) in all; plain "
             "softmax with a full or causal mask: SDPA's own backward)",
    "block_sparse": "through the query blocks (the visited blocks' scores are kept for the backward)",
    "linear": "through phi(K)^T V and the normalizer (O(N m e) kept, no N x N)",
    "linear_chunked": "through the chunks and the carried prefix state (C x C per chunk kept)",
    "fft": "through torch.fft (the backward is FFT convolutions too)",
    "fft2": "through torch.fft.rfft2 (the backward is 2-D FFT convolutions too)",
    "rings": "through the summed-area tables and their box reads",
    "graph": "through the products with the adjacency (dense under torch.compile)",
    "mixed_chunk": "through the c x c diagonal blocks and the (prefix-summed) chunk states (no N x N)",
    "ista": "through the unrolled ISTA steps on the m x m Gram matrix (soft thresholds: subgradient 0 at the kink)",
    # approximations: the gradient of the approximation's own formulas, its selection and draw held fixed
    "mra": "through the selected blocks' tiles and the low-resolution part (the block selection is "
           "piecewise constant: no gradient through it)",
    "lara": "through the landmark products, the draw held fixed",
    "ra": "through the per-sample softmaxes, the samples held fixed",
}


def torch_backward_line(lowering: str) -> str:
    """How the torch backend's gradient of a lowering is computed (for `inspect`)."""
    return "torch autograd " + TORCH_BACKWARD[lowering]
