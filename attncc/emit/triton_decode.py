"""Emit split-K (flash-decoding) Triton kernels: few queries against many keys.

`_attn_fwd_split`, grid (cdiv(Nq, BLOCK_M), B*H, SPLITS): the keys that query tile pid_m may see
(its band) are cut into SPLITS runs of whole key tiles; program pid_s runs the tiled kernel's online
softmax over its run and stores its normalized output O_s and log-sum-exp L_s (-inf: no visible key).
`_attn_merge`, grid (Nq, B*H): L = log sum_s exp(L_s), out = sum_s exp(L_s - L) O_s (attncc/rt/decode.py
derives it), and L as the row statistic that the tiled backward kernels read. A softmax sink is
merged last, in torch, as one more split of output 0 (rt.merge_sink): one pass over the few rows.
"""
from __future__ import annotations

from ..ir.graph import Graph, attention_node, attention_of
from ..passes.quadratic import quadratic_form
from ..plan.cost import DECODE_BLOCK_M
from ..plan.select import Plan
from .exprs import brief, name_dots
from .exprs import band_bounds
from .tiles import BAND_LIMIT, Stage
from .triton import (GROUP_OF, LN2, LOG2E, ONLINE_SOFTMAX_UPDATE, RUNNING_STATE, SINK_ROWS, Kernel, KernelExpr,
                     kernel_preamble, key_tile_weights, launcher_head, log2_scores, query_tile, size_arg, sizes_used,
                     tuned_launch)
from .writer import CodeWriter

MERGE_SPLITS = 16  # splits merged per step of `_attn_merge`

MERGE_KERNEL = '''\
@triton.jit
def _attn_merge(Part, Lse, Out, Stat, Nq, H, E, SPLITS, stride_pb, stride_ph, stride_pm, stride_ps, stride_pe,
                stride_ob, stride_oh, stride_om, stride_od, BLOCK_S: tl.constexpr, BLOCK_E: tl.constexpr):
    """One query row's splits merged: L = log sum_s exp(L_s), out = sum_s exp(L_s - L) O_s."""
    row = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = pid_bh // H
    off_h = pid_bh % H
    Part += off_b * stride_pb + off_h * stride_ph + row * stride_pm
    Lse += (pid_bh * Nq + row) * SPLITS
    offs_e = tl.arange(0, BLOCK_E)
    top = tl.full([BLOCK_S], float('-inf'), dtype=tl.float32)
    for s0 in range(0, SPLITS, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        top = tl.maximum(top, tl.load(Lse + offs_s, mask=offs_s < SPLITS, other=float('-inf')))
    top_row = tl.max(top, 0)
    top_row = tl.where(top_row == float('-inf'), 0.0, top_row)  # no split saw a key
    total = tl.zeros([BLOCK_S], dtype=tl.float32)
    acc = tl.zeros([BLOCK_E], dtype=tl.float32)
    for s0 in range(0, SPLITS, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        share = tl.exp(tl.load(Lse + offs_s, mask=offs_s < SPLITS, other=float('-inf')) - top_row)
        part = tl.load(Part + offs_s[:, None] * stride_ps + offs_e[None, :] * stride_pe,
                       mask=(offs_s[:, None] < SPLITS) & (offs_e[None, :] < E), other=0.0)
        total += share
        acc += tl.sum(share[:, None] * part, 0)
    row_total = tl.sum(total, 0)
    out = acc / tl.where(row_total == 0.0, 1.0, row_total)  # no visible key: output 0
    tl.store(Out + off_b * stride_ob + off_h * stride_oh + row * stride_om + offs_e * stride_od,
             out.to(Out.dtype.element_ty), mask=offs_e < E)
    tl.store(Stat + pid_bh * Nq + row, top_row + tl.log(row_total))  # -inf: no visible key
'''


def split_key_loop(w: CodeWriter) -> str:
    """The loop header over this program's run of the key tiles that query tile pid_m may see."""
    w.line("pid_s = tl.program_id(2)")
    w.line("# keys this query tile may see (the band; all of them when unbounded), cut into SPLITS runs of whole tiles")
    w.line("lo = tl.maximum(pid_m * BLOCK_M - band_hi, 0) // BLOCK_N * BLOCK_N")
    w.line("hi = tl.minimum(pid_m * BLOCK_M + BLOCK_M - band_lo, N)")
    w.line("run = tl.cdiv(tl.cdiv(tl.maximum(hi - lo, 0), SPLITS), BLOCK_N) * BLOCK_N")
    w.line("start = lo + pid_s * run")
    return "for start_n in range(start, tl.minimum(start + run, hi), BLOCK_N):"


def emit_split_kernel(w: CodeWriter, graph: Graph, plan: Plan, kernel: Kernel) -> None:
    """`_attn_fwd_split`: one (query tile, head, split) over its run of key tiles; O_s and L_s stored."""
    scores, mask = quadratic_form(graph, attention_of(graph))
    dots = name_dots(scores)
    ex = KernelExpr(dots, {s: size_arg(s) for s in sizes_used(scores, mask)})
    extra = "".join(f"{a}, " for a in kernel.arg_names())
    w.line("@triton.jit")
    with w.block("def _attn_fwd_split(Q, K, V, Out, Nq, N, H, D, E, GROUP: tl.constexpr,"):
        w.line("stride_qb, stride_qh, stride_qm, stride_qd,")
        w.line("stride_kb, stride_kh, stride_km, stride_kd, stride_vb, stride_vh, stride_vm, stride_vd,")
        w.line(f"stride_ob, stride_oh, stride_om, stride_os, stride_od, {extra}Lse, sm_scale, band_lo, band_hi, SPLITS,")
        w.line("BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,")
        w.line("PRECISION: tl.constexpr):")
        w.line(f'"""softmax over one split of the keys; logits = {brief(scores)}; mask = {brief(mask) if mask else "none"}.')
        w.line('Out: the splits\' outputs [B, H, Nq, SPLITS, E] (fp32), Lse: their log-sum-exps [B*H, Nq, SPLITS]."""')
        query_tile(w, dots)
        w.lines_of(RUNNING_STATE)
        w.line(f"qk_scale = sm_scale * {LOG2E!r}  # softmax in base 2: log2(e) folded into the scale")
        with w.block(split_key_loop(w)):
            key_tile_weights(w, Stage("", None, True, "a split's key tiles"), dots, ex, scores, mask,
                             log2_scores(scores))
            w.lines_of(ONLINE_SOFTMAX_UPDATE)
        w.line("l_safe = tl.where(l_i == 0.0, 1.0, l_i)")
        w.line("tl.store(Out + offs_m[:, None] * stride_om + pid_s * stride_os + offs_e[None, :] * stride_od, "
               "acc / l_safe[:, None], mask=(offs_m[:, None] < Nq) & (offs_e[None, :] < E))")
        w.line(f"tl.store(Lse + (pid_bh * Nq + offs_m) * SPLITS + pid_s, (m_i + tl.math.log2(l_safe)) * {LN2!r}, "
               "mask=offs_m < Nq)  # natural log; -inf: no visible key")
    w.line()


def band_line(w: CodeWriter, plan: Plan) -> None:
    """Both band bounds as run-time arguments of the split kernel (the splits are cut inside the band);
    an unbounded side is one no tile reaches, and both are saturated to the offsets that occur."""
    lo, hi = band_bounds(plan.mask)
    w.line(f"band_lo, band_hi = {lo or -BAND_LIMIT}, {hi or BAND_LIMIT}  # keys j with band_lo <= i - j <= band_hi")
    w.line("band_lo, band_hi = (min(max(bound, -N), Nq) for bound in (band_lo, band_hi))  # saturated")


def emit_decode_launcher(w: CodeWriter, plan: Plan, kernel: Kernel, sink: bool) -> None:
    """`triton_forward`: the split kernel with the splits that fill the GPU, then the merge (and the sink's)."""
    if sink:
        w.lines_of(SINK_ROWS)
        w.line()
    with w.block(f"def triton_forward(self, q, k, v, ctx, host, stat=None{', sink=None' if sink else ''}):"):
        launcher_head(w, fixed_blocks=False)
        w.line("stat = torch.empty(B, H, Nq, device=q.device, dtype=torch.float32) if stat is None else stat")
        if sink:
            w.line("sink = sink_rows(host, q, ctx) if sink is None else sink")
        band_line(w, plan)
        w.line(f"BLOCK_M = {DECODE_BLOCK_M}")
        w.line("tiles = triton.cdiv(Nq, BLOCK_M)")
        w.line("keys = min(N, BLOCK_M + band_hi - band_lo)  # the most keys one query tile sees")
        vals = "".join(f"{v}, " for v in kernel.arg_values())
        w.line()
        with w.block("def launch(BLOCK_N, num_warps, num_stages):"):
            w.line("splits = rt.decode_splits(B * H * tiles, keys, BLOCK_N, rt.multiprocessors(q.device))")
            w.line("part = torch.empty(B, H, Nq, splits, E, device=q.device, dtype=torch.float32)")
            w.line("lse = torch.empty(B, H, Nq, splits, device=q.device, dtype=torch.float32)")
            w.line(f"_attn_fwd_split[(tiles, B * H, splits)](q, k, v, part, Nq, N, H, D, E, {GROUP_OF}, *q.stride(), "
                   "*k.stride(), *v.stride(),")
            w.line(f"    *part.stride(), {vals}lse, ctx.scale, band_lo, band_hi, splits,")
            w.line("    BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, BLOCK_E=BLOCK_E, PRECISION=precision,")
            w.line("    num_warps=num_warps, num_stages=num_stages)")
            w.line("_attn_merge[(Nq, B * H)](part, lse, out, stat, Nq, H, E, splits, *part.stride()[:4], part.stride(4),")
            w.line(f"    *out.stride(), BLOCK_S={MERGE_SPLITS}, BLOCK_E=BLOCK_E)")
            if sink:  # in place: every autotune candidate's launch writes out and stat afresh
                w.line("merged, total = rt.merge_sink(out.float(), stat, sink)  # the sink: one more split of output 0")
                w.line("out.copy_(merged)")
                w.line("stat.copy_(total)")
        w.line()
        tuned_launch(w, plan.entry.autotune_kind)


def emit_decode_triton(w: CodeWriter, graph: Graph, plan: Plan) -> str:
    """The split and merge kernels and their launcher; returns their description."""
    kernel = kernel_preamble(w, graph)
    emit_split_kernel(w, graph, plan, kernel)
    w.lines_of(MERGE_KERNEL)
    w.line()
    emit_decode_launcher(w, plan, kernel, attention_node(graph).attr("sink") is not None)
    return "split-K decoding kernels (online softmax per split, merged by log-sum-exp)"
