"""Triton kernels of the declared approximations (attncc/frontend/approx.py).

MRA-2 gets a block-sparse kernel: one program per (query block, batch x head) walks the key blocks its
(batch, head) selected (CSR from the top-k, per head: data-dependent, unlike the compile-time layouts of
block-sparse masks), with an online softmax whose running state starts from the low-resolution part
(computed in torch: an nq x nk product). LARA and RA stay in torch (their work is dense products
that cuBLAS already does well); the generated source says so.
"""
from __future__ import annotations

from ..lang.approx_math import MRA_EPS
from ..ir.graph import Graph, attention_of
from .triton import LOG2E
from .writer import CodeWriter


def mra_triton_block(graph: Graph) -> int | None:
    """The MRA block edge if a Triton tile can be exactly one block (a power of two, at least 16), else None."""
    block = graph.node(attention_of(graph)).attr("approx").options["block"]
    return block if block >= 16 and block & (block - 1) == 0 and block <= 128 else None


# MRA-2's kernel: the online softmax over the selected key blocks, its running state seeded (mode
# `full`) with the low-resolution part of the unselected ones, in base 2 (exp2). Holes: {mode}, {log2e}.
MRA_KERNEL = '''\
@triton.jit
def _mra_fwd(Q, K, V, Out, LowTop, LowNum, LowDen, RowPtr, Cols,
    stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_ve, stride_ob, stride_oh, stride_om, stride_oe,
    H, Nq, N, D, E, nq, selected, sm_scale, eps, GROUP: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr, FULL: tl.constexpr,
    PRECISION: tl.constexpr):
    """MRA-2 ({mode}): query block pid_m against the key blocks its head selected, exp(q.k * scale) on each, plus the low-resolution rest."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = pid_bh // H
    off_h = pid_bh % H
    off_hk = off_h // GROUP  # the key/value head of this query head
    offs_m = pid_m * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    offs_e = tl.arange(0, BLOCK_E)
    Q += off_b * stride_qb + off_h * stride_qh
    K += off_b * stride_kb + off_hk * stride_kh
    V += off_b * stride_vb + off_hk * stride_vh
    q = tl.load(Q + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=(offs_m[:, None] < Nq) & (offs_d[None, :] < D), other=0.0)
    qk_scale = sm_scale * {log2e}  # softmax in base 2: log2(e) folded into the scale
    if FULL:  # the running state starts as the unselected blocks' sums, relative to their max
        row = pid_bh * nq + pid_m
        m_i = tl.full([BLOCK], 0.0, dtype=tl.float32) + tl.load(LowTop + row) * {log2e}  # base 2, as s
        l_i = tl.full([BLOCK], 0.0, dtype=tl.float32) + tl.load(LowDen + row)
        low = tl.load(LowNum + row * E + offs_e, mask=offs_e < E, other=0.0)
        acc = tl.zeros([BLOCK, BLOCK_E], dtype=tl.float32) + low[None, :]
    else:
        m_i = tl.full([BLOCK], float('-inf'), dtype=tl.float32)
        l_i = tl.zeros([BLOCK], dtype=tl.float32)
        acc = tl.zeros([BLOCK, BLOCK_E], dtype=tl.float32)
    ptr = RowPtr + pid_bh * (nq + 1) + pid_m
    for idx in range(tl.load(ptr), tl.load(ptr + 1)):
        offs_n = tl.load(Cols + pid_bh * selected + idx) * BLOCK + tl.arange(0, BLOCK)
        k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                    mask=(offs_n[:, None] < N) & (offs_d[None, :] < D), other=0.0)
        v = tl.load(V + offs_n[:, None] * stride_vn + offs_e[None, :] * stride_ve,
                    mask=(offs_n[:, None] < N) & (offs_e[None, :] < E), other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        s = tl.where(offs_n[None, :] < N, s, float('-inf'))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float('-inf'), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    out = acc / (l_i + eps)[:, None]  # eps relative to the row's largest term, as in MRA-2
    tl.store(Out + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_om + offs_e[None, :] * stride_oe,
             out.to(Out.dtype.element_ty), mask=(offs_m[:, None] < Nq) & (offs_e[None, :] < E))
'''

# Its launcher: selection, CSR and the low-resolution part in torch, then the kernel. Holes: the
# approximation's options, {eps} and {full}.
MRA_LAUNCHER = '''\
def triton_forward(self, q, k, v, ctx, host):
    """Selection, CSR and the low-resolution part in torch (float64 selection, as the reference);
    the selected blocks in the kernel."""
    B, H, Nq, D = q.shape
    N, E = k.shape[2], v.shape[3]
    BLOCK = {block}
    nq, nk = triton.cdiv(Nq, BLOCK), triton.cdiv(N, BLOCK)
    idx, low = ax.mra_selection(q, k, block=BLOCK, blocks_per_row={blocks_per_row}, first={first}, diagonal={diagonal})
    row_ptr, cols = ax.mra_csr(idx, nq, nk)
    low_top, low_num, low_den = ax.mra_low_part(low.float(), v.float(), idx, BLOCK)
    out = torch.empty(B, H, Nq, E, device=q.device, dtype=q.dtype)
    BLOCK_D, BLOCK_E = max(16, triton.next_power_of_2(D)), max(16, triton.next_power_of_2(E))
    precision = 'ieee' if q.dtype == torch.float32 else 'tf32'
    _mra_fwd[(nq, B * H)](q, k, v, out, low_top.contiguous(), low_num.contiguous(), low_den.contiguous(),
        row_ptr, cols, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        H, Nq, N, D, E, nq, idx.shape[-1], ctx.scale, {eps}, H // k.shape[1],
        BLOCK=BLOCK, BLOCK_D=BLOCK_D, BLOCK_E=BLOCK_E, FULL={full}, PRECISION=precision)
    return out
'''


def emit_mra_kernel(w: CodeWriter, graph: Graph) -> None:
    """The MRA-2 kernel and its `triton_forward` (the templates above, holes filled from the options)."""
    opts = graph.node(attention_of(graph)).attr("approx").options
    full = opts["mode"] == "full"
    w.lines_of(MRA_KERNEL.format(mode="full" if full else "sparse", log2e=repr(LOG2E)))
    w.line()
    w.line()
    w.lines_of(MRA_LAUNCHER.format(block=opts["block"], blocks_per_row=opts["blocks_per_row"], first=opts["first"],
                                   diagonal=opts["diagonal"], eps=repr(MRA_EPS), full=full))
