"""Triton kernels of the declared approximations (approx.py).

MRA-2 gets a block-sparse kernel: one program per (query block, batch x head) walks the key blocks its
(batch, head) selected (CSR from the top-k, per head: data-dependent, unlike the compile-time layouts of
block-sparse masks), with an online softmax whose running state starts from the low-resolution part
(computed in torch: an nq x nk product). LARA and RA stay in torch (their work is dense products
that cuBLAS already does well); the generated source says so.
"""
from __future__ import annotations

from ..lang.approx_math import MRA_EPS
from ..ir.graph import Graph, attention_of
from .writer import CodeWriter


def mra_triton_block(graph: Graph) -> int | None:
    """The MRA block edge if a Triton tile can be exactly one block (a power of two, at least 16), else None."""
    block = graph.node(attention_of(graph)).attr("approx").options["block"]
    return block if block >= 16 and block & (block - 1) == 0 and block <= 128 else None


def emit_mra_kernel(w: CodeWriter, graph: Graph) -> None:
    opts = graph.node(attention_of(graph)).attr("approx").options
    full = opts["mode"] == "full"
    w.line("@triton.jit")
    with w.block("def _mra_fwd(Q, K, V, Out, LowTop, LowNum, LowDen, RowPtr, Cols,"):
        w.line("stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,")
        w.line("stride_vb, stride_vh, stride_vn, stride_ve, stride_ob, stride_oh, stride_om, stride_oe,")
        w.line("H, Nq, N, D, E, nq, selected, sm_scale, eps,")
        w.line("BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr, FULL: tl.constexpr,")
        w.line("PRECISION: tl.constexpr):")
        w.line(f'"""MRA-2 ({"full" if full else "sparse"}): query block pid_m against the key blocks its head '
               f'selected, exp(q.k * scale) on each, plus the low-resolution rest."""')
        w.line("pid_m = tl.program_id(0)")
        w.line("pid_bh = tl.program_id(1)")
        w.line("off_b = pid_bh // H")
        w.line("off_h = pid_bh % H")
        w.line("offs_m = pid_m * BLOCK + tl.arange(0, BLOCK)")
        w.line("offs_d = tl.arange(0, BLOCK_D)")
        w.line("offs_e = tl.arange(0, BLOCK_E)")
        w.line("Q += off_b * stride_qb + off_h * stride_qh")
        w.line("K += off_b * stride_kb + off_h * stride_kh")
        w.line("V += off_b * stride_vb + off_h * stride_vh")
        w.line("q = tl.load(Q + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,")
        w.line("            mask=(offs_m[:, None] < Nq) & (offs_d[None, :] < D), other=0.0)")
        with w.block("if FULL:  # the running state starts as the unselected blocks' sums, relative to their max"):
            w.line("row = pid_bh * nq + pid_m")
            w.line("m_i = tl.full([BLOCK], 0.0, dtype=tl.float32) + tl.load(LowTop + row)")
            w.line("l_i = tl.full([BLOCK], 0.0, dtype=tl.float32) + tl.load(LowDen + row)")
            w.line("low = tl.load(LowNum + row * E + offs_e, mask=offs_e < E, other=0.0)")
            w.line("acc = tl.zeros([BLOCK, BLOCK_E], dtype=tl.float32) + low[None, :]")
        with w.block("else:"):
            w.line("m_i = tl.full([BLOCK], float('-inf'), dtype=tl.float32)")
            w.line("l_i = tl.zeros([BLOCK], dtype=tl.float32)")
            w.line("acc = tl.zeros([BLOCK, BLOCK_E], dtype=tl.float32)")
        w.line("ptr = RowPtr + pid_bh * (nq + 1) + pid_m")
        with w.block("for idx in range(tl.load(ptr), tl.load(ptr + 1)):"):
            w.line("offs_n = tl.load(Cols + pid_bh * selected + idx) * BLOCK + tl.arange(0, BLOCK)")
            w.line("k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,")
            w.line("            mask=(offs_n[:, None] < N) & (offs_d[None, :] < D), other=0.0)")
            w.line("v = tl.load(V + offs_n[:, None] * stride_vn + offs_e[None, :] * stride_ve,")
            w.line("            mask=(offs_n[:, None] < N) & (offs_e[None, :] < E), other=0.0)")
            w.line("s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * sm_scale")
            w.line("s = tl.where(offs_n[None, :] < N, s, float('-inf'))")
            w.line("m_new = tl.maximum(m_i, tl.max(s, 1))")
            w.line("m_safe = tl.where(m_new == float('-inf'), 0.0, m_new)")
            w.line("p = tl.exp(s - m_safe[:, None])")
            w.line("alpha = tl.exp(m_i - m_safe)")
            w.line("l_i = l_i * alpha + tl.sum(p, 1)")
            w.line("acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)")
            w.line("m_i = m_new")
        w.line("out = acc / (l_i + eps)[:, None]  # eps relative to the row's largest term, as in MRA-2")
        w.line("tl.store(Out + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_om + offs_e[None, :] * stride_oe,")
        w.line("         out.to(Out.dtype.element_ty), mask=(offs_m[:, None] < Nq) & (offs_e[None, :] < E))")
    w.line()
    w.line()
    with w.block("def forward_triton(self, q, k, v, ctx, host):"):
        w.line('"""Selection, CSR and the low-resolution part in torch (float64 selection, as the reference);')
        w.line('the selected blocks in the kernel. Gradients by recomputing the torch backend under autograd."""')
        with w.block("def run(q, k, v, ctx):"):
            w.line("B, H, Nq, D = q.shape")
            w.line("N, E = k.shape[2], v.shape[3]")
            w.line(f"BLOCK = {opts['block']}")
            w.line("nq, nk = triton.cdiv(Nq, BLOCK), triton.cdiv(N, BLOCK)")
            w.line(f"idx, low = ax.mra_selection(q, k, block=BLOCK, blocks_per_row={opts['blocks_per_row']}, "
                   f"first={opts['first']}, diagonal={opts['diagonal']})")
            w.line("row_ptr, cols = ax.mra_csr(idx, nq, nk)")
            w.line("low_top, low_num, low_den = ax.mra_low_part(low.float(), v.float(), idx, BLOCK)")
            w.line("q, k, v = q.contiguous(), k.contiguous(), v.contiguous()")
            w.line("out = torch.empty(B, H, Nq, E, device=q.device, dtype=q.dtype)")
            w.line("BLOCK_D, BLOCK_E = max(16, triton.next_power_of_2(D)), max(16, triton.next_power_of_2(E))")
            w.line("precision = 'ieee' if q.dtype == torch.float32 else 'tf32'")
            w.line("_mra_fwd[(nq, B * H)](q, k, v, out, low_top.contiguous(), low_num.contiguous(), low_den.contiguous(),")
            w.line("    row_ptr, cols, *q.stride(), *k.stride(), *v.stride(), *out.stride(),")
            w.line(f"    H, Nq, N, D, E, nq, idx.shape[-1], ctx.scale, {MRA_EPS!r},")
            w.line(f"    BLOCK=BLOCK, BLOCK_D=BLOCK_D, BLOCK_E=BLOCK_E, FULL={full}, PRECISION=precision)")
            w.line("return out")
        w.line("return rt.with_torch_backward(run, lambda q, k, v, ctx: host.forward_torch(self, q, k, v, ctx), q, k, v, ctx)")
