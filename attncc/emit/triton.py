"""Emit the Triton backend: fixed kernel skeletons with generated holes, plus their launchers.

Skeletons:
  tiled           grid (cdiv(Nq, BLOCK_M), B*H); loops over the key tiles inside the proven band or
                  the block layout, full tiles without the mask (emit/tiles.py); softmax: online
                  max/sum in base 2 (exp2, log2(e) folded into the scale; rows with no visible key
                  give 0); rows/none: running sums.
  linear, linear_chunked   the kernelized skeletons: see triton_linear.py.
  fft, fft2, graph, rings   the transforms in torch, the contraction (and ring box reads) in Triton:
                  see triton_structured.py.
Holes: the score/weight and mask expressions over tiles (i = offs_m[:, None], j = offs_n[None, :],
h = off_h, hk = off_hk), feature maps (fp32 mapped rows dotted in steps of ROW_CHUNK columns, see
rows.chunked_rows), table loads (indices clamped into range). Declared sizes and
band bounds are `tl.constexpr` (fixed per module and size), so loop bounds and divisions by them fold.
Grouped-query attention: k and v have Hkv = H // GROUP heads (GROUP a constexpr, 1 folding away);
query head off_h reads key/value head off_hk = off_h // GROUP, with no expanded copy.
Backward: generated kernels where triton_backward.py has them, else recomputation through the torch
backend's autograd.
"""
from __future__ import annotations

import math

from ..lang.expr import RUNTIME_SIZES, TExpr
from ..lang.features import FEATURE_MAPS
from ..ir.graph import Graph, attention_node, attention_of
from ..lang.normalizers import NORMALIZERS, Normalizer
from ..passes.quadratic import quadratic_form
from ..plan.select import Plan
from .exprs import TritonExpr, brief, division_helper, key, name_dots, shift_arg
from .let import LetScope
from .rows import chunked_rows, descriptor_rows, load_rows, query_rows, row_chunk_line, row_feature, tile_dots
from .triton_helpers import HELPERS, helpers_of
from .tiles import LAYOUT_ARGS, Stage, band_constexprs, band_launch, band_line, key_stages
from .writer import CodeWriter

class KernelExpr(TritonExpr):
    """TritonExpr with table loads: params P_<name>, inputs I_<name> (batch stride I_<name>_sb)."""

    def node(self, t: TExpr, args: list[str]) -> str:
        if t.op in ("param", "input"):
            base = ("P_" if t.op == "param" else "I_") + t.value
            return f"tl.load({base} + {self.offset(t, args)}).to(tl.float32)" if t.type == "float" else \
                f"tl.load({base} + {self.offset(t, args)})"
        return super().node(t, args)

    def offset(self, t: TExpr, args: list[str] | None = None) -> str:
        """Element offset of a table lookup (index code `args`, else printed here), every index clamped."""
        base = ("P_" if t.op == "param" else "I_") + t.value
        args = [self(x) for x in t.args] if args is None else args
        terms = [f"tl.minimum(tl.maximum({x}, 0), {base}_n{d} - 1) * {base}_s{d}" for d, x in enumerate(args)]
        batch = f"off_b * {base}_sb + " if t.op == "input" else ""
        return batch + " + ".join(terms)


def _tables(*exprs: TExpr | None) -> tuple[list[str], list[tuple[str, int]]]:
    params, inputs = [], []
    for t in exprs:
        for e in (t.walk() if t is not None else ()):
            if e.op == "param" and e.value not in params:
                params.append(e.value)
            if e.op == "input" and e.value not in [n for n, _ in inputs]:
                inputs.append((e.value, len(e.args)))
    return params, inputs


def sizes_used(*exprs: TExpr | None) -> list[str]:
    out = []
    for t in exprs:
        for e in (t.walk() if t is not None else ()):
            if e.op in ("size", "rsize") and e.value not in out:
                out.append(e.value)
    return out


def size_arg(name: str) -> str:
    """Run-time sizes are kernel arguments of their own name; declared sizes are S_<name>."""
    return name if name in RUNTIME_SIZES else "S_" + name


def pair_lookup(e: TExpr) -> bool:
    """Whether e is a table lookup whose index reads both token indices (a relative-position table, an
    input mask): a [BLOCK_M, BLOCK_N] gather per tile, which the largest tiles spill or overflow with."""
    if e.op not in ("param", "input"):
        return False
    return {"i", "j"} <= {x.value for a in e.args for x in a.walk() if x.op == "var"}


class Kernel:
    """Shared pieces of every kernel: table/size arguments and their launcher values."""

    def __init__(self, exprs: list[TExpr | None], param_dims: dict):
        self.params, self.inputs = _tables(*exprs)
        self.sizes = [s for s in sizes_used(*exprs) if s not in RUNTIME_SIZES]
        self.divisors = [s for s in self.sizes if any(division_helper(e) and e.args[1].value == s
                                                      for t in exprs if t is not None for e in t.walk())]
        self.param_dims = param_dims
        self.helpers = sorted({h for t in exprs if t is not None for h in helpers_of(t)})
        self.pair_lookups = any(pair_lookup(e) for t in exprs if t is not None for e in t.walk())

    def arg_names(self) -> list[str]:
        names = []
        for p in self.params:
            names += [f"P_{p}"] + [f"P_{p}_n{d}" for d in range(self.param_dims[p])] + \
                     [f"P_{p}_s{d}" for d in range(self.param_dims[p])]
        for name, nd in self.inputs:
            names += [f"I_{name}", f"I_{name}_sb"] + [f"I_{name}_n{d}" for d in range(nd)] + \
                     [f"I_{name}_s{d}" for d in range(nd)]
        names += [f"S_{s}: tl.constexpr" for s in self.sizes]  # fixed per module and size: they fold
        names += [f"{shift_arg('S_' + s)}: tl.constexpr" for s in self.divisors]
        return names

    def arg_values(self) -> list[str]:
        values = []
        for p in self.params:
            t = f"ctx.params[{key(p)}]"
            nd = self.param_dims[p]
            values += [t] + [f"{t}.shape[{d}]" for d in range(nd)] + [f"{t}.stride({d})" for d in range(nd)]
        for name, nd in self.inputs:
            t = f"ctx.inputs[{key(name)}]"
            values += [t, f"({t}.stride(0) if {t}.dim() > {nd} else 0)"]
            values += [f"{t}.shape[{t}.dim() - {nd - d}]" for d in range(nd)]
            values += [f"{t}.stride({t}.dim() - {nd - d})" for d in range(nd)]
        values += [f"ctx.sizes[{key(s)}]" for s in self.sizes]
        values += [f"triton_ops.pow2_shift(ctx.sizes[{key(s)}])" for s in self.divisors]
        return values


def emit_feature_fn(w: CodeWriter, name: str) -> None:
    w.line("@triton.jit")
    with w.block(f"def _feature_{name}(x):"):
        w.line(f'"""{FEATURE_MAPS[name].doc}"""')
        w.line(f"return {FEATURE_MAPS[name].triton_expr}")
    w.line()


def kernel_common_args(out: bool = True) -> str:
    """Q, K, V (and Out, unless the kernel writes no output), the lengths and dims, GROUP (query heads
    per key/value head: H // Hkv, 1 without grouped-query attention; a constexpr, so 1 folds away),
    their strides. K and V have H // GROUP heads."""
    return (f"Q, K, V, {'Out, ' if out else ''}Nq, N, H, D, E, GROUP: tl.constexpr, "
            "stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_km, stride_kd, "
            "stride_vb, stride_vh, stride_vm, stride_vd" +
            (", stride_ob, stride_oh, stride_om, stride_od" if out else ""))


def launch_common(out: bool = True) -> str:
    return (f"q, k, v, {'out, ' if out else ''}Nq, N, H, D, E, {GROUP_OF}, *q.stride(), *k.stride(), *v.stride()"
            + (", *out.stride()" if out else ""))


# the launchers' GROUP: query heads per key/value head (q and k may differ in heads only by it); every
# launcher has H = q.shape[1] and Hkv = k.shape[1] (launcher_head)
GROUP_OF = "H // Hkv"


def program_prologue(w: CodeWriter, per_bh_only: bool = False, out: bool = True, value_axis: int | None = None,
                     feature_axis: int | None = None, per_kv_head: bool = False) -> None:
    """Program ids, the (b, h) offsets of the tensors and the head columns; with `value_axis`, the
    program owns the value columns [pid_e BLOCK_E, (pid_e + 1) BLOCK_E) of that grid axis; with
    `feature_axis`, the head (feature) columns [pid_f BLOCK_D, (pid_f + 1) BLOCK_D) of that one. Query head
    off_h reads key/value head off_hk = off_h // GROUP. per_kv_head: the grid walks (b, kv head);
    Q_group and Out_group point at the group's first query head, and the kernel sets Q and Out per
    member, afresh from them (not incremented: no pointer is carried across the group loop)."""
    if not per_bh_only:
        w.line("pid_m = tl.program_id(0)")
        w.line("pid_bh = tl.program_id(1)")
    else:
        w.line("pid_bh = tl.program_id(0)")
    if per_kv_head:
        w.line("off_b = pid_bh // (H // GROUP)")
        w.line("off_hk = pid_bh % (H // GROUP)  # the key/value head; its query heads: off_hk GROUP + g, g < GROUP")
        w.line("Q_group = Q + off_b * stride_qb + off_hk * GROUP * stride_qh")
    else:
        w.line("off_b = pid_bh // H")
        w.line("off_h = pid_bh % H")
        w.line("off_hk = off_h // GROUP  # the key/value head this query head reads (GROUP = 1 folds)")
        w.line("Q += off_b * stride_qb + off_h * stride_qh")
    w.line("K += off_b * stride_kb + off_hk * stride_kh")
    w.line("V += off_b * stride_vb + off_hk * stride_vh")
    if out and per_kv_head:
        w.line("Out_group = Out + off_b * stride_ob + off_hk * GROUP * stride_oh")
    elif out:
        w.line("Out += off_b * stride_ob + off_h * stride_oh")
    if feature_axis is None:
        w.line("offs_d = tl.arange(0, BLOCK_D)")
    else:
        w.line(f"pid_f = tl.program_id({feature_axis})")
        w.line("offs_d = pid_f * BLOCK_D + tl.arange(0, BLOCK_D)")
    if value_axis is None:
        w.line("offs_e = tl.arange(0, BLOCK_E)")
    else:
        w.line(f"pid_e = tl.program_id({value_axis})")
        w.line("offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)")


def query_tile(w: CodeWriter, dots: dict, tma: bool = False, chunked: bool = False) -> None:
    """Kernel prologue, then the query tile's rows (rows.query_rows)."""
    program_prologue(w)
    w.line("offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)")
    query_rows(w, dots, tma, chunked)


def held_row_itemsize(dots) -> int | None:
    """Bytes an element of the q / k rows a kernel holds when not its inputs': 4 where a feature map
    keeps them in fp32 (load_rows), which the autotune candidates' row bytes must count; else None."""
    return 4 if any(row_feature(side) is not None for d in dots for side in d.args) else None


def emit_tiled_kernel(w: CodeWriter, graph: Graph, plan: Plan, kernel: Kernel) -> None:
    """`_attn_fwd`, one query tile over the key tiles it may see (full tiles without the mask, see
    emit/tiles.py), and its launcher `triton_forward`."""
    att = attention_node(graph)
    norm = NORMALIZERS[att.attr("normalize")]
    scores, mask = quadratic_form(graph, attention_of(graph))
    dots = name_dots(scores)
    ex = KernelExpr(dots, {s: size_arg(s) for s in sizes_used(scores, mask)})
    sparse = plan.entry.block_sparse or plan.entry.token_tiles  # tiles listed by a layout
    stats = norm.row_statistic  # a row statistic for the backward: logsumexp, or the denominator
    sink = att.attr("sink") is not None
    chunked = chunked_rows(dots)
    extra = "".join(f"{a}, " for a in kernel.arg_names()) + (LAYOUT_ARGS if sparse else "") + \
        ("Stat, " if stats else "") + ("Sink, " if sink else "") + ("eps, " if norm.divides_by_row_sum else "")
    w.line("@triton.jit")
    with w.block(f"def _attn_fwd({kernel_common_args()}, {extra}sm_scale,"):
        w.line(f"{band_constexprs(plan)}BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, "
               "BLOCK_E: tl.constexpr,")
        w.line(f"PRECISION: tl.constexpr, USE_TMA: tl.constexpr{', LAYOUT_EXACT: tl.constexpr' if sparse else ''}"
               f"{', ROW_CHUNK: tl.constexpr' if chunked else ''}):")
        w.line(f'"""{att.attr("normalize")} attention over tiles; '
               f'{norm.score_name} = {brief(scores)}; mask = {brief(mask) if mask else "none"}."""')
        query_tile(w, dots, tma=True, chunked=chunked)
        w.lines_of(RUNNING_STATE)
        base2 = log2_scores(scores) if norm.online_softmax else None
        if base2 is not None:
            w.line(f"qk_scale = sm_scale * {LOG2E!r}  # softmax in base 2: log2(e) folded into the scale")
        for stage in key_stages(w, plan):
            w.line(f"# {stage.note}")
            with w.block(stage.loop):
                key_tile_weights(w, stage, dots, ex, scores, mask, base2, tma=True, chunked=chunked)
                w.lines_of(ONLINE_SOFTMAX_UPDATE if norm.online_softmax else WEIGHTED_SUM_UPDATE)
        store_tiled_rows(w, norm, att.attr("eps"), base2 is not None, sink)
    w.line()
    emit_tiled_launcher(w, plan, kernel, att.attr("eps"), norm, sink, held_row_itemsize(dots), chunked)


LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * log2(e))
LN2 = 0.6931471805599453  # ln(2): the stored logsumexp stays natural (log2 sums times ln 2)


def log2_scores(scores: TExpr) -> TExpr:
    """The logits times log2(e), for exp2: a top-level `x * scale` becomes `x * qk_scale` (a `scale`
    leaf standing for sm_scale * log2(e), one multiply per pair as before); other logits are
    multiplied by log2(e)."""
    if scores.op == "mul" and any(a.op == "scale" for a in scores.args):
        return TExpr("mul", tuple(TExpr("scale", (), "qk_scale", a.type) if a.op == "scale" else a
                                  for a in scores.args), None, scores.type)
    return TExpr("mul", (scores, TExpr("const", (), LOG2E, "float")), None, "float")


# the running state of a query tile: row max (softmax only), row sums, and the weighted value sums
RUNNING_STATE = """\
m_i = tl.full([BLOCK_M], float('-inf'), dtype=tl.float32)
l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
acc = tl.zeros([BLOCK_M, BLOCK_E], dtype=tl.float32)
"""

# one key tile folded into the running state, rescaled to the new row max (FlashAttention); s and
# m_i are in base 2 (logits times log2(e)), so exp2 is the exponential
ONLINE_SOFTMAX_UPDATE = """\
m_new = tl.maximum(m_i, tl.max(s, 1))
m_safe = tl.where(m_new == float('-inf'), 0.0, m_new)  # rows with no visible key yet
p = tl.math.exp2(s - m_safe[:, None])
alpha = tl.math.exp2(m_i - m_safe)
l_i = l_i * alpha + tl.sum(p, 1)
acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
m_i = m_new
"""

# one key tile of weights (rows, none) added to the running sums; p is kept in fp32 (fp16 would
# under/overflow unnormalized weights)
WEIGHTED_SUM_UPDATE = """\
l_i += tl.sum(p, 1)
acc += tl.dot(p, v.to(tl.float32), input_precision=PRECISION)
"""


def key_tile_weights(w: CodeWriter, stage: Stage, dots: dict, ex: KernelExpr, scores: TExpr,
                     mask: TExpr | None, base2: TExpr | None, tma: bool = False, chunked: bool = False) -> None:
    """Inside a key-tile loop: the tile's keys, its logits `s` (base 2 for softmax, -inf where masked)
    or weights `p` (0 where masked), and its value rows. Full tiles (stage.masked false) skip the mask
    and, under USE_TMA (tma: the kernel has it), load their raw rows through the descriptors (chunked:
    rows.chunked_rows)."""
    if stage.start is not None:
        w.line(stage.start)
    w.line("offs_n = start_n + tl.arange(0, BLOCK_N)")
    limit = "N" if stage.masked else None  # full tiles lie inside N: unmasked row loads
    full_by_tma = tma and not stage.masked
    tile_dots(w, dots, limit, tma=full_by_tma, chunked=chunked)
    value = base2 if base2 is not None else scores
    element_mask = mask if stage.masked else None
    scope = LetScope(ex)
    if stage.masked and stage.start is not None and mask is not None:  # a layout's partial tiles
        scope.bind(w, [value])
        w.line(f"s = {scope(value)}")
        w.line("valid = offs_n[None, :] < N")
        with w.block("if not LAYOUT_EXACT:  # the layout alone decides exact tiles: only the bounds there"):
            inner = LetScope(ex, prefix="u")
            inner.bind(w, [mask])
            w.line(f"valid = valid & ({inner(mask)})")
    else:
        scope.bind(w, [value, element_mask])
        w.line(f"s = {scope(value)}")
        if stage.masked:
            w.line(f"valid = (offs_n[None, :] < N){f' & ({scope(mask)})' if element_mask is not None else ''}")
    if stage.masked:
        w.line("s = tl.where(valid, s, float('-inf'))" if base2 is not None else "p = tl.where(valid, s, 0.0)")
    elif base2 is None:
        w.line("p = s")
    if full_by_tma:
        descriptor_rows(w, "v", "V", "offs_e", "E")
    else:
        load_rows(w, "v", "V", "offs_n", limit, "offs_e", "E")


def store_tiled_rows(w: CodeWriter, norm: Normalizer, eps: float, base2: bool, sink: bool = False) -> None:
    """After the key tiles: normalize the rows, save the row statistic the backward reads, store the output.
    base2: m_i and the sums are of base-2 logits; the saved logsumexp is natural (times ln 2).
    eps (exp weights under rows, passes/stable_exp.py) and a sink (`softmax(sink = ...)`, read from the
    launcher's [B, H, Nq] natural logits) are both one more key of each row that takes no value: the
    saved logsumexp includes it, so the backward's formulas stay those of softmax."""
    if norm.online_softmax and (eps or sink):
        exp, log = ("tl.math.exp2", "tl.math.log2") if base2 else ("tl.exp", "tl.log")
        if sink:
            scaled = f" * {LOG2E!r}" if base2 else ""
            w.line(f"key = tl.load(Sink + pid_bh * Nq + offs_m, mask=offs_m < Nq, other=0.0){scaled}  # the row's sink logit")
        else:
            key = repr(math.log2(eps) if base2 else math.log(eps))
            w.line(f"key = {key}  # the logit of eps")
        w.line("m_top = tl.maximum(m_i, key)  # max(row max, extra logit): every exponent <= 0")
        w.line("m_top = tl.where(m_top == float('-inf'), 0.0, m_top)  # no key and a sink of -inf: z = 0")
        w.line(f"alpha = {exp}(m_i - m_top)")
        w.line(f"z = l_i * alpha + {exp}(key - m_top)")
        w.line("out = acc * (alpha / tl.where(z == 0.0, 1.0, z))[:, None]  # no visible key: acc = 0, output 0")
        lse = f"(m_top + {log}(z)) * {LN2!r}" if base2 else "m_top + tl.log(z)"
        w.line(f"tl.store(Stat + pid_bh * Nq + offs_m, {lse}, mask=offs_m < Nq)  # log(sum e^s + e^key)")
    elif norm.online_softmax:
        w.line("out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # no visible key: output 0")
        lse = "(m_i + tl.math.log2(tl.where(l_i == 0.0, 1.0, l_i))) * " + repr(LN2) if base2 else \
            "m_i + tl.log(tl.where(l_i == 0.0, 1.0, l_i))"
        w.line(f"tl.store(Stat + pid_bh * Nq + offs_m, {lse}, mask=offs_m < Nq)  # -inf: no visible key")
    elif norm.divides_by_row_sum:
        w.line("z = l_i + eps")
        w.line("tl.store(Stat + pid_bh * Nq + offs_m, z, mask=offs_m < Nq)")
        w.line("out = acc / tl.where(z == 0.0, 1.0, z)[:, None]  # nothing to normalize: output 0")
    else:
        w.line("out = acc")
    w.line("tl.store(Out + offs_m[:, None] * stride_om + offs_e[None, :] * stride_od, out.to(Out.dtype.element_ty), "
           "mask=(offs_m[:, None] < Nq) & (offs_e[None, :] < E))")


def emit_tiled_launcher(w: CodeWriter, plan: Plan, kernel: Kernel, eps: float, norm: Normalizer,
                        sink: bool = False, row_itemsize: int | None = None, chunked: bool = False) -> None:
    """`triton_forward`: `_attn_fwd` launched with the tiles autotune chose (block-sparse: the layout's tile).
    With a sink, its logits (sink_rows: given by the custom op, else evaluated here) travel as [B, H, Nq];
    row_itemsize: see held_row_itemsize; chunked: the kernel takes ROW_CHUNK (rows.chunked_rows)."""
    sparse, stats, token = plan.entry.block_sparse, norm.row_statistic, plan.entry.token_tiles
    if sink:
        w.lines_of(SINK_ROWS)
        w.line()
    head = ("stat=None, " if stats else "") + ("sink=None, " if sink else "")
    with w.block(f"def triton_forward(self, q, k, v, ctx, host{', ' + head[:-2] if head else ''}):"):
        launcher_head(w, fixed_blocks=False)
        if stats:
            w.line("stat = torch.empty(B, H, Nq, device=q.device, dtype=torch.float32) if stat is None else stat")
        if sink:
            w.line("sink = sink_rows(host, q, ctx) if sink is None else sink")
        if sparse:
            w.line(f"tiles = self.cached_tiles(ctx, host.block_layout, q.device, exact={layout_exact(plan)}, "
                   "max_tile=autotune.sparse_tile_limit(q, v))  "
                   "# once per length")
        band_line(w, plan)
        w.line("use_tma = tma.usable(q, k, v)  # sm_90, a Triton with descriptors, 16-byte aligned strides")
        if chunked:
            w.line(row_chunk_line())
        vals = "".join(f"{v}, " for v in kernel.arg_values()) + ("*tiles.tensors(), " if sparse or token else "") + \
            ("stat, " if stats else "") + ("sink, " if sink else "") + (f"{eps!r}, " if norm.divides_by_row_sum else "")
        w.line()
        with w.block(f"def launch({'' if sparse else 'BLOCK_M, BLOCK_N, '}num_warps, num_stages):"):
            if sparse:
                w.line("BLOCK_M = BLOCK_N = tiles.tile")
            if token:
                w.line("tiles = token_tiles(ctx, B, BLOCK_M, BLOCK_N, q.device).rows  # built on the device, reused "
                       "while the inputs are")
            w.line("grid = (triton.cdiv(Nq, BLOCK_M), B * H)")
            w.line(f"_attn_fwd[grid]({launch_common()}, {vals}ctx.scale,")
            w.line(f"    {band_launch(plan)}BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, BLOCK_E=BLOCK_E,"
                   f" PRECISION=precision, USE_TMA=use_tma,{' LAYOUT_EXACT=tiles.exact,' if sparse or token else ''}"
                   f"{' ROW_CHUNK=row_chunk,' if chunked else ''}")
            w.line("    num_warps=num_warps, num_stages=num_stages)")
        w.line()
        tuned_launch(w, plan.entry.autotune_kind, ", tile=tiles.tile" if sparse else "", row_itemsize,
                     kernel.pair_lookups)


SINK_ROWS = """\
def sink_rows(host, q, ctx):
    \"\"\"The sink logit of every query row as the forward kernel reads it: float32 [B, H, Nq], contiguous
    (differentiable in the tables it reads: the custom op returns its gradient).\"\"\"
    return rt.sink_rows(host.sink, ctx, q)[..., 0].expand(q.shape[0], -1, -1).float().contiguous()
"""


def layout_exact(plan: Plan) -> bool:
    """Whether the block layout is the whole mask (its tiles need no element mask when aligned)."""
    return bool(plan.attrs["block_layout"].exact)


def launcher_head(w: CodeWriter, allocate_out: bool = True, fixed_blocks: bool = True) -> None:
    w.line("B, H, Nq, D = q.shape")
    w.line("N, E, Hkv = k.shape[2], v.shape[3], k.shape[1]  # Hkv: key/value heads, H // GROUP")
    if allocate_out:
        w.line("out = torch.empty(B, H, Nq, E, device=q.device, dtype=q.dtype)")
    if fixed_blocks:  # forward launchers take theirs from autotune
        w.line("BLOCK_M = BLOCK_N = 64 if autotune.on_gpu(q) else 16")
    w.line("BLOCK_D = max(16, triton.next_power_of_2(D))")
    w.line("BLOCK_E = max(16, triton.next_power_of_2(E))")
    w.line("precision = 'ieee' if q.dtype == torch.float32 else 'tf32'")


def tuned_launch(w: CodeWriter, kind: str, extra_sizes: str = "", row_itemsize: int | None = None,
                 pair_lookups: bool = False) -> None:
    """Launch with the configuration autotune chose for these sizes (tuned once per key on CUDA)."""
    w.line(f"sizes = dict(BH=B * H, Nq=Nq, N=N, D=BLOCK_D, E=BLOCK_E{extra_sizes})")
    w.line(f"launch(**{autotune_call(kind, row_itemsize, pair_lookups)})")
    w.line("return out")


def autotune_call(kind: str, row_itemsize: int | None, pair_lookups: bool = False) -> str:
    """The launcher's call for its configuration; rows the kernel keeps in fp32 are counted as such, and
    a kernel that gathers a table per pair (Kernel.pair_lookups) says so."""
    held = (f", row_itemsize={row_itemsize}" if row_itemsize else "") + (", pair_lookups=True" if pair_lookups else "")
    return f"autotune.best(SPEC_HASH, {kind!r}, q, sizes, launch{held})"


def triton_header(graph: Graph, spec_hash: str, version: str) -> str:
    return f'''"""attncc generated Triton kernels (attncc {version}) of spec {graph.name} ({spec_hash}).

Imported by the main module on the first Triton call; `host` is that module (torch backend, tables).
"""
import math

import torch
import triton
import triton.language as tl

from attncc import rt
from attncc.rt import approx as ax
from attncc.runtime import autotune, tma, triton_ops

SPEC_HASH = {spec_hash!r}  # part of every autotune key


'''


def kernel_preamble(w: CodeWriter, graph: Graph) -> Kernel:
    """The helpers and feature maps that the attention node read as quadratic attention (quadratic_form)
    calls, written once; returns the Kernel of its score and mask."""
    exprs = list(quadratic_form(graph, attention_of(graph)))
    dims = {n: len(p.shape) for n, p in graph.signature.params.items()}
    kernel = Kernel(exprs, dims)
    for h in kernel.helpers:
        w.lines_of(HELPERS[h])
        w.line()
    for fm in sorted({row_feature(e) for t in exprs if t is not None for e in t.walk()} - {None, "identity"}):
        emit_feature_fn(w, fm)
    return kernel


def emit_tiled_triton(w: CodeWriter, graph: Graph, plan: Plan) -> str:
    """The tiled skeleton's kernel and launcher (tiled, block-sparse) over the attention node read as
    quadratic attention (quadratic_form); returns its description."""
    emit_tiled_kernel(w, graph, plan, kernel_preamble(w, graph))
    online = NORMALIZERS[attention_node(graph).attr("normalize")].online_softmax
    return (f"{'block-sparse' if plan.entry.block_sparse else 'tiled'} "
            f"{'online-softmax' if online else 'weighted-sum'} kernel")


