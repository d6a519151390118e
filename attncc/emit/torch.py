"""Emit the torch backend: hole functions plus a forward that calls an attncc.rt skeleton.

The pieces here are shared; each lowering (attncc/lowerings/) composes its own forward from them."""
from __future__ import annotations

from typing import Callable

from ..lang.expr import TExpr
from ..lang.features import FEATURE_MAPS
from ..ir.graph import Graph, attention_node, attention_of, expr_of
from ..lang.normalizers import NORMALIZERS
from ..passes.quadratic import quadratic_form
from ..plan.select import Plan
from .exprs import TorchExpr, band_bounds, brief, name_dots, py_size_expr
from .let import let_expr
from .writer import CodeWriter


def row_through_map(t: TExpr, x: str) -> str:
    """A row through its map; random-feature rows arrive already mapped (see attncc/lang/features.py)."""
    return f"feature_{t.value}({x})" if t.op == "feature" and t.value in FEATURE_MAPS else x


def emit_features(w: CodeWriter, maps: list[str]) -> None:
    for name in sorted(set(maps)):
        with w.block(f"def feature_{name}(x):"):
            w.line(f'"""{FEATURE_MAPS[name].doc}"""')
            w.line(f"return {FEATURE_MAPS[name].torch_expr}")
        w.line()


def feature_maps_used(*exprs: TExpr | None) -> list[str]:
    """The elementwise maps to emit (random-feature maps are applied by the module, not here)."""
    return [e.value for t in exprs if t is not None for e in t.walk() if e.op == "feature" and e.value in FEATURE_MAPS]


def random_features_note(w: CodeWriter, graph: Graph) -> None:
    for phi in graph.signature.random_features:
        w.line(f"# q and k arrive as {phi.fn} random features {phi.name}(q), {phi.name}(k) ({phi.out_dim} columns),")
        w.line("# computed by the module (CompiledAttention.featurize) from its seeded projection buffer")


def key_range_lines(plan: Plan) -> list[str]:
    """Keys that queries [q0, q1) may see under a band lo <= i - j <= hi: [q0 - hi, q1 - lo)."""
    lo, hi = band_bounds(plan.mask)
    return [f"return {f'q0 - ({hi})' if hi else '0'}, {f'q1 - ({lo})' if lo else 'ctx.N'}"]


def emit_pair_holes(w: CodeWriter, name: str, doc: str, value: TExpr, mask_name: str, mask_doc: str,
                    mask: TExpr | None) -> None:
    """`name(qc, kc, i, j, h, ctx, keep)`: a score or weight over (query, key) tiles, and, if there is a
    mask, `mask_name(i, j, h, ctx)`."""
    dots = name_dots(value)
    with w.block(f"def {name}(qc, kc, i, j, h, ctx, keep):"):
        w.line(f'"""{doc}"""')
        for d, dot in dots.items():
            qc, kc = row_through_map(d.args[0], 'qc'), row_through_map(d.args[1], 'kc')  # kc: H // ctx.group heads
            w.line(f"{dot} = rt.keep_grad(rt.grouped_matmul({qc}, {kc}.transpose(-1, -2)), keep)")
        w.line(f"return {let_expr(w, TorchExpr(dots), value)}")
    w.line()
    if mask is not None:
        with w.block(f"def {mask_name}(i, j, h, ctx):"):
            w.line(f'"""{mask_doc}"""')
            w.line(f"return torch.as_tensor({let_expr(w, TorchExpr(mask=True), mask)}, device=i.device)")
        w.line()


def emit_score_holes(w: CodeWriter, graph: Graph) -> str:
    """The feature maps, `scores` and `mask` holes of a tiled skeleton over the attention node read
    as quadratic attention (quadratic_form); returns the skeleton's common arguments."""
    att = attention_node(graph)
    scores, mask = quadratic_form(graph, attention_of(graph))
    emit_features(w, feature_maps_used(scores))
    emit_pair_holes(w, "scores", f"{NORMALIZERS[att.attr('normalize')].score_name}: {brief(scores)}", scores,
                    "mask", brief(mask) if mask is not None else "", mask)
    mask_arg = "mask" if mask is not None else "None"
    common = f"scores=scores, mask={mask_arg}, normalize={att.attr('normalize')!r}, eps={att.attr('eps')!r}"
    if att.attr("sink") is None:
        return common
    emit_sink_hole(w, att.attr("sink"))
    return common + ", sink=sink"


def emit_sink_hole(w: CodeWriter, sink: TExpr) -> None:
    """`sink(i, h, ctx)`: the softmax's extra logit of each query row ([B|1, H|1, rows, 1]), which joins
    the row's denominator and takes no value; differentiable in the tables it reads."""
    with w.block("def sink(i, h, ctx):"):
        w.line(f'"""The sink logit of query rows i: {brief(sink)}"""')
        w.line(f"return rt.as_4d({let_expr(w, TorchExpr(), sink)}, ctx.dtype)")
    w.line()


def emit_key_range(w: CodeWriter, plan: Plan) -> None:
    with w.block("def key_range(q0, q1, ctx):"):
        w.line(f'"""Keys visible from queries [q0, q1): mask is {plan.mask.describe()}."""')
        for ln in key_range_lines(plan):
            w.line(ln)
    w.line()


def emit_tiled_torch(w: CodeWriter, graph: Graph, plan: Plan, call: Callable[[str], list[str]]) -> None:
    """Holes, `key_range`, and a `forward_torch` whose body is call(common skeleton arguments)."""
    common = emit_score_holes(w, graph)
    emit_key_range(w, plan)
    with w.block("def forward_torch(self, q, k, v, ctx):"):
        random_features_note(w, graph)
        for line in call(common):
            w.line(line)


def emit_block_layout(w: CodeWriter, plan: Plan) -> None:
    """The layout function: the block predicate at the first token of every block, cut to the
    blocks that meet the band proven for the whole mask."""
    layout, ex = plan.attrs["block_layout"], TorchExpr(mask=True)
    lo, hi = band_bounds(plan.mask)
    with w.block("def block_layout(ctx):"):
        w.line(f'"""(b, L): L[I, J] = {brief(layout.predicate)} at i = I b, j = J b; exact for blocks of b."""')
        w.line(f"b = {let_expr(w, ex, layout.block)}")
        w.line("i = torch.arange(0, ctx.Nq, b, dtype=torch.int32).view(-1, 1)")
        w.line("j = torch.arange(0, ctx.N, b, dtype=torch.int32).view(1, -1)")
        w.line(f"layout = torch.as_tensor({let_expr(w, ex, layout.predicate)}).expand(i.shape[0], j.shape[1])")
        if lo or hi:
            w.line(f"layout = layout & rt.within_band(i, j, b, {lo}, {hi})  # mask is {plan.mask.describe()}")
        w.line("return b, layout")
    w.line()


def kernel_factors(graph: Graph) -> list:
    """The operands of the output's kernelized attend node: phi(q), phi(k), then its factors."""
    return [expr_of(graph, o) for o in graph.operands(attention_of(graph))]


def emit_kernelized(w: CodeWriter, graph: Graph, plan: Plan,
                    tables: Callable[[CodeWriter, list], None] | None,
                    body: Callable[[CodeWriter, str], None]) -> None:
    """Feature maps, the lowering's own tables (tables(w, operand exprs)), the modulation / decay
    factors, then `forward_torch` with pq, pk formed and the lowering's body(w, common arguments)."""
    exprs = kernel_factors(graph)
    emit_features(w, feature_maps_used(*exprs[:2]))
    if tables is not None:
        tables(w, exprs)
    ex = TorchExpr()
    modulated, decayed = plan.attrs.get("modulated"), plan.attrs.get("decayed")
    factors = [("modulation", "factor of the kernel with no i, j", exprs[2])] if modulated else []
    factors += [("decay", "per-step decay gamma of M = A gamma^(i - j)", exprs[3])] if decayed else []
    for name, what, m in factors:
        with w.block(f"def {name}(ctx):"):
            w.line(f'"""{what}: {brief(m)}"""')
            w.line("i = j = torch.zeros((1, 1, 1, 1), dtype=torch.int32)")
            w.line("h = torch.arange(ctx.H, dtype=torch.int32).view(1, ctx.H, 1, 1)")
            w.line(f"return rt.as_4d({let_expr(w, ex, m)}, ctx.dtype)")
        w.line()
    with w.block("def forward_torch(self, q, k, v, ctx):"):
        random_features_note(w, graph)
        w.line(f"pq, pk = {row_through_map(exprs[0], 'q')}, {row_through_map(exprs[1], 'k')}")
        att = attention_node(graph)
        body(w, f"normalize={att.attr('normalize')!r}, eps={att.attr('eps')!r}")


def emit_toeplitz_f(w: CodeWriter, exprs: list) -> None:
    """toeplitz_f(ctx): the kernel's f(i - j) on every offset (the fft lowering's table)."""
    f, ex = exprs[2], TorchExpr()
    with w.block("def toeplitz_f(ctx):"):
        w.line(f'"""f(d) for d = i - j in -(N-1) .. Nq-1: {brief(f)}"""')
        w.line("i = torch.arange(ctx.Nq + ctx.N - 1, dtype=torch.int32).view(1, 1, -1, 1)  # i = d + N - 1 at j = N - 1")
        w.line("j = torch.full((1, 1, 1, 1), ctx.N - 1, dtype=torch.int32)")
        w.line("h = torch.arange(ctx.H, dtype=torch.int32).view(1, ctx.H, 1, 1)")
        w.line(f"return rt.toeplitz_row({let_expr(w, ex, f)}, ctx.Nq + ctx.N - 1, ctx.dtype)")
    w.line()


def emit_linear_call(w: CodeWriter, plan: Plan, function: str, common: str) -> None:
    """The return line of the linear skeletons: rt.<function>(pq, pk, v, modulation, decay, ...)."""
    mod = "modulation(ctx).to(q.device)" if plan.attrs.get("modulated") else "None"
    dec = ", decay=decay(ctx).to(q.device)" if plan.attrs.get("decayed") else ""
    w.line(f"return rt.{function}(pq, pk, v, modulation={mod}{dec}, {common})")


def emit_grid_width(w: CodeWriter, plan: Plan) -> None:
    """grid_width(ctx): the columns of the token grid (fft2, rings)."""
    form, ex = plan.attrs["grid"], TorchExpr()
    with w.block("def grid_width(ctx):"):
        w.line(f'"""Tokens lie row-major on a grid of this many columns: {form.describe()}."""')
        w.line(f"width = int({let_expr(w, ex, form.width)})")
        w.line("if width < 1:")
        w.line("    raise ValueError(f'grid width must be >= 1, got {width}')")
        w.line("return width")
    w.line()


def emit_grid_f(w: CodeWriter, plan: Plan, exprs: list) -> None:
    """grid_width(ctx), and grid_f(ctx): f at one representative (i, j) per grid offset (fft2)."""
    emit_grid_width(w, plan)
    f, ex = exprs[2], TorchExpr()
    with w.block("def grid_f(ctx):"):
        w.line(f'"""f(dr, dc) on every grid offset: {brief(f)}"""')
        w.line("width = grid_width(ctx)")
        w.line("dr, dc = rt.grid_offsets(ctx.Nq, ctx.N, width)")
        w.line("i, j = rt.offset_pairs(dr, dc, width)")
        w.line("h = torch.arange(ctx.H, dtype=torch.int32).view(1, ctx.H, 1, 1)")
        w.line(f"return rt.as_4d({let_expr(w, ex, f)}, ctx.dtype).expand(-1, -1, dr.shape[2], dc.shape[3])")
    w.line()


def emit_ring_g(w: CodeWriter, plan: Plan, exprs: list) -> None:
    """grid_width(ctx), and ring_g(ctx): f at one representative (i, j) per (query, ring) (rings)."""
    emit_grid_width(w, plan)
    form, f, ex = plan.attrs["grid"], exprs[2], TorchExpr()
    with w.block("def ring_g(ctx):"):
        w.line(f'"""g(i, rho) for rho = 0 .. T, past which rings share ring T\'s weight: {brief(f)}"""')
        w.line("width = grid_width(ctx)")
        w.line(f"T = rt.ring_extent(ctx.Nq, ctx.N, width, {form.metric!r})")
        if form.saturation is not None:
            w.line(f"T = max(0, min(T, {py_size_expr(form.saturation)}))  # proven saturation")
        w.line("i = torch.arange(ctx.Nq, dtype=torch.int32).view(1, 1, -1, 1)")
        w.line("rho = torch.arange(T + 1, dtype=torch.int32).view(1, 1, 1, -1)")
        w.line("i, j = rt.ring_pairs(i, rho, width)")
        w.line("h = torch.arange(ctx.H, dtype=torch.int32).view(1, ctx.H, 1, 1)")
        w.line(f"return rt.as_4d({let_expr(w, ex, f)}, ctx.dtype).expand(-1, -1, ctx.Nq, T + 1)")
    w.line()


def emit_approx(w: CodeWriter, graph: Graph, call: str, random_draw: bool) -> None:
    """A declared approximation of softmax: one call of its algorithm (attncc/rt/approx.py); `call`
    is a template over the approximation's options, `random_draw` whether it reads ctx.noise."""
    approx = attention_node(graph).attr("approx")
    with w.block("def forward_torch(self, q, k, v, ctx):"):
        w.line(f'"""softmax(q k^T * scale) v approximated by {approx}."""')
        if random_draw:
            w.line("# ctx.noise: this call's random draw (seeded; redrawn per training call when redraw=1)")
        w.line(f"return {call.format(**approx.options)}.to(v.dtype)")
