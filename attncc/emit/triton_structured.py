"""Emit the Triton backend of the structured lowerings (fft, fft2, graph, rings).

Each computes num_i = sum_l phi(q_i)_l Y_l[i] with Y_l = T (phi(K)_l o [V, 1]) for a structured
linear map T over key tokens (a 1-D or 2-D convolution, a graph kernel, ring sums). The transforms
run in torch, exactly as in the torch backend (torch.fft, CSR products, cumsum), one group of
features at a time (attncc.rt.kernel_products); everything after them is a generated kernel:

  _contract       fft, fft2, graph: phi(Q) and the contraction, each group's Y read tile by tile
                  (queries x value columns), sums carried across groups in an fp32 buffer, and the
                  normalization num / (den + eps) after the last group.
  _ring_contract  rings: T = the summed-area table (torch.cumsum); the kernel reads the boxes (four
                  corners each), weighs them by the telescoped ring weights g(i, rho) - g(i, rho + 1)
                  and contracts with phi(Q), fused, so no [N, T] or [N, m, e] intermediate is formed.
The generated source names the torch part in the launcher.
"""
from __future__ import annotations

from typing import Callable

from ..ir.graph import Graph, attention_node, attention_of, expr_of
from ..lang.normalizers import NORMALIZERS
from ..plan.select import Plan
from .triton import GROUP_OF, emit_feature_fn, row_feature
from .writer import CodeWriter

def _strides(prefix: str, axes: str) -> str:
    return ", ".join(f"stride_{prefix}{a}" for a in axes)


def _head(w: CodeWriter) -> None:
    """Program ids, offsets, and the carried sums of this query tile."""
    w.line("pid_m = tl.program_id(0)")
    w.line("pid_bh = tl.program_id(1)")
    w.line("off_b = pid_bh // H")
    w.line("off_h = pid_bh % H")
    w.line("off_hk = off_h // GROUP  # the key/value head: the transforms' Y (or Tab) has H // GROUP heads")
    w.line("offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)")
    w.line("offs_e = tl.arange(0, BLOCK_E)")
    w.line("rows = offs_m < Nq")
    w.line("offs_l = tl.arange(0, BLOCK_L)")
    w.line("tile = rows[:, None] & (offs_e[None, :] < E)")
    w.line("Q += off_b * stride_qb + off_h * stride_qh")
    w.line("Acc += pid_bh * Nq * (E + 1)  # [B, H, Nq, E + 1] fp32: num in columns < E, den in column E")
    w.line("num = tl.load(Acc + offs_m[:, None] * (E + 1) + offs_e[None, :], mask=tile, other=0.0)")
    w.line("den = tl.load(Acc + offs_m * (E + 1) + E, mask=rows, other=0.0)")


def _feature_tile(w: CodeWriter, feature: str | None) -> None:
    """p = phi(q)[:, ls] for the tile's queries and BLOCK_L feature columns ls (an elementwise map reads
    those columns of q only)."""
    w.line("ls = l0 + offs_l")
    w.line("cols = rows[:, None] & (ls[None, :] < ML)")
    w.line("p = tl.load(Q + offs_m[:, None] * stride_qm + (L0 + ls)[None, :] * stride_qd, mask=cols, other=0.0)")
    w.line("p = p.to(tl.float32)")
    if feature is not None and feature != "identity":
        w.line(f"p = tl.where(cols, _feature_{feature}(p), 0.0)")
    w.line("block = cols[:, :, None] & (offs_e[None, None, :] < E)")


def _tail(w: CodeWriter, normalize: str) -> None:
    """After the last group: out = num / (den + eps) (rows) or num (none); before it: carry the sums."""
    with w.block("if LAST:"):
        if NORMALIZERS[normalize].divides_by_row_sum:
            w.line("z = den + eps")
            w.line("out = num / tl.where(z == 0.0, 1.0, z)[:, None]  # nothing to normalize: output 0")
        else:
            w.line("out = num")
        w.line("tl.store(Out + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_om + "
               "offs_e[None, :] * stride_od, out.to(Out.dtype.element_ty), mask=tile)")
    with w.block("else:"):
        w.line("tl.store(Acc + offs_m[:, None] * (E + 1) + offs_e[None, :], num, mask=tile)")
        w.line("tl.store(Acc + offs_m * (E + 1) + E, den, mask=rows)")


def _emit_contract(w: CodeWriter, feature: str | None, normalize: str) -> None:
    w.line("@triton.jit")
    with w.block(f"def _contract(Q, Y, Acc, Out, Nq, H, GROUP: tl.constexpr, E, L0, ML, {_strides('q', 'bhmd')},"):
        w.line(f"{_strides('y', 'lbhen')}, {_strides('o', 'bhmd')}, eps,")
        w.line("BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_L: tl.constexpr, LAST: tl.constexpr):")
        w.line('"""num_i += sum_{L0 <= l < L0 + ML} phi(q_i)_l Y_l[:E, i], den_i += ... Y_l[E, i] for one tile of')
        w.line('queries, BLOCK_L features a step; Y [ML, B, H, E + 1, Nq] = T (phi(K)_l o [V, 1]) of one group."""')
        _head(w)
        w.line("Y += off_b * stride_yb + off_hk * stride_yh")
        with w.block("for l0 in range(0, ML, BLOCK_L):"):
            _feature_tile(w, feature)
            w.line("y = Y + ls[None, :] * stride_yl + offs_m[:, None] * stride_yn  # [BLOCK_M, BLOCK_L] pointers")
            w.line("vals = tl.load(y[:, :, None] + offs_e[None, None, :] * stride_ye, mask=block, other=0.0)")
            w.line("num += tl.sum(p[:, :, None] * vals.to(tl.float32), 1)")
            w.line("den += tl.sum(p * tl.load(y + E * stride_ye, mask=cols, other=0.0).to(tl.float32), 1)")
        _tail(w, normalize)
    w.line()


def _emit_ring_contract(w: CodeWriter, feature: str | None, normalize: str, metric: str) -> None:
    w.line("@triton.jit")
    with w.block("def _corner(t, cell, offs_e, E, cols, block, stride_tc, stride_te):"):
        w.line('"""The tables t (one per feature column) at one cell per query row: [rows, features, E] value')
        w.line('columns and [rows, features] ones column."""')
        w.line("at = t[None, :] + cell[:, None] * stride_tc")
        w.line("return (tl.load(at[:, :, None] + offs_e[None, None, :] * stride_te, mask=block, other=0.0).to(tl.float32),")
        w.line("        tl.load(at + E * stride_te, mask=cols, other=0.0).to(tl.float32))")
    w.line()
    w.line("@triton.jit")
    # the grid's shape and the ring count are fixed per module and length: constexprs (the loop bound and
    # the divisions by the width fold)
    with w.block("def _ring_contract(Q, Tab, G, Acc, Out, Nq, H, GROUP: tl.constexpr, E, L0, ML, T: tl.constexpr, "
                 f"width: tl.constexpr, R: tl.constexpr, C: tl.constexpr, {_strides('q', 'bhmd')},"):
        w.line(f"{_strides('t', 'lbhce')}, {_strides('g', 'bhmr')}, {_strides('o', 'bhmd')}, eps,")
        w.line("BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_L: tl.constexpr, LAST: tl.constexpr):")
        w.line('"""num_i += sum_l phi(q_i)_l y_l(i) (den_i: the ones column) for one tile of queries, with')
        w.line("y_l(i) = sum_{rho < T} (g(i, rho) - g(i, rho + 1)) box_i(rho) + g(i, T) total: box_i(rho) sums the keys")
        w.line(f"within {metric} distance rho of i, four reads of the summed-area table Tab [ML, B, H, (R + 1) (C + 1), E + 1]")
        w.line('(entry (A, B): keys with a < A and b < B); G [B, H, Nq, T + 1] holds g(i, rho). BLOCK_L features a step."""')
        _head(w)
        w.line("Tab += off_b * stride_tb + off_hk * stride_th")
        w.line("G += off_b * stride_gb + off_h * stride_gh + offs_m * stride_gm")
        w.line("r = offs_m // width  # token indices are >= 0: truncation is floor")
        w.line("c = offs_m % width")
        if metric == "chebyshev":
            w.line("a, b = r, c  # Chebyshev balls are boxes of the grid itself")
        else:
            w.line("a, b = r + c, r - c + width - 1  # |dr| + |dc| = max(|da|, |db|): Manhattan balls are boxes here")
        w.line("total = (R + 1) * (C + 1) - 1 + offs_m * 0  # the entry holding every key")
        w.line("g_top = tl.load(G + T * stride_gr, mask=rows, other=0.0).to(tl.float32)")
        with w.block("for l0 in range(0, ML, BLOCK_L):"):
            _feature_tile(w, feature)
            w.line("t = Tab + ls * stride_tl")
            w.line("all_n, all_z = _corner(t, total, offs_e, E, cols, block, stride_tc, stride_te)")
            w.line("y = g_top[:, None, None] * all_n")
            w.line("yz = g_top[:, None] * all_z")
            with w.block("for rho in range(0, T):"):
                w.line("g_r = tl.load(G + rho * stride_gr, mask=rows, other=0.0).to(tl.float32)")
                w.line("wr = g_r - tl.load(G + (rho + 1) * stride_gr, mask=rows, other=0.0).to(tl.float32)")
                w.line("a0 = tl.minimum(tl.maximum(a - rho, 0), R) * (C + 1)")
                w.line("a1 = tl.minimum(tl.maximum(a + rho + 1, 0), R) * (C + 1)")
                w.line("b0 = tl.minimum(tl.maximum(b - rho, 0), C)")
                w.line("b1 = tl.minimum(tl.maximum(b + rho + 1, 0), C)")
                for corner in ("11", "01", "10", "00"):
                    w.line(f"n{corner}, z{corner} = _corner(t, a{corner[0]} + b{corner[1]}, offs_e, E, cols, block, "
                           "stride_tc, stride_te)")
                w.line("y += wr[:, None, None] * (n11 - n01 - n10 + n00)")
                w.line("yz += wr[:, None] * (z11 - z01 - z10 + z00)")
            w.line("num += tl.sum(p[:, :, None] * y, 1)")
            w.line("den += tl.sum(p * yz, 1)")
        _tail(w, normalize)
    w.line()


def emit_structured(w: CodeWriter, graph: Graph, plan: Plan, torch_part: str,
                    transform: Callable[[CodeWriter], None], ring_metric: str | None = None) -> str:
    """Kernels and `triton_forward` of a structured lowering; returns the description of the lowering.
    torch_part names what runs in torch; transform(w) writes the launcher lines that define
    `transform` and `cells` (and, for rings, `width`, `geo` and `g`); ring_metric: the rings' box kernel."""
    ops = graph.operands(attention_of(graph))
    normalize, eps = attention_node(graph).attr("normalize"), attention_node(graph).attr("eps")
    fq, fk = row_feature(expr_of(graph, ops[0])), row_feature(expr_of(graph, ops[1]))
    if fq not in (None, "identity"):
        emit_feature_fn(w, fq)
    rings = ring_metric is not None
    if rings:
        _emit_ring_contract(w, fq, normalize, ring_metric)
    else:
        _emit_contract(w, fq, normalize)
    kernel = "_ring_contract" if rings else "_contract"
    with w.block("def triton_forward(self, q, k, v, ctx, host):"):
        w.line(f"# torch: {torch_part},")
        w.line("# one group of features at a time (rt.kernel_products);")
        w.line(f"# Triton ({kernel}): phi(Q), {'the box reads and ring weights, ' if rings else ''}"
               "the contraction and the normalization.")
        w.line("B, H, Nq, _ = q.shape")
        w.line("N, E, Hkv = k.shape[2], v.shape[3], k.shape[1]  # the transforms run over the Hkv key/value heads")
        w.line("out = torch.empty(B, H, Nq, E, device=q.device, dtype=q.dtype)")
        w.line("acc = torch.zeros(B, H, Nq, E + 1, device=q.device, dtype=torch.float32)")
        w.line("BLOCK_M = 64 if autotune.on_gpu(q) else 32")
        w.line("BLOCK_E = max(16, triton.next_power_of_2(E))")
        w.line("BLOCK_L = rt.GPU_FEATURE_TILE if autotune.on_gpu(q) else rt.CPU_FEATURE_TILE")
        w.line("# the [BLOCK_M, BLOCK_E] fp32 sums and value tile: 4 warps spilled at E = 128 (docs/compile_gate.md)")
        w.line("num_warps = 8 if BLOCK_E > 64 else 4")
        transform(w)
        w.line(f"pk = {f'host.feature_{fk}(k)' if fk not in (None, 'identity') else 'k'}")
        w.line("budget = rt.GPU_GROUP_BUDGET if q.is_cuda else rt.GROUP_BUDGET")
        w.line("grid = (triton.cdiv(Nq, BLOCK_M), B * H)")
        with w.block("for l0, y in rt.kernel_products(pk, v, transform, cells=cells, budget=budget):"):
            extra = "g.shape[-1] - 1, width, geo.rows, geo.cols, " if rings else ""
            tables = "*y.stride(), *g.stride()" if rings else "*y.stride()"
            w.line(f"{kernel}[grid](q, y, {'g, ' if rings else ''}acc, out, Nq, H, {GROUP_OF}, E, l0, y.shape[0], "
                   f"{extra}*q.stride(),")
            w.line(f"    {tables}, *out.stride(), {eps!r}, BLOCK_M=BLOCK_M, BLOCK_E=BLOCK_E, BLOCK_L=BLOCK_L,")
            w.line("    LAST=l0 + y.shape[0] == pk.shape[-1], num_warps=num_warps)")
        w.line("return out")
    what = "box reads, ring weights and contraction" if rings else "contraction"
    return f"{plan.lowering}: Triton {what} kernel ({kernel}); in torch: {torch_part}"
