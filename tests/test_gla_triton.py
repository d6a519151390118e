"""The per-dimension gated (GLA) Triton kernels of attncc/emit/triton_gla.py, emitted into a module and
launched directly (forward, dQ, dK / dV / dG) in Triton's interpreter, fp32 and fp16, against the dense
definition and its float64 autograd; gates strong enough that exp(-G) alone overflows."""
import importlib.util

import pytest
import torch

from attncc.emit.triton import emit_feature_fn
from attncc.emit.triton_gla import FMA_WARPS, GLA_BLOCK, emit_gla_dkdv_kernel, emit_gla_dq_kernel, emit_gla_forward_kernel
from attncc.emit.triton_linear import finish_rows
from attncc.emit.writer import CodeWriter

from .test_gla import dense_gla, log_gates, rows

HEADER = "import torch\nimport triton\nimport triton.language as tl\n\n\n"


def kernels_module(tmp_path, fq: str, fk: str, normalize: str):
    """The three kernels for these feature maps and normalizer, written to a file and imported."""
    w = CodeWriter()
    for fm in sorted({fq, fk} - {"identity"}):
        emit_feature_fn(w, fm)
    emit_gla_forward_kernel(w, fq, fk, finish_rows(normalize))
    emit_gla_dq_kernel(w, fq, fk, normalize, rows_sum=normalize == "rows")
    emit_gla_dkdv_kernel(w, fq, fk)
    path = tmp_path / f"gla_{fq}_{fk}_{normalize}.py"
    path.write_text(HEADER + w.text())
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _common(q, k, v, out):
    B, H, Nq, D = q.shape
    return (q, k, v, out, Nq, k.shape[2], H, D, v.shape[3], H // k.shape[1], *q.stride(), *k.stride(), *v.stride(),
            *out.stride())  # H // Hkv: the kernels' GROUP


def _blocks(q, v, value_tile=None):
    BLOCK_D = max(16, 1 << (q.shape[-1] - 1).bit_length())
    BLOCK_E = max(16, 1 << (v.shape[-1] - 1).bit_length())
    return dict(BLOCK=GLA_BLOCK, BLOCK_D=BLOCK_D, BLOCK_E=min(BLOCK_E, value_tile or BLOCK_E),
                PRECISION="ieee" if q.dtype == torch.float32 else "tf32")


def launch_forward(kernels, q, k, v, G, mod: float, eps: float, value_tile: int = 16):
    """out, as a launcher runs `_gla_fwd`: G [B, H, max(Nq, N), D] flattened to [B H, T, D] fp32, fp32 inputs
    with FMA_WARPS warps."""
    B, H = q.shape[:2]
    out = torch.empty(*q.shape[:3], v.shape[3], dtype=q.dtype)
    g = G.float().reshape(B * H, *G.shape[2:]).contiguous()
    blocks = _blocks(q, v, value_tile)
    grid = (B * H, -(-v.shape[3] // blocks["BLOCK_E"]))
    warps = 4 if q.element_size() <= 2 else FMA_WARPS
    kernels._gla_fwd[grid](*_common(q, k, v, out), torch.full((B * H,), mod), g, eps, **blocks, num_warps=warps)
    return out


def launch_backward(kernels, q, k, v, G, out, dout, mod: float, eps: float, **options):
    """(dq, dk, dv, dG) from `_gla_bwd_dq` and `_gla_bwd_dkdv`, dG the two sides summed per token."""
    B, H, Nq, D = q.shape
    N = k.shape[2]
    g = G.float().reshape(B * H, *G.shape[2:]).contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dgq, dgk = torch.empty(B * H, Nq, D), torch.empty(B * H, N, D)
    inv, dden = torch.empty(B, H, Nq), torch.empty(B, H, Nq)
    common = (*_common(q, k, v, out), dout, *dout.stride(), dq, *dq.stride(), dk, *dk.stride(), dv, *dv.stride())
    blocks, mods = {**_blocks(q, v), **options}, torch.full((B * H,), mod)
    kernels._gla_bwd_dq[(B * H,)](*common, mods, g, dgq, inv, dden, eps, **blocks)
    kernels._gla_bwd_dkdv[(B * H,)](*common, g, dgk, inv, dden, **blocks)
    dG = torch.zeros(B * H, max(Nq, N), D)
    dG[:, :Nq] += dgq
    dG[:, :N] += dgk
    return dq, dk, dv, dG.view(B, H, -1, D)


def _error(a, b) -> float:
    return ((a.double() - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("nq, n", [(45, 45), (30, 45), (50, 37)])
def test_forward_matches_the_definition(tmp_path, dtype, nq, n):
    """Several chunks and a ragged last one, 24 value columns (two programs of 16), gates reaching -1000."""
    kernels = kernels_module(tmp_path, "identity", "identity", "none")
    q, _, _ = rows(2, 2, nq, 16, 24, seed=1)
    _, k, v = rows(2, 2, n, 16, 24, seed=2)
    G = log_gates(2, 2, max(nq, n), 16, seed=3, strength=-60.0)
    assert G.min() < -1000
    q, k, v, Gr = (x.to(dtype) for x in (q, k, v, G))
    got = launch_forward(kernels, q, k, v, Gr, 0.25, 0.0)
    assert torch.isfinite(got).all()
    want = dense_gla(q.double(), k.double(), v.double(), Gr.double(), 0.25)
    assert _error(got, want) < {torch.float32: 1e-5, torch.float16: 5e-3}[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", ["none", "rows_elu1", "lengths"])
def test_backward_matches_the_definitions_autograd(tmp_path, dtype, case):
    """dq, dk, dv and dG against the float64 dense definition's autograd: plain rows; a feature map with
    the rows normalizer; Nq != N both ways."""
    fm, normalize, eps = ("elu1", "rows", 1e-6) if case == "rows_elu1" else ("identity", "none", 0.0)
    kernels = kernels_module(tmp_path, fm, fm, normalize)
    nq, n = (30, 45) if case == "lengths" else (45, 45)
    q, _, _ = rows(1, 2, nq, 16, 8, seed=4)
    _, k, v = rows(1, 2, n, 16, 8, seed=5)
    G = log_gates(1, 2, max(nq, n), 16, seed=6, strength=-3.0)
    w = torch.randn(1, 2, nq, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    leaves = [x.to(dtype).double().requires_grad_() for x in (q, k, v, G)]
    phi = (lambda x: torch.nn.functional.elu(x) + 1) if fm == "elu1" else (lambda x: x)
    ref = dense_gla(phi(leaves[0]), phi(leaves[1]), leaves[2], leaves[3], 0.5, normalize, eps)
    want = torch.autograd.grad((ref * w).sum(), leaves)
    q, k, v, Gr = (x.to(dtype) for x in (q, k, v, G))
    out = launch_forward(kernels, q, k, v, Gr, 0.5, eps)
    assert _error(out, ref.detach()) < {torch.float32: 1e-5, torch.float16: 5e-3}[dtype]
    got = launch_backward(kernels, q, k, v, Gr, out, w.to(dtype), 0.5, eps)
    tolerance = {torch.float32: 1e-4, torch.float16: 3e-2}[dtype]
    for name, a, b in zip(["q", "k", "v", "G"], got, want):
        assert torch.isfinite(a).all(), name
        assert _error(a, b) < tolerance, f"gradient of {name}: {_error(a, b):.2e}"


def test_backward_with_strong_gates_is_finite_and_exact(tmp_path):
    kernels = kernels_module(tmp_path, "identity", "identity", "none")
    q, k, v = rows(1, 1, 64, 16, 8, seed=8)
    G = log_gates(1, 1, 64, 16, seed=9, strength=-60.0)
    assert G.min() < -1000
    w = torch.randn(1, 1, 64, 8, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    leaves = [x.float().double().requires_grad_() for x in (q, k, v, G)]
    want = torch.autograd.grad((dense_gla(*leaves, 0.5) * w).sum(), leaves)
    q, k, v, Gf = (x.float() for x in (q, k, v, G))
    out = launch_forward(kernels, q, k, v, Gf, 0.5, 0.0)
    got = launch_backward(kernels, q, k, v, Gf, out, w.float(), 0.5, 0.0)
    for name, a, b in zip(["q", "k", "v", "G"], got, want):
        assert torch.isfinite(a).all() and _error(a, b) < 1e-4, name
