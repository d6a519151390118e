"""Emit the Triton backward: kernels that recompute the forward tile by tile (no N x N buffer),
run with the forward as the torch custom op of attncc.runtime.triton_ops.

Softmax tiles (FlashAttention-2). The forward kernel saves the row logsumexp L; per tile
  P = exp(S - L) (0 where masked), dV += P^T dO, dP = dO V^T, dS = P o (dP - delta), delta = rowsum(dO o O),
  G = dS o ds/d(q.k)  (the score hole differentiated by attncc.derivative), dK += G^T Q, dQ += G K,
  dt[idx] += dS o ds/dt[idx] for each float table t the score reads (atomics; one per tile when idx
  does not depend on i, j).
Weighted tiles: W = w(s) where visible; `rows` saves the denominator Z = rowsum W + eps, P = W / Z,
dS = (dP - delta) / Z (delta = 0 where Z = 0: the forward divides by 1 there); `none`: P = W, dS = dP.
Feature maps on a dot's sides: dK += (G^T phi(Q)) o phi'(K), dQ alike, per (q map, k map) pair.
Two kernels: dK, dV (and the tables) per key tile over the query tiles that can see it (the band, or
the block layout transposed), dQ per query tile over its key tiles, as the forward. Grouped-query
attention: the dK, dV kernel runs per key/value head and walks the GROUP query heads reading it.

Linear lowerings: triton_backward_linear.py.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from ..analysis.structure import classify_modulation
from ..lang.derivative import NotDifferentiable, gradient, leaves
from ..lang.expr import TExpr
from ..lang.features import FEATURE_MAPS
from ..ir.graph import Graph, attention_node, attention_of
from ..ir.lower import size_symbols
from ..lang.normalizers import NORMALIZERS, Normalizer
from ..passes.quadratic import quadratic_form
from ..plan.select import Plan
from .exprs import TritonExpr, key, name_dots
from .let import LetScope
from .tiles import LAYOUT_ARGS, Stage, band_constexprs, band_launch, band_line, key_stages, query_stages
from .rows import TMA_NOTE, descriptor_rows, tensor_descriptors
from .triton import (LOG2E, kernel_common_args, Kernel, KernelExpr, launch_common, autotune_call, held_row_itemsize,
                     launcher_head, layout_exact, load_rows, log2_scores, program_prologue, row_feature, size_arg,
                     sizes_used)
from .triton_helpers import HELPERS, helpers_of
from .writer import CodeWriter

RECOMPUTE = "recomputation through the torch backend's autograd"


@dataclass(frozen=True)
class TritonBackward:
    """Generated Triton backward kernels of a family of lowerings (a Lowering's triton_backward).

    support(graph, plan) -> None if the kernels cover this graph, else why not
    line(graph, plan) -> what `inspect` says of them
    emit(w, graph, plan) writes them, before the module's `forward_triton`
    """
    support: Callable[[Graph, Plan], str | None]
    line: Callable[[Graph, Plan], str]
    emit: Callable[[CodeWriter, Graph, Plan], None]


def backward_support(graph: Graph, plan: Plan) -> str | None:
    """None if generated Triton backward kernels cover this graph and lowering, else why not."""
    if plan.entry.torch_fallback_reason(graph) is not None:
        return "the forward runs in torch"
    if plan.entry.triton_backward is None:
        return f"no backward kernel for the {plan.lowering} lowering"
    return plan.entry.triton_backward.support(graph, plan)


def backward_line(graph: Graph, plan: Plan) -> str:
    """Which backward the Triton backend uses for this graph and lowering (for `inspect`)."""
    if plan.entry.torch_fallback_reason(graph) is not None:
        return "torch autograd (the forward runs in torch)"
    why = backward_support(graph, plan)
    if why is not None:
        return f"{RECOMPUTE} ({why})"
    return plan.entry.triton_backward.line(graph, plan)


def tile_backward_support(graph: Graph, plan: Plan) -> str | None:
    """The tile kernels differentiate the score hole symbolically: it must be differentiable."""
    scores, _ = quadratic_form(graph, attention_of(graph))
    try:
        gradient(scores)
    except NotDifferentiable as exc:
        return str(exc)
    return None


def tile_backward_line(graph: Graph, plan: Plan) -> str:
    softmax = NORMALIZERS[attention_node(graph).attr("normalize")].online_softmax
    tables = _grad_tables(quadratic_form(graph, attention_of(graph))[0])
    how = "FlashAttention-2 recomputation" if softmax else "weights recomputed per tile"
    return (f"generated Triton kernels ({how}"
            + (f"; gradients of {', '.join(n for _, n in tables)} by atomics)" if tables else ")"))


def _grad_tables(scores: TExpr) -> list[tuple[str, str]]:
    out = []
    for leaf in leaves(scores):
        if leaf.op != "dot" and (leaf.op, leaf.value) not in out:
            out.append((leaf.op, leaf.value))
    return out


def emit_backward(w: CodeWriter, graph: Graph, plan: Plan) -> str:
    """The module's `forward_triton`, with backward kernels where they exist; returns backward_line."""
    if backward_support(graph, plan) is not None:
        with w.block("def forward_triton(self, q, k, v, ctx, host):"):
            w.line('"""Triton forward; gradients by recomputing the torch backend under autograd."""')
            w.line("return rt.with_torch_backward(lambda q, k, v, ctx: triton_forward(self, q, k, v, ctx, host),")
            w.line("                              lambda q, k, v, ctx: host.forward_torch(self, q, k, v, ctx), "
                   "q, k, v, ctx)")
        return backward_line(graph, plan)
    plan.entry.triton_backward.emit(w, graph, plan)
    w.line()
    w.line()
    sparse = plan.entry.block_sparse
    with w.block("def forward_triton(self, q, k, v, ctx, host):"):
        w.line('"""Triton forward and backward kernels, run as the custom op attncc::triton_attention."""')
        if sparse:
            w.line(f"tiles = self.cached_tiles(ctx, host.block_layout, q.device, exact={layout_exact(plan)}, "
                   "max_tile=autotune.sparse_tile_limit(q, v))  "
                   "# once per length")
        sink = ", sink=sink_rows(host, q, ctx)" if attention_node(graph).attr("sink") is not None else ""
        w.line(f"return triton_ops.attention(q, k, v, ctx, host{', tiles' if sparse else ''}{sink})")
    return backward_line(graph, plan)


def bwd_args(grads: str = "QKV", out: bool = True) -> str:
    """The forward's arguments (Out only if the kernel reads it), dO, and the gradients it writes, each
    with its own strides (gradients are allocated afresh; q, k, v may be any strided views)."""
    return kernel_common_args(out) + ", DO, stride_dob, stride_doh, stride_dom, stride_dod" + \
        "".join(f", D{x}, stride_d{x.lower()}b, stride_d{x.lower()}h, stride_d{x.lower()}m, stride_d{x.lower()}d"
                for x in grads)


def bwd_launch(grads: str = "QKV", out: bool = True) -> str:
    return launch_common(out) + ", dout, *dout.stride()" + "".join(f", d{x.lower()}, *d{x.lower()}.stride()"
                                                                 for x in grads)


def bwd_prologue(w: CodeWriter, per_bh_only: bool = False, grads: str = "QKV", out: bool = True,
                 per_kv_head: bool = False, feature_axis: int | None = None) -> None:
    """program_prologue, then dO and the gradients at this program's heads: per_kv_head, dK and dV at
    the key/value head and dO at the group's first query head (the kernel walks the group); else all
    at the query head (dK, dV then have H heads: per query head, summed over the group by the launcher)."""
    program_prologue(w, per_bh_only, out, per_kv_head=per_kv_head, feature_axis=feature_axis)
    if per_kv_head:
        w.line("DO_group = DO + off_b * stride_dob + off_hk * GROUP * stride_doh")
    else:
        w.line("DO += off_b * stride_dob + off_h * stride_doh")
    for x in grads:
        g = f"stride_d{x.lower()}"
        if per_kv_head and x == "Q":
            w.line(f"DQ_group = DQ + off_b * {g}b + off_hk * GROUP * {g}h")
        else:
            w.line(f"D{x} += off_b * {g}b + {'off_hk' if per_kv_head else 'off_h'} * {g}h")


def group_member(w: CodeWriter, pointers: tuple[str, ...]) -> None:
    """Inside `for member in range(GROUP)` of a per-kv-head kernel: the query head off_h and its
    pointers, each set afresh from its group base (X = X_group + member * stride_xh; Stat and Delta
    [B H, Nq] rows by Nq), so nothing is carried from one member to the next."""
    w.line("off_h = off_hk * GROUP + member")
    for ptr in pointers:
        step = "Nq" if ptr in ("Stat", "Delta") else "stride_oh" if ptr == "Out" else f"stride_{ptr.lower()}h"
        w.line(f"{ptr} = {ptr}_group + member * {step}")


def backward_head(w: CodeWriter, doc: str, fixed_blocks: bool = True, per_query_head: bool = False) -> None:
    """The backward launcher's sizes and gradient buffers. per_query_head: the kernels write dK, dV per
    query head; with grouped heads those go to float32 [B, H, N, *] buffers that the launcher sums over
    each group (triton_ops.group_sum) before returning."""
    w.line(f'"""{doc}"""')
    launcher_head(w, allocate_out=False, fixed_blocks=fixed_blocks)
    if per_query_head:
        w.line("dq = torch.empty_like(q)")
        w.line("dk, dv = (triton_ops.per_query_head(x, H) for x in (k, v))  # k, v themselves without grouping")
    else:
        w.line("dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)")


def store_tile(w: CodeWriter, ptr: str, var: str, offs: str, limit: str, cols: str, width: str) -> None:
    p = ptr.lower()
    w.line(f"tl.store({ptr} + {offs}[:, None] * stride_{p}m + {cols}[None, :] * stride_{p}d, "
           f"{var}.to({ptr}.dtype.element_ty), mask=({offs}[:, None] < {limit}) & ({cols}[None, :] < {width}))")


# ---------------------------------------------------------------------- tiles
def _side(d: TExpr, which: int) -> str:
    """The tile variable of one side of a dot, as the forward kernel names it."""
    return f"{'qk'[which]}_{row_feature(d.args[which]) or 'raw'}"


def _pair_derivatives(scores: TExpr, derivs: dict) -> dict[tuple[str, str], TExpr]:
    """ds/d(dot) summed over the dots that share their two tile variables (same feature maps)."""
    pairs: dict[tuple[str, str], TExpr] = {}
    for leaf, d in derivs.items():
        if leaf.op == "dot" and d is not None:
            pair = (_side(leaf, 0), _side(leaf, 1))
            pairs[pair] = d if pair not in pairs else TExpr("add", (pairs[pair], d))
    return pairs


def _feature_grad(w: CodeWriter, var: str, accs: list[str], rows: str, ptr: str, offs: str, limit: str) -> None:
    """var = sum of the accumulators d<side>_<phi>, each times phi'(raw rows) (raw and identity: 1)."""
    terms = []
    for acc in accs:
        feature = acc.split("_", 1)[1]
        terms.append(acc if feature in ("raw", "identity") else f"{acc} * ({FEATURE_MAPS[feature].triton_grad})")
    if terms != accs:
        load_rows(w, "x", ptr, offs, limit, "offs_d", "D")
        w.line("x = x.to(tl.float32)")
    w.line(f"{var} = {' + '.join(terms) or f'tl.zeros([{rows}, BLOCK_D], dtype=tl.float32)  # s reads no dot'}")


def emit_tiled_backward(w: CodeWriter, graph: Graph, plan: Plan) -> None:
    """`_attn_bwd_dkdv` (per key tile) and `_attn_bwd_dq` (per query tile), then the custom op's launchers."""
    tiles = TileBackward(w, graph, plan)
    tiles.emit_helpers()
    tiles.emit_dkdv_kernel()
    tiles.emit_dq_kernel()
    _tiled_launchers(w, tiles.norm, plan, tiles.kernel, tiles.tables, tiles.diagonals,
                     attention_node(graph).attr("sink") is not None, held_row_itemsize(tiles.dots))


class TileBackward:
    """What the two tile backward kernels share: the score hole, its derivatives, the tile variables of
    the dots' sides, and the writer; each method writes one part of a kernel."""

    def __init__(self, w: CodeWriter, graph: Graph, plan: Plan):
        self.w, self.plan = w, plan
        self.norm = NORMALIZERS[attention_node(graph).attr("normalize")]
        self.scores, self.mask = quadratic_form(graph, attention_of(graph))
        self.dots = name_dots(self.scores)
        self.ex = KernelExpr(self.dots, {s: size_arg(s) for s in sizes_used(self.scores, self.mask)})
        self.kernel = Kernel([self.scores, self.mask], {n: len(p.shape) for n, p in graph.signature.params.items()})
        self.derivs = gradient(self.scores)
        self.pairs = _pair_derivatives(self.scores, self.derivs)
        self.q_sides = {_side(d, 0): row_feature(d.args[0]) for d in self.dots}
        self.k_sides = {_side(d, 1): row_feature(d.args[1]) for d in self.dots}
        self.tables = _grad_tables(self.scores)
        self.sparse = plan.entry.block_sparse or plan.entry.token_tiles  # tiles listed by a layout
        self.base2 = log2_scores(self.scores) if self.norm.online_softmax else None  # exp2, as the forward
        self.symbols = size_symbols(graph.signature)
        self.diagonals = diagonal_tables(self.tables, self.derivs, self.symbols)

    def emit_helpers(self) -> None:
        """The Triton helpers the derivatives call that the forward's kernel did not already bring."""
        derivs = self.derivs.values()
        for h in sorted({h for d in derivs if d is not None for h in helpers_of(d)} - set(self.kernel.helpers)):
            self.w.lines_of(HELPERS[h])
            self.w.line()
        if self.diagonals:
            self.w.lines_of(DIAGONAL_SUMS)
            self.w.line()

    @contextmanager
    def kernel_def(self, name: str, grads: str, args: str, doc: str, diagonals: bool = False,
                   per_kv_head: bool = False):
        """A backward kernel's signature, docstring and prologue; the body is written inside the block.
        per_kv_head: one program per key/value head (bwd_prologue); the query-side descriptors are the
        body's, per query head of the group."""
        w = self.w
        extra = "".join(f"{a}, " for a in self.kernel.arg_names())
        w.line("@triton.jit")
        with w.block(f"def {name}({bwd_args(grads, out=False)}, {extra}{args}sm_scale,"):
            w.line(f"{band_constexprs(self.plan)}BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, "
                   "BLOCK_E: tl.constexpr,")
            w.line(f"PRECISION: tl.constexpr, USE_TMA: tl.constexpr{', LAYOUT_EXACT: tl.constexpr' if self.sparse else ''}"
                   f"{', BLOCK_DIAG: tl.constexpr' if diagonals else ''}):")
            w.line(f'"""{doc}"""')
            bwd_prologue(w, grads=grads, out=False, per_kv_head=per_kv_head)
            with w.block(f"if USE_TMA:  {TMA_NOTE}"):
                tensor_descriptors(w, self.dots, with_do=True, sides="kv" if per_kv_head else "qkv")
            if self.base2 is not None:
                w.line(f"qk_scale = sm_scale * {LOG2E!r}  # softmax in base 2, as the forward")
            yield
        w.line()

    def load_sides(self, sides: dict, ptr: str, offs: str, limit: str | None, start: str | None = None) -> None:
        """The tile's rows of each dot side; raw ones through the descriptor under USE_TMA where `start`
        is given (the fixed tile, or a full tile of the loop)."""
        for var, feature in sides.items():
            if start is not None and feature is None:
                descriptor_rows(self.w, var, ptr, "offs_d", "D", start, offs, limit)
            else:
                load_rows(self.w, var, ptr, offs, limit, "offs_d", "D", feature=feature)

    def load_values(self, var: str, ptr: str, offs: str, limit: str | None, start: str | None = None) -> None:
        """V or dO rows of the tile, as load_sides."""
        if start is not None:
            descriptor_rows(self.w, var, ptr, "offs_e", "E", start, offs, limit)
        else:
            load_rows(self.w, var, ptr, offs, limit, "offs_e", "E")

    def emit_dkdv_kernel(self) -> None:
        """`_attn_bwd_dkdv`: one key tile over the query tiles that see it; dK, dV and the table gradients."""
        w = self.w
        grads = "".join(f"G{op[0].upper()}_{name}, " for op, name in self.tables)
        with self.kernel_def("_attn_bwd_dkdv", "KV", f"{grads}Stat, Delta, {LAYOUT_ARGS if self.sparse else ''}",
                             "dK, dV (and table gradients) of one key tile: weights recomputed from the saved row "
                             "statistic, summed over the GROUP query heads that read this key/value head.",
                             diagonals=self.diagonals, per_kv_head=True):
            w.line("pid_n = pid_m  # this grid's first axis walks key tiles")
            w.line("Stat_group = Stat + (off_b * H + off_hk * GROUP) * Nq  # the group's first query head")
            w.line("Delta_group = Delta + (off_b * H + off_hk * GROUP) * Nq")
            w.line("offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)")
            self.load_sides(self.k_sides, "K", "offs_n", "N", start="pid_n * BLOCK_N")
            self.load_values("v", "V", "offs_n", "N", start="pid_n * BLOCK_N")
            k_accs = [f"d{kv}" for kv in dict.fromkeys(kv for _, kv in self.pairs)]
            for acc in k_accs:
                w.line(f"{acc} = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)")
            w.line("dv = tl.zeros([BLOCK_N, BLOCK_E], dtype=tl.float32)")
            with w.block("for member in range(GROUP):  # the query heads of this key/value head (GROUP = 1: one pass)"):
                group_member(w, ("Q", "DO", "Stat", "Delta"))
                with w.block(f"if USE_TMA:  {TMA_NOTE}"):
                    tensor_descriptors(w, self.dots, with_do=True, sides="q")
                self.query_tiles()
            _feature_grad(w, "dk", k_accs, "BLOCK_N", "K", "offs_n", "N")
            store_tile(w, "DK", "dk", "offs_n", "N", "offs_d", "D")
            store_tile(w, "DV", "dv", "offs_n", "N", "offs_e", "E")

    def query_tiles(self) -> None:
        """dK, dV (and the table atomics) of query head off_h: its query tiles that see the key tile."""
        w = self.w
        for stage in query_stages(w, self.plan, fixed_in_range=bool(self.tables)):
            w.line(f"# {stage.note}")
            with w.block(stage.loop):
                if stage.start is not None:
                    w.line(stage.start)
                w.line("offs_m = start_m + tl.arange(0, BLOCK_M)")
                scope = self.recompute_weights(stage, keys_fixed=True)
                self.score_gradients(scope, stage, keys_fixed=True)
                if self.diagonals:
                    w.line("diag = start_m - pid_n * BLOCK_N - (BLOCK_N - 1) + tl.arange(0, BLOCK_DIAG)  "
                           "# i - j on each diagonal of the tile")
                for op, name in self.tables:
                    table_atomics(w, scope, stage, self.ex, op, name, self.derivs, self.symbols)

    def emit_dq_kernel(self) -> None:
        """`_attn_bwd_dq`: one query tile over the key tiles the forward visits; dQ."""
        w = self.w
        with self.kernel_def("_attn_bwd_dq", "Q", f"Stat, Delta, {LAYOUT_ARGS if self.sparse else ''}",
                             "dQ of one query tile over the key tiles the forward visits."):
            w.line("offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)")
            self.load_sides(self.q_sides, "Q", "offs_m", "Nq", start="pid_m * BLOCK_M")
            self.load_values("do", "DO", "offs_m", "Nq", start="pid_m * BLOCK_M")
            if self.norm.row_statistic:
                self.load_row_statistics("pid_bh * Nq + offs_m")
            q_accs = [f"d{qv}" for qv in dict.fromkeys(qv for qv, _ in self.pairs)]
            for acc in q_accs:
                w.line(f"{acc} = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)")
            for stage in key_stages(w, self.plan):
                w.line(f"# {stage.note}")
                with w.block(stage.loop):
                    if stage.start is not None:
                        w.line(stage.start)
                    w.line("offs_n = start_n + tl.arange(0, BLOCK_N)")
                    self.score_gradients(self.recompute_weights(stage, keys_fixed=False), stage, keys_fixed=False)
            _feature_grad(w, "dq", q_accs, "BLOCK_M", "Q", "offs_m", "Nq")
            store_tile(w, "DQ", "dq", "offs_m", "Nq", "offs_d", "D")

    def load_row_statistics(self, offset: str) -> None:
        """The saved row statistic (softmax: the logsumexp, to base 2 here) and delta = rowsum(dO o O)."""
        scale = f" * {LOG2E!r}" if self.base2 is not None else ""
        self.w.line(f"stat = tl.load(Stat + {offset}, mask=offs_m < Nq, other=0.0){scale}")
        self.w.line(f"delta = tl.load(Delta + {offset}, mask=offs_m < Nq, other=0.0)")

    def recompute_weights(self, stage: Stage, keys_fixed: bool) -> LetScope:
        """Inside a tile loop: the other side's rows, the dots, the logits or weights `s`, `valid` (partial
        tiles) and the weights `p` of one (query tile, key tile); returns the scope of the tile's
        expressions (the table derivatives too, with the key tile fixed). keys_fixed: the loop walks
        query tiles for one key tile."""
        w = self.w
        bound = (lambda limit: limit) if stage.masked else (lambda limit: None)  # full tiles lie inside
        if keys_fixed:  # full tiles: their raw rows through the descriptors under USE_TMA
            start = None if stage.masked else "start_m"
            self.load_sides(self.q_sides, "Q", "offs_m", bound("Nq"), start)
            self.load_values("do", "DO", "offs_m", bound("Nq"), start)
        else:
            start = None if stage.masked else "start_n"
            self.load_sides(self.k_sides, "K", "offs_n", bound("N"), start)
            self.load_values("v", "V", "offs_n", bound("N"), start)
        for d, name in self.dots.items():
            w.line(f"{name} = tl.dot({_side(d, 0)}, tl.trans({_side(d, 1)}), input_precision=PRECISION)")
        value = self.base2 if self.base2 is not None else self.scores
        derivatives = [*self.pairs.values(), *(self.derivs.values() if keys_fixed and self.tables else ())]
        scope = LetScope(self.ex)
        exact_layout = stage.masked and stage.start is not None and self.mask is not None
        scope.bind(w, [value, self.mask if stage.masked and not exact_layout else None, *derivatives])
        w.line(f"s = {scope(value)}")
        if stage.masked:
            w.line("valid = (offs_m[:, None] < Nq) & (offs_n[None, :] < N)")
            if exact_layout:
                with w.block("if not LAYOUT_EXACT:  # the layout alone decides exact tiles: only the bounds there"):
                    inner = LetScope(self.ex, prefix="u")
                    inner.bind(w, [self.mask])
                    w.line(f"valid = valid & ({inner(self.mask)})")
            elif self.mask is not None:
                w.line(f"valid = valid & ({scope(self.mask)})")
        if keys_fixed and self.norm.row_statistic:
            self.load_row_statistics("offs_m")
        keep = (lambda x: f"tl.where(valid, {x}, 0.0)") if stage.masked else (lambda x: x)
        if self.norm.online_softmax:
            w.line(f"p = {keep('tl.math.exp2(s - stat[:, None])')}")
        elif self.norm.divides_by_row_sum:
            w.line("inv = 1.0 / tl.where(stat == 0.0, 1.0, stat)  # stat: the row's denominator")
            w.line(f"p = {keep('s * inv[:, None]')}")
        else:
            w.line(f"p = {keep('s')}")
        return scope

    def score_gradients(self, scope: LetScope, stage: Stage, keys_fixed: bool) -> None:
        """From the tile's weights: dV (key tile fixed), dS, and each dot pair's gradient accumulated."""
        w, softmax = self.w, self.norm.online_softmax
        if keys_fixed and softmax:
            w.line("dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)")
        elif keys_fixed:  # unnormalized weights stay in fp32, as in the forward
            w.line("dv += tl.dot(tl.trans(p), do.to(tl.float32), input_precision=PRECISION)")
        w.line("dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)")
        w.line("ds = p * (dp - delta[:, None])" if softmax else "ds = (dp - delta[:, None]) * inv[:, None]"
               if self.norm.divides_by_row_sum else "ds = dp")
        for (qv, kv), d in self.pairs.items():
            if stage.masked:
                w.line(f"g = tl.where(valid, ds * ({scope(d)}), 0.0)  # zero where masked: s may be undefined there")
            else:
                w.line(f"g = ds * ({scope(d)})")
            if keys_fixed:
                w.line(f"d{kv} += tl.dot(tl.trans(g.to({qv}.dtype)), {qv}, input_precision=PRECISION)")
            else:
                w.line(f"d{qv} += tl.dot(g.to({kv}.dtype), {kv}, input_precision=PRECISION)")


def _tiled_launchers(w: CodeWriter, norm: Normalizer, plan: Plan, kernel: Kernel, tables: list,
                     diagonals: bool, sink: bool, row_itemsize: int | None) -> None:
    """op_forward (which passes a sink's logits on to the kernel) and op_backward; a sink's own gradient
    is the custom op's (attncc/runtime/triton_ops.py), from the saved output and logsumexp;
    row_itemsize: see held_row_itemsize."""
    sparse = plan.entry.block_sparse
    stats = norm.row_statistic
    sink = ", sink" if sink else ""
    with w.block(f"def op_forward(self, q, k, v, ctx, host{sink}):"):
        w.line('"""The custom op\'s forward: the output and the row statistic its backward reads."""')
        w.line(f"stat = torch.{'empty' if stats else 'zeros'}(*q.shape[:3], device=q.device, dtype=torch.float32)")
        w.line(f"return triton_forward(self, q, k, v, ctx, host{', stat' if stats else ''}{sink}), stat")
    w.line()
    with w.block("def op_backward(self, q, k, v, out, stat, dout, ctx, host):"):
        backward_head(w, "(dq, dk, dv, table gradients by name) from the saved output and row statistic.",
                      fixed_blocks=False)
        w.line("delta = (dout.float() * out.float()).sum(-1)")
        if norm.divides_by_row_sum:
            w.line("delta = torch.where(stat == 0.0, 0.0, delta)  # Z = 0: the forward divides by 1")
        table_of = {"param": "ctx.params", "input": "ctx.inputs"}
        w.line("grads = {" + ", ".join(f"{key(n)}: torch.zeros({table_of[op]}[{key(n)}].shape, device=q.device, "
                                       f"dtype=torch.float32)" for op, n in tables) + "}")
        if sparse:
            w.line(f"tiles = self.cached_tiles(ctx, host.block_layout, q.device, exact={layout_exact(plan)}, "
                   "max_tile=autotune.sparse_tile_limit(q, v))")
            w.line("BLOCK_M = BLOCK_N = tiles.tile")
            w.line("by_key = tiles.transposed(triton.cdiv(N, BLOCK_N))  # the query tiles of each key tile")
        band_line(w, plan)
        w.line("use_tma = tma.usable(q, k, v, dout)  # sm_90, a Triton with descriptors, 16-byte aligned strides")
        w.line()
        _backward_launch(w, plan, kernel, tables, diagonals)
        w.line()
        tile = ", tile=BLOCK_M" if sparse else ""
        w.line(f"sizes = dict(BH=B * H, Nq=Nq, N=N, D=BLOCK_D, E=BLOCK_E{tile})")
        w.line(f"launch(**{autotune_call(plan.entry.autotune_kind + ':backward', row_itemsize)})")
        w.line("return dq, dk, dv, grads")
    w.line()
    w.line(f"GRAD_TABLES = ({''.join(f'{key(n)}, ' for _, n in tables)})  # tables the backward kernels differentiate")


def _backward_launch(w: CodeWriter, plan: Plan, kernel: Kernel, tables: list, diagonals: bool) -> None:
    """`launch(**config)`: both backward kernels with one autotune candidate of `<kind>:backward` (the
    block-sparse tile is the layout's: only warps and stages are free)."""
    sparse, token = plan.entry.block_sparse, plan.entry.token_tiles
    listed = sparse or token
    vals = "".join(f"{v}, " for v in kernel.arg_values())
    gvals = "".join(f"grads[{key(n)}], " for _, n in tables)
    tail = (f"ctx.scale, {band_launch(plan)}BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, BLOCK_E=BLOCK_E,"
            + (" LAYOUT_EXACT=tiles.exact," if listed else "") + " PRECISION=precision, USE_TMA=use_tma,")
    diagonal = " BLOCK_DIAG=triton.next_power_of_2(BLOCK_M + BLOCK_N - 1)," if diagonals else ""
    with w.block(f"def launch({'' if sparse else 'BLOCK_M, BLOCK_N, '}num_warps, num_stages):"):
        if tables:  # autotune launches every candidate: the atomics must start from 0 each time
            w.line("for g in grads.values():")
            w.line("    g.zero_()")
        if token:
            w.line("lists = token_tiles(ctx, B, BLOCK_M, BLOCK_N, q.device)  # the forward's, when its tiles were these")
            w.line("tiles, by_key = lists.rows, lists.cols")
        w.line("# dK, dV: one program per (key tile, b, kv head), over the GROUP query heads reading it")
        w.line(f"_attn_bwd_dkdv[(triton.cdiv(N, BLOCK_N), B * Hkv)]({bwd_launch('KV', out=False)}, {vals}{gvals}stat, "
               f"delta,{' *by_key.tensors(),' if listed else ''}")
        w.line(f"    {tail}{diagonal} num_warps=num_warps, num_stages=num_stages)")
        w.line(f"_attn_bwd_dq[(triton.cdiv(Nq, BLOCK_M), B * H)]({bwd_launch('Q', out=False)}, {vals}stat, delta,"
               f"{' *tiles.tensors(),' if listed else ''}")
        w.line(f"    {tail} num_warps=num_warps, num_stages=num_stages)")


def table_atomics(w: CodeWriter, scope: LetScope, stage: Stage, ex: KernelExpr, op: str, name: str,
                  derivs: dict, symbols: dict) -> None:
    """dt[idx] += dS o ds/dt[idx] for every lookup of table `name` in the score (printed in the tile's scope),
    the tile's values summed over the pairs that share an entry before the atomics: one atomic per tile
    when idx reads neither i nor j, per key (query) when it reads only j (i), per diagonal when it reads
    them only through i - j (a Toeplitz table: `_diagonal_sums` over the BLOCK_M + BLOCK_N - 1
    diagonals), else one per pair."""
    grad = f"G{op[0].upper()}_{name}"
    for leaf, d in derivs.items():
        if leaf.op != op or leaf.value != name or d is None:
            continue
        w.line(f"c = tl.where(valid, ds * ({scope(d)}), 0.0)" if stage.masked else f"c = ds * ({scope(d)})")
        reads = {e.value for arg in leaf.args for e in arg.walk() if e.op == "var"} & {"i", "j"}
        along = lambda **variables: KernelExpr(ex.dots, ex.sizes,
                                               variables={**TritonExpr.TILE_VARIABLES, **variables}).offset(leaf)
        if not reads:
            w.line(f"tl.atomic_add({grad} + {ex.offset(leaf, [scope(x) for x in leaf.args])}, tl.sum(tl.sum(c, 1), 0))"
                   "  # one entry per tile")
        elif reads == {"j"}:
            w.line(f"tl.atomic_add({grad} + {along(j='offs_n')}, tl.sum(c, 0), mask=offs_n < N)  # one entry per key")
        elif reads == {"i"}:
            w.line(f"tl.atomic_add({grad} + {along(i='offs_m')}, tl.sum(c, 1), mask=offs_m < Nq)  # one entry per query")
        elif all(classify_modulation(arg, symbols).kind in ("full", "toeplitz") for arg in leaf.args):
            w.line(f"tl.atomic_add({grad} + {along(i='diag', j='0')}, _diagonal_sums(c, BLOCK_M, BLOCK_N, BLOCK_DIAG), "
                   "mask=tl.arange(0, BLOCK_DIAG) < BLOCK_M + BLOCK_N - 1)  # one entry per diagonal")
        else:
            w.line(f"tl.atomic_add({grad} + {ex.offset(leaf, [scope(x) for x in leaf.args])} + tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32), c"
                   + (", mask=valid)" if stage.masked else ")"))


def diagonal_tables(tables: list, derivs: dict, symbols: dict) -> bool:
    """Whether some differentiated table is read through i - j only (its gradient is summed by diagonals)."""
    def by_diagonals(leaf: TExpr) -> bool:
        reads = {e.value for arg in leaf.args for e in arg.walk() if e.op == "var"} & {"i", "j"}
        return reads == {"i", "j"} and all(classify_modulation(arg, symbols).kind in ("full", "toeplitz")
                                           for arg in leaf.args)
    return any(leaf.op == op and leaf.value == name and d is not None and by_diagonals(leaf)
               for op, name in tables for leaf, d in derivs.items())


DIAGONAL_SUMS = """\
@triton.jit
def _diagonal_sums(c, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DIAG: tl.constexpr):
    \"\"\"Sums of c [BLOCK_M, BLOCK_N] along its diagonals: entry k adds c[r, r + BLOCK_N - 1 - k] over the rows r
    (rows minus columns = k - BLOCK_N + 1), read by a gather of each row's shifted columns.\"\"\"
    rows = tl.arange(0, BLOCK_M)[:, None]
    col = rows + (BLOCK_N - 1) - tl.arange(0, BLOCK_DIAG)[None, :]
    inside = (col >= 0) & (col < BLOCK_N)
    return tl.sum(tl.where(inside, tl.gather(c, tl.minimum(tl.maximum(col, 0), BLOCK_N - 1), 1), 0.0), 0)
"""


TILE_BACKWARD = TritonBackward(tile_backward_support, tile_backward_line, emit_tiled_backward)
