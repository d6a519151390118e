"""`fft2`: a kernel of grid offsets f(dr, dc) by 2-D FFT convolutions on the zero-padded,
circulant-embedded offset plane (torch.fft.rfft2); Triton contracts with phi(Q)."""
from __future__ import annotations

import sympy

from ..analysis.grid import width_at
from ..emit.torch import emit_grid_f, emit_kernelized
from ..emit.triton_structured import emit_structured
from ..ir.graph import B, D, E, H, N, Nq
from ..plan.cost import BYTES_IO, Candidate, CostQuery, blocked_transform_memory
from ..plan.registry import Lowering, register
from .fft import FFT_TOLERANCE

NAME = "fft2"
TORCH_PART = "phi(K) o [V, 1] and its 2-D convolutions on the grid (torch.fft.rfft2: cuFFT / pocketfft)"


def accepts(query: CostQuery) -> bool:
    return query.exact and query.op == "grid_attend" and bool(query.attrs["grid"].toeplitz)


def cost(query: CostQuery) -> Candidate:
    """2-D FFT over the (Rq + Rk) x 2w offset plane."""
    width = width_at(query.attrs["grid"], query.sizes)
    rows = sympy.ceiling(Nq / width) + sympy.ceiling(N / width)
    cells = 2 * rows * 2 * width
    return Candidate(NAME, B * H * D * (E + 1) * 5 * cells * sympy.log(cells, 2) + 4 * B * H * Nq * D * E,
                     BYTES_IO + 4 * B * H * cells * D * (E + 1) * 3,
                     f"2-D FFT convolutions on the {width}-column grid (zero-padded, circulant-embedded)",
                     **blocked_transform_memory(2 * cells))  # each side padded to a power of two: <= 4x


def forward(w, common: str) -> None:
    w.line("# the 2-D convolutions run as torch.fft.rfft2 (cuFFT / pocketfft)")
    w.line(f"return rt.grid_toeplitz_attention(pq, pk, v, grid_f(ctx).to(q.device), grid_width(ctx), {common})")


def emit_torch(w, graph, plan) -> None:
    emit_kernelized(w, graph, plan, lambda w, exprs: emit_grid_f(w, plan, exprs), forward)


def transform(w) -> None:
    w.line("transform, cells = rt.grid_transform(host.grid_f(ctx).to(q.device), Nq, N, host.grid_width(ctx),")
    w.line("                                     rt.compute_dtype(v))")


def emit_triton(w, graph, plan) -> str:
    return emit_structured(w, graph, plan, TORCH_PART, transform)


LOWERING = register(Lowering(
    NAME, accepts, cost, emit_torch,
    torch_backward="through torch.fft.rfft2 (the backward is 2-D FFT convolutions too)",
    emit_triton=emit_triton, tolerance=FFT_TOLERANCE))
