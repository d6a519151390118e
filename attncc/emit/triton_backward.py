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
the block layout transposed), dQ per query tile over its key tiles, as the forward.

Linear lowerings: triton_backward_linear.py.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from ..lang.derivative import NotDifferentiable, diff, leaves
from ..lang.expr import TExpr
from ..lang.features import FEATURE_MAPS
from ..ir.graph import Graph, attention_node, attention_of
from ..lang.normalizers import NORMALIZERS, Normalizer
from ..passes.quadratic import quadratic_form
from ..plan.select import Plan
from .exprs import band_bounds, key, name_dots
from .let import LetScope
from .triton import (HELPERS, kernel_common_args, helpers_of, Kernel, KernelExpr, launch_common,
                     launcher_head, load_rows, program_prologue, row_feature, size_arg, sizes_used, band_line, key_tile_loop,
                     tile_start)
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
        for leaf in leaves(scores):
            diff(scores, leaf)
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
            w.line("tiles = self.cached_tiles(ctx, host.block_layout, q.device)  # once per length")
        w.line(f"return triton_ops.attention(q, k, v, ctx, host{', tiles' if sparse else ''})")
    return backward_line(graph, plan)


def bwd_args() -> str:
    return kernel_common_args() + ", DO, DQ, DK, DV, stride_dob, stride_doh, stride_dom, stride_dod"


def bwd_launch() -> str:
    return launch_common() + ", dout, dq, dk, dv, *dout.stride()"


def bwd_prologue(w: CodeWriter, per_bh_only: bool = False) -> None:
    program_prologue(w, per_bh_only)
    w.line("DO += off_b * stride_dob + off_h * stride_doh")
    w.line("DQ += off_b * stride_qb + off_h * stride_qh  # gradients are laid out as q, k, v")
    w.line("DK += off_b * stride_kb + off_h * stride_kh")
    w.line("DV += off_b * stride_vb + off_h * stride_vh")


def backward_head(w: CodeWriter, doc: str) -> None:
    w.line(f'"""{doc}"""')
    launcher_head(w, allocate_out=False)
    w.line("dout, out = dout.contiguous(), out.contiguous()")
    w.line("dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)")


def store_tile(w: CodeWriter, ptr: str, var: str, offs: str, limit: str, cols: str, width: str, like: str) -> None:
    w.line(f"tl.store({ptr} + {offs}[:, None] * stride_{like}m + {cols}[None, :] * stride_{like}d, "
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
    _tiled_launchers(w, tiles.norm, plan, tiles.kernel, tiles.tables)


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
        self.derivs = {leaf: diff(self.scores, leaf) for leaf in leaves(self.scores)}
        self.pairs = _pair_derivatives(self.scores, self.derivs)
        self.q_sides = {_side(d, 0): row_feature(d.args[0]) for d in self.dots}
        self.k_sides = {_side(d, 1): row_feature(d.args[1]) for d in self.dots}
        self.tables = _grad_tables(self.scores)
        self.sparse = plan.entry.block_sparse

    def emit_helpers(self) -> None:
        """The Triton helpers the derivatives call that the forward's kernel did not already bring."""
        derivs = self.derivs.values()
        for h in sorted({h for d in derivs if d is not None for h in helpers_of(d)} - set(self.kernel.helpers)):
            self.w.lines_of(HELPERS[h])
            self.w.line()

    @contextmanager
    def kernel_def(self, name: str, args: str, doc: str):
        """A backward kernel's signature, docstring and prologue; the body is written inside the block."""
        w = self.w
        extra = "".join(f"{a}, " for a in self.kernel.arg_names())
        w.line("@triton.jit")
        with w.block(f"def {name}({bwd_args()}, {extra}{args}sm_scale, band_lo, band_hi,"):
            w.line("BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,")
            w.line("PRECISION: tl.constexpr):")
            w.line(f'"""{doc}"""')
            bwd_prologue(w)
            yield
        w.line()

    def load_sides(self, sides: dict, ptr: str, offs: str, limit: str) -> None:
        for var, feature in sides.items():
            load_rows(self.w, var, ptr, offs, limit, "offs_d", "D", feature=feature)

    def emit_dkdv_kernel(self) -> None:
        """`_attn_bwd_dkdv`: one key tile over the query tiles that see it; dK, dV and the table gradients."""
        w = self.w
        grads = "".join(f"G{op[0].upper()}_{name}, " for op, name in self.tables)
        lists = "ColPtr, Rows, " if self.sparse else "ColCount, ColIndex, " if self.plan.entry.token_tiles else ""
        with self.kernel_def("_attn_bwd_dkdv", f"{grads}Stat, Delta, {lists}",
                             "dK, dV (and table gradients) of one key tile: weights recomputed from the saved row "
                             "statistic."):
            w.line("pid_n = pid_m  # this grid's first axis walks key tiles")
            w.line("Stat += pid_bh * Nq")
            w.line("Delta += pid_bh * Nq")
            w.line("offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)")
            self.load_sides(self.k_sides, "K", "offs_n", "N")
            load_rows(w, "v", "V", "offs_n", "N", "offs_e", "E")
            k_accs = [f"d{kv}" for kv in dict.fromkeys(kv for _, kv in self.pairs)]
            for acc in k_accs:
                w.line(f"{acc} = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)")
            w.line("dv = tl.zeros([BLOCK_N, BLOCK_E], dtype=tl.float32)")
            with w.block(query_tile_loop(w, self.plan)):
                if self.sparse:
                    w.line("start_m = tl.load(Rows + idx) * BLOCK_M")
                if self.plan.entry.token_tiles:
                    w.line("start_m = tl.load(ColIndex + col * tl.cdiv(Nq, BLOCK_M) + idx) * BLOCK_M")
                w.line("offs_m = start_m + tl.arange(0, BLOCK_M)")
                scope = self.recompute_weights(keys_fixed=True)
                self.score_gradients(scope, keys_fixed=True)
                for op, name in self.tables:
                    _table_atomics(w, scope, self.ex, op, name, self.derivs)
            _feature_grad(w, "dk", k_accs, "BLOCK_N", "K", "offs_n", "N")
            store_tile(w, "DK", "dk", "offs_n", "N", "offs_d", "D", "k")
            store_tile(w, "DV", "dv", "offs_n", "N", "offs_e", "E", "v")

    def emit_dq_kernel(self) -> None:
        """`_attn_bwd_dq`: one query tile over the key tiles the forward visits; dQ."""
        w = self.w
        lists = "RowPtr, Cols, " if self.sparse else "RowCount, RowIndex, " if self.plan.entry.token_tiles else ""
        with self.kernel_def("_attn_bwd_dq", f"Stat, Delta, {lists}",
                             "dQ of one query tile over the key tiles the forward visits."):
            w.line("offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)")
            self.load_sides(self.q_sides, "Q", "offs_m", "Nq")
            load_rows(w, "do", "DO", "offs_m", "Nq", "offs_e", "E")
            if self.norm.row_statistic:
                w.line("stat = tl.load(Stat + pid_bh * Nq + offs_m, mask=offs_m < Nq, other=0.0)")
                w.line("delta = tl.load(Delta + pid_bh * Nq + offs_m, mask=offs_m < Nq, other=0.0)")
            q_accs = [f"d{qv}" for qv in dict.fromkeys(qv for qv, _ in self.pairs)]
            for acc in q_accs:
                w.line(f"{acc} = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)")
            with w.block(key_tile_loop(w, self.plan, "Row")):
                start = tile_start(self.plan, "Row")
                if start is not None:
                    w.line(f"start_n = {start}")
                w.line("offs_n = start_n + tl.arange(0, BLOCK_N)")
                self.score_gradients(self.recompute_weights(keys_fixed=False), keys_fixed=False)
            _feature_grad(w, "dq", q_accs, "BLOCK_M", "Q", "offs_m", "Nq")
            store_tile(w, "DQ", "dq", "offs_m", "Nq", "offs_d", "D", "q")

    def recompute_weights(self, keys_fixed: bool) -> LetScope:
        """Inside a tile loop: the other side's rows, the dots, scores `s`, `valid` and the weights `p` of
        one (query tile, key tile); returns the scope of the tile's expressions (the table derivatives
        too, with the key tile fixed). keys_fixed: the loop walks query tiles for one key tile."""
        w = self.w
        if keys_fixed:
            self.load_sides(self.q_sides, "Q", "offs_m", "Nq")
            load_rows(w, "do", "DO", "offs_m", "Nq", "offs_e", "E")
        else:
            self.load_sides(self.k_sides, "K", "offs_n", "N")
            load_rows(w, "v", "V", "offs_n", "N", "offs_e", "E")
        for d, name in self.dots.items():
            w.line(f"{name} = tl.dot({_side(d, 0)}, tl.trans({_side(d, 1)}), input_precision=PRECISION)")
        scope = LetScope(self.ex)
        scope.bind(w, [self.scores, self.mask, *self.pairs.values(),
                       *(self.derivs.values() if keys_fixed and self.tables else ())])
        w.line(f"s = {scope(self.scores)}")
        valid = "(offs_m[:, None] < Nq) & (offs_n[None, :] < N)"
        w.line(f"valid = {valid} & ({scope(self.mask)})" if self.mask is not None else f"valid = {valid}")
        if keys_fixed and self.norm.row_statistic:
            w.line("stat = tl.load(Stat + offs_m, mask=offs_m < Nq, other=0.0)")
            w.line("delta = tl.load(Delta + offs_m, mask=offs_m < Nq, other=0.0)")
        if self.norm.online_softmax:
            w.line("p = tl.where(valid, tl.exp(s - stat[:, None]), 0.0)")
        elif self.norm.divides_by_row_sum:
            w.line("inv = 1.0 / tl.where(stat == 0.0, 1.0, stat)  # stat: the row's denominator")
            w.line("p = tl.where(valid, s * inv[:, None], 0.0)")
        else:
            w.line("p = tl.where(valid, s * 1.0, 0.0)")
        return scope

    def score_gradients(self, scope: LetScope, keys_fixed: bool) -> None:
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
            w.line(f"g = tl.where(valid, ds * ({scope(d)}), 0.0)  # zero where masked: s may be undefined there")
            if keys_fixed:
                w.line(f"d{kv} += tl.dot(tl.trans(g.to({qv}.dtype)), {qv}, input_precision=PRECISION)")
            else:
                w.line(f"d{qv} += tl.dot(g.to({kv}.dtype), {kv}, input_precision=PRECISION)")


def query_tile_loop(w: CodeWriter, plan: Plan) -> str:
    """The loop header over the query tiles that see key tile pid_n (the layout transposed, band, or all)."""
    if plan.entry.token_tiles:
        w.line("# layout built per call: the query tiles that visit this key tile (the layout transposed)")
        w.line("col = off_b * tl.cdiv(N, BLOCK_N) + pid_n")
        return "for idx in range(0, tl.load(ColCount + col)):"
    if plan.entry.block_sparse:
        w.line("# block-sparse: the query tiles whose layout rows list this key tile (the layout transposed)")
        return "for idx in range(tl.load(ColPtr + pid_n), tl.load(ColPtr + pid_n + 1)):"
    if any(b is not None for b in band_bounds(plan.mask)):
        w.line(f"# mask is {plan.mask.describe()}: only query tiles inside the band are visited")
        w.line("lo = tl.maximum(pid_n * BLOCK_N + band_lo, 0) // BLOCK_M * BLOCK_M")
        w.line("hi = tl.minimum(pid_n * BLOCK_N + BLOCK_N + band_hi, Nq)")
        return "for start_m in range(lo, hi, BLOCK_M):"
    return "for start_m in range(0, Nq, BLOCK_M):"


def _tiled_launchers(w: CodeWriter, norm: Normalizer, plan: Plan, kernel: Kernel, tables: list) -> None:
    sparse = plan.entry.block_sparse
    stats = norm.row_statistic
    with w.block("def op_forward(self, q, k, v, ctx, host):"):
        w.line('"""The custom op\'s forward: the output and the row statistic its backward reads."""')
        w.line(f"stat = torch.{'empty' if stats else 'zeros'}(*q.shape[:3], device=q.device, dtype=torch.float32)")
        w.line(f"return triton_forward(self, q, k, v, ctx, host{', stat' if stats else ''}), stat")
    w.line()
    with w.block("def op_backward(self, q, k, v, out, stat, dout, ctx, host):"):
        backward_head(w, "(dq, dk, dv, table gradients by name) from the saved output and row statistic.")
        w.line("delta = (dout.float() * out.float()).sum(-1)")
        if norm.divides_by_row_sum:
            w.line("delta = torch.where(stat == 0.0, 0.0, delta)  # Z = 0: the forward divides by 1")
        table_of = {"param": "ctx.params", "input": "ctx.inputs"}
        w.line("grads = {" + ", ".join(f"{key(n)}: torch.zeros({table_of[op]}[{key(n)}].shape, device=q.device, "
                                       f"dtype=torch.float32)" for op, n in tables) + "}")
        if sparse:
            w.line("BLOCK_M, row_ptr, cols = self.cached_tiles(ctx, host.block_layout, q.device)")
            w.line("BLOCK_N = BLOCK_M")
            w.line("col_ptr, rows = triton_ops.transpose_tiles(row_ptr, cols, triton.cdiv(N, BLOCK_N))")
        if plan.entry.token_tiles:
            w.line("tiles = token_tiles(ctx, B, BLOCK_M, BLOCK_N, q.device)  # the forward's, when its tiles were these")
        band_line(w, plan)
        vals = "".join(f"{v}, " for v in kernel.arg_values())
        gvals = "".join(f"grads[{key(n)}], " for _, n in tables)
        cols, rows = (" tiles.col_count, tiles.col_index,", " tiles.row_count, tiles.row_index,") \
            if plan.entry.token_tiles else (" col_ptr, rows,", " row_ptr, cols,") if sparse else ("", "")
        tail = "ctx.scale, band_lo, band_hi, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, BLOCK_E=BLOCK_E,"
        w.line(f"_attn_bwd_dkdv[(triton.cdiv(N, BLOCK_N), B * H)]({bwd_launch()}, {vals}{gvals}stat, delta,{cols}")
        w.line(f"    {tail} PRECISION=precision)")
        w.line(f"_attn_bwd_dq[(triton.cdiv(Nq, BLOCK_M), B * H)]({bwd_launch()}, {vals}stat, delta,{rows}")
        w.line(f"    {tail} PRECISION=precision)")
        w.line("return dq, dk, dv, grads")
    w.line()
    w.line(f"GRAD_TABLES = ({''.join(f'{key(n)}, ' for _, n in tables)})  # tables the backward kernels differentiate")


def _table_atomics(w: CodeWriter, scope: LetScope, ex: KernelExpr, op: str, name: str, derivs: dict) -> None:
    """dt[idx] += dS o ds/dt[idx] for every lookup of table `name` in the score (printed in the tile's scope)."""
    grad = f"G{op[0].upper()}_{name}"
    for leaf, d in derivs.items():
        if leaf.op != op or leaf.value != name or d is None:
            continue
        w.line(f"c = tl.where(valid, ds * ({scope(d)}), 0.0)")
        if any(e.op == "var" and e.value in ("i", "j") for arg in leaf.args for e in arg.walk()):
            w.line(f"tl.atomic_add({grad} + {ex.offset(leaf, [scope(x) for x in leaf.args])} + tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32), c, "
                   "mask=valid)")
        else:
            w.line(f"tl.atomic_add({grad} + {ex.offset(leaf, [scope(x) for x in leaf.args])}, tl.sum(tl.sum(c, 1), 0))  # one entry per tile")


TILE_BACKWARD = TritonBackward(tile_backward_support, tile_backward_line, emit_tiled_backward)
