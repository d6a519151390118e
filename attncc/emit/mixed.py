"""Emit FLASH mixed chunk attention (lowering `mixed_chunk`, attncc/analysis/chunks.py) in both backends.

torch:  local(qc, kc, i, j, h, ctx, keep) on [B, H, G, c, c] diagonal blocks, local_mask, one
        amplitude function per linear term, linear_terms(q, k, ctx), chunk_size(ctx); the forward
        calls rt.mixed_chunk_attention.
triton: `_mixed_local`, grid (cdiv(Nq, BLOCK_M), B*H): the key tiles of the chunks its queries
        lie in, weights summed into accumulators seeded with the linear terms' numerator and row
        sums, which torch computes first (chunk-state einsums and cumsums, O(N m e)).
"""
from __future__ import annotations

from ..analysis.chunks import MixedForm
from ..ir.graph import Graph, attention_node
from ..lang.normalizers import NORMALIZERS
from ..plan.select import Plan
from .exprs import TorchExpr, brief, name_dots
from .let import LetScope, let_expr
from .triton import (Kernel, KernelExpr, emit_feature_fn, kernel_common_args, launch_common, launcher_head,
                     load_rows, query_tile, row_feature, size_arg, sizes_used)
from .rows import tile_dots
from .triton_helpers import HELPERS
from .writer import CodeWriter


def emit_mixed_torch(w: CodeWriter, graph: Graph, plan: Plan) -> None:
    from .torch import row_through_map, emit_features, emit_pair_holes, feature_maps_used
    form = plan.attrs["mixed"]
    emit_features(w, feature_maps_used(form.local, *(t.dot for t in form.linear)))
    ex = TorchExpr()
    with w.block("def chunk_size(ctx):"):
        w.line(f'"""c: {brief(form.chunk)}"""')
        w.line(f"return int({let_expr(w, ex, form.chunk)})")
    w.line()
    emit_pair_holes(w, "local", f"weight inside a chunk: {brief(form.local)}", form.local, "local_mask",
                    f"inside a chunk, also: {brief(form.local_mask)}" if form.local_mask is not None else "",
                    form.local_mask)
    for n, t in enumerate(form.linear):
        if t.amplitude is None:
            continue
        with w.block(f"def amplitude{n}(ctx):"):
            w.line(f'"""scale of linear term {n}: {brief(t.amplitude)}"""')
            w.line("i = j = torch.zeros((1, 1, 1, 1), dtype=torch.int32)")
            w.line("h = torch.arange(ctx.H, dtype=torch.int32).view(1, ctx.H, 1, 1)")
            w.line(f"return rt.as_4d({let_expr(w, ex, t.amplitude)}, ctx.dtype)")
        w.line()
    with w.block("def linear_terms(q, k, ctx):"):
        w.line('"""(phi(Q), psi(K), scale, key set) of each cross-chunk kernelized term."""')
        w.line("return [")
        for n, t in enumerate(form.linear):
            amp = f"amplitude{n}(ctx).to(q.device)" if t.amplitude is not None else "None"
            w.line(f"    ({row_through_map(t.dot.args[0], 'q')}, {row_through_map(t.dot.args[1], 'k')}, {amp}, {t.across!r}),  # {t.describe()}")
        w.line("]")
    w.line()
    att = attention_node(graph)
    with w.block("def forward_torch(self, q, k, v, ctx):"):
        mask = "local_mask" if form.local_mask is not None else "None"
        w.line(f"return rt.mixed_chunk_attention(q, k, v, ctx, chunk=chunk_size(ctx), local=local, mask={mask},")
        w.line(f"                                linear=linear_terms(q, k, ctx), normalize={att.attr('normalize')!r}, "
               f"eps={att.attr('eps')!r})")


def emit_mixed_triton(w: CodeWriter, graph: Graph, plan: Plan) -> str:
    """The chunk-local kernel `_mixed_local` (with the helpers and feature maps it calls) and its launcher."""
    form = plan.attrs["mixed"]
    kernel = Kernel([form.local, form.local_mask], {n: len(p.shape) for n, p in graph.signature.params.items()})
    att = attention_node(graph)
    for helper in kernel.helpers:
        w.lines_of(HELPERS[helper])
        w.line()
    dots = name_dots(form.local)
    for fm in sorted({row_feature(side) for d in dots for side in d.args} - {None, "identity"}):
        emit_feature_fn(w, fm)
    emit_mixed_local_kernel(w, form, kernel, dots, NORMALIZERS[att.attr("normalize")].divides_by_row_sum)
    w.line()
    emit_mixed_launcher(w, kernel, att.attr("eps"))
    return "mixed chunk kernel (local relu^2-style blocks; cross-chunk linear terms in torch)"


def emit_mixed_local_kernel(w: CodeWriter, form: MixedForm, kernel: Kernel, dots: dict,
                            divides_by_row_sum: bool) -> None:
    """`_mixed_local`: one query tile over the key tiles of its chunks, summed onto the linear terms' sums."""
    ex = KernelExpr(dots, {s: size_arg(s) for s in sizes_used(form.local, form.local_mask)})
    extra = "".join(f"{a}, " for a in kernel.arg_names())
    w.line("@triton.jit")
    with w.block(f"def _mixed_local({kernel_common_args()}, {extra}Num0, Den0, chunk: tl.constexpr, sm_scale, eps,"):
        w.line("BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,")
        w.line("PRECISION: tl.constexpr):")
        w.line(f'"""Chunk-local weights {brief(form.local)} over the key tiles of the chunks of this query tile,')
        w.line('added to the linear terms\' numerator Num0 and row sums Den0 (fp32, [B*H, Nq, E] and [B*H, Nq])."""')
        query_tile(w, dots)
        w.line("rows = (offs_m[:, None] < Nq) & (offs_e[None, :] < E)")
        w.line("acc = tl.load(Num0 + pid_bh * Nq * E + offs_m[:, None] * E + offs_e[None, :], mask=rows, other=0.0)")
        w.line("l_i = tl.load(Den0 + pid_bh * Nq + offs_m, mask=offs_m < Nq, other=0.0)")
        w.line("# keys of the chunks that this tile's queries lie in (token indices are >= 0: // is floor)")
        w.line("lo = (pid_m * BLOCK_M) // chunk * chunk // BLOCK_N * BLOCK_N")
        w.line("hi = tl.minimum(((tl.minimum(pid_m * BLOCK_M + BLOCK_M, Nq) - 1) // chunk + 1) * chunk, N)")
        with w.block("for start_n in range(lo, hi, BLOCK_N):"):
            w.line("offs_n = start_n + tl.arange(0, BLOCK_N)")
            tile_dots(w, dots)
            scope = LetScope(ex)
            scope.bind(w, [form.local, form.local_mask])
            w.line(f"s = {scope(form.local)}")
            valid = "(offs_n[None, :] < N) & (offs_m[:, None] // chunk == offs_n[None, :] // chunk)"
            if form.local_mask is not None:
                valid += f" & ({scope(form.local_mask)})"
            w.line(f"valid = {valid}")
            load_rows(w, "v", "V", "offs_n", "N", "offs_e", "E")
            w.line("p = tl.where(valid, s * 1.0, 0.0)  # unnormalized weights, kept in fp32")
            w.line("l_i += tl.sum(p, 1)")
            w.line("acc += tl.dot(p, v.to(tl.float32), input_precision=PRECISION)")
        if divides_by_row_sum:
            w.line("z = l_i + eps")
            w.line("acc = acc / tl.where(z == 0.0, 1.0, z)[:, None]  # nothing to normalize: output 0")
        w.line("tl.store(Out + offs_m[:, None] * stride_om + offs_e[None, :] * stride_od, acc.to(Out.dtype.element_ty), "
               "mask=rows)")


def emit_mixed_launcher(w: CodeWriter, kernel: Kernel, eps: float) -> None:
    """`triton_forward`: the cross-chunk linear terms in torch, then `_mixed_local` on their sums."""
    with w.block("def triton_forward(self, q, k, v, ctx, host):"):
        launcher_head(w)
        w.line("chunk = host.chunk_size(ctx)")
        w.line("if chunk < 1:")
        w.line("    raise ValueError(f'chunk size must be >= 1, got {chunk}')")
        w.line("# The cross-chunk linear terms run in torch (chunk-state einsums, cumsum across chunks;")
        w.line("# O(N m e)); their numerator and row sums seed the kernel's accumulators.")
        w.line("num0, den0 = rt.mixed_linear_sums(q, k, v, chunk=chunk, linear=host.linear_terms(q, k, ctx), "
               "dtype=torch.float32)")
        w.line("num0, den0 = num0.float().contiguous(), den0.float().contiguous()")
        w.line("grid = (triton.cdiv(Nq, BLOCK_M), B * H)")
        w.line("# fp32 inputs (dots on FMA units, operands in registers): 64 x 64 tiles spilled 1.3-14 KB and")
        w.line("# overflowed sm_80's shared memory at d = 128; the tiled lowering's fp32 tiles (docs/compile_gate.md)")
        with w.block("if q.dtype == torch.float32 and autotune.on_gpu(q):"):
            w.line("BLOCK_M, BLOCK_N = 32, (32 if max(BLOCK_D, BLOCK_E) * 4 <= 256 else 16)")
        w.line("# 64 x 64 tiles with fp32 feature rows: 4 warps spilled at d = 128 on sm_80 (docs/compile_gate.md)")
        w.line("num_warps = 8 if max(BLOCK_D, BLOCK_E) > 64 else 4")
        vals = "".join(f"{v}, " for v in kernel.arg_values())
        w.line(f"_mixed_local[grid]({launch_common()}, {vals}num0, den0, chunk, ctx.scale, {eps!r},")
        w.line("    BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, BLOCK_E=BLOCK_E, PRECISION=precision, "
               "num_warps=num_warps)")
        w.line("return out")


def emit_pool(w: CodeWriter, graph: Graph) -> None:
    """pool_kv(self, k, v, ctx): ContextPool of k and/or v, run in torch before either backend."""
    pool = attention_node(graph).attr("pool")
    w.line()
    with w.block("def pool_kv(self, k, v, ctx):"):
        w.line(f'"""{pool.describe()} (attncc/lang/pool.py)."""')
        w.line("# runs in torch before the torch or Triton attention: banded shifted sums over the (2R + 1)^dims offsets (no kernel)")
        w.line(f"return rt.context_pool(k, v, ctx.params['pool_head'], ctx.params['pool_bias'], sigma={pool.sigma!r}, "
               f"width={pool.width!r}, targets={pool.targets!r})")
