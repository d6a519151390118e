"""`fft`: a Toeplitz kernel f(i - j) by circulant embedding, one FFT convolution per feature and
value column (torch.fft); Triton contracts with phi(Q) (emit/triton_structured.py)."""
from __future__ import annotations

import sympy
import torch

from ..emit.torch import emit_kernelized, emit_toeplitz_f
from ..emit.triton_structured import emit_structured
from ..ir.graph import B, D, E, H, N, Nq
from ..plan.cost import BYTES_IO, Candidate, CostQuery, blocked_transform_memory
from ..plan.registry import Lowering, register

NAME = "fft"
# FFT's round-off grows like eps log N: looser than the exact lowerings' fp32 tolerance
FFT_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-9}
TORCH_PART = "phi(K) o [V, 1] and its Toeplitz convolutions (torch.fft: cuFFT / pocketfft)"


def accepts(query: CostQuery) -> bool:
    return query.exact and query.op == "toeplitz_attend"


def cost(query: CostQuery) -> Candidate:
    length = Nq + N
    cells = 2 * length  # the FFT length: the power of two at or above Nq + N - 1, at most twice that
    return Candidate(NAME, B * H * D * (E + 1) * 5 * length * sympy.log(length, 2) + 4 * B * H * Nq * D * E,
                     BYTES_IO + 4 * B * H * length * D * (E + 1) * 3,
                     "circulant embedding, one FFT convolution per feature and value column",
                     **blocked_transform_memory(cells))


def forward(w, common: str) -> None:
    w.line("# the convolution runs as torch.fft (cuFFT / pocketfft)")
    w.line(f"return rt.toeplitz_attention(pq, pk, v, toeplitz_f(ctx).to(q.device), {common})")


def emit_torch(w, graph, plan) -> None:
    emit_kernelized(w, graph, plan, emit_toeplitz_f, forward)


def transform(w) -> None:
    w.line("transform, cells = rt.toeplitz_transform(host.toeplitz_f(ctx).to(q.device), Nq, N, rt.compute_dtype(v))")


def emit_triton(w, graph, plan) -> str:
    return emit_structured(w, graph, plan, TORCH_PART, transform)


LOWERING = register(Lowering(
    NAME, accepts, cost, emit_torch,
    torch_backward="through torch.fft (the backward is FFT convolutions too)",
    emit_triton=emit_triton, tolerance=FFT_TOLERANCE))
