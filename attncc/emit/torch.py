"""Emit the torch backend: hole functions plus a forward that calls a torch_algorithms skeleton."""
from __future__ import annotations


from ..lang.expr import TExpr, fmt
from ..lang.features import FEATURE_MAPS
from ..lang.standard import DEFAULT_LOGITS
from ..ir.graph import Graph, attention_of, expr_of
from ..passes.quadratic import quadratic_form
from ..plan.select import Plan
from .exprs import TorchExpr, band_bounds, key, name_dots, py_size_expr
from .writer import CodeWriter


def _row(t: TExpr, x: str) -> str:
    """A row through its map; random-feature rows arrive already mapped (see features.py)."""
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
    ex = TorchExpr(dots)
    with w.block(f"def {name}(qc, kc, i, j, h, ctx, keep):"):
        w.line(f'"""{doc}"""')
        for d, dot in dots.items():
            w.line(f"{dot} = rt.keep_grad({_row(d.args[0], 'qc')} @ {_row(d.args[1], 'kc')}.transpose(-1, -2), keep)")
        w.line(f"return {ex(value)}")
    w.line()
    if mask is not None:
        with w.block(f"def {mask_name}(i, j, h, ctx):"):
            w.line(f'"""{mask_doc}"""')
            w.line(f"return torch.as_tensor({TorchExpr(mask=True)(mask)}, device=i.device)")
        w.line()


def emit_tiled(w: CodeWriter, graph: Graph, plan: Plan) -> None:
    att = graph.node(attention_of(graph))
    normalize = att.attr("normalize")
    scores, mask = quadratic_form(graph, attention_of(graph))
    emit_pair_holes(w, "scores", f'{"logits" if normalize == "softmax" else "weights"}: {fmt(scores)}', scores,
                    "mask", fmt(mask) if mask is not None else "", mask)
    mask_arg = "mask" if mask is not None else "None"
    common = f"scores=scores, mask={mask_arg}, normalize={normalize!r}, eps={att.attr('eps')!r}"
    if plan.lowering == "block_sparse":
        emit_block_layout(w, plan)
        with w.block("def forward_torch(self, q, k, v, ctx):"):
            w.line("block, layout = self.cached_layout(ctx, block_layout, q.device)")
            w.line(f"return rt.block_sparse_attention(q, k, v, ctx, layout=layout, block=block, {common})")
        return
    with w.block("def key_range(q0, q1, ctx):"):
        w.line(f'"""Keys visible from queries [q0, q1): mask is {plan.mask.describe()}."""')
        for ln in key_range_lines(plan):
            w.line(ln)
    w.line()
    plain = scores == DEFAULT_LOGITS and plan.mask.kind in ("full", "causal")
    with w.block("def forward_torch(self, q, k, v, ctx):"):
        random_features_note(w, graph)
        if plain and normalize == "softmax":
            w.line("# plain softmax(q k^T / sqrt(d)) with a full or causal mask: torch's fused SDPA kernels")
            w.line(f"return rt.sdpa_attention(q, k, v, causal={plan.mask.kind == 'causal'})")
            return
        w.line(f"return rt.tiled_attention(q, k, v, ctx, key_range=key_range, {common})")


def emit_block_layout(w: CodeWriter, plan: Plan) -> None:
    """The layout function: the block predicate at the first token of every block, cut to the
    blocks that meet the band proven for the whole mask."""
    layout, ex = plan.attrs["block_layout"], TorchExpr(mask=True)
    lo, hi = band_bounds(plan.mask)
    with w.block("def block_layout(ctx):"):
        w.line(f'"""(b, L): L[I, J] = {fmt(layout.predicate)} at i = I b, j = J b; exact for blocks of b."""')
        w.line(f"b = {ex(layout.block)}")
        w.line("i = torch.arange(0, ctx.Nq, b, dtype=torch.int32).view(-1, 1)")
        w.line("j = torch.arange(0, ctx.N, b, dtype=torch.int32).view(1, -1)")
        w.line(f"layout = torch.as_tensor({ex(layout.predicate)}).expand(i.shape[0], j.shape[1])")
        if lo or hi:
            w.line(f"layout = layout & rt.within_band(i, j, b, {lo}, {hi})  # mask is {plan.mask.describe()}")
        w.line("return b, layout")
    w.line()


def emit_linear(w: CodeWriter, graph: Graph, plan: Plan) -> None:
    out = attention_of(graph)
    ops = graph.operands(out)
    phi_q, phi_k = expr_of(graph, ops[0]), expr_of(graph, ops[1])
    ex = TorchExpr()
    if plan.lowering == "fft":
        f = expr_of(graph, ops[2])
        with w.block("def toeplitz_f(ctx):"):
            w.line(f'"""f(d) for d = i - j in -(N-1) .. Nq-1: {fmt(f)}"""')
            w.line("i = torch.arange(ctx.Nq + ctx.N - 1, dtype=torch.int32).view(1, 1, -1, 1)  # i = d + N - 1 at j = N - 1")
            w.line("j = torch.full((1, 1, 1, 1), ctx.N - 1, dtype=torch.int32)")
            w.line("h = torch.arange(ctx.H, dtype=torch.int32).view(1, ctx.H, 1, 1)")
            w.line(f"return rt.toeplitz_row({ex(f)}, ctx.Nq + ctx.N - 1)")
        w.line()
    if plan.lowering in ("fft2", "rings"):
        emit_grid_factor(w, plan, expr_of(graph, ops[2]))
    modulated, decayed = plan.attrs.get("modulated"), plan.attrs.get("decayed")
    factors = [("modulation", "factor of the kernel with no i, j", ops[2])] if modulated else []
    factors += [("decay", "per-step decay gamma of M = A gamma^(i - j)", ops[3])] if decayed else []
    for name, what, node in factors:
        m = expr_of(graph, node)
        with w.block(f"def {name}(ctx):"):
            w.line(f'"""{what}: {fmt(m)}"""')
            w.line("i = j = torch.zeros((1, 1, 1, 1), dtype=torch.int32)")
            w.line("h = torch.arange(ctx.H, dtype=torch.int32).view(1, ctx.H, 1, 1)")
            w.line(f"return rt.as_4d({ex(m)})")
        w.line()
    with w.block("def forward_torch(self, q, k, v, ctx):"):
        random_features_note(w, graph)
        w.line(f"pq, pk = {_row(phi_q, 'q')}, {_row(phi_k, 'k')}")
        att = graph.node(out)
        common = f"normalize={att.attr('normalize')!r}, eps={att.attr('eps')!r}"
        if plan.lowering == "ista":
            w.line(f"# VARS: {plan.attrs['steps']} ISTA steps of min_z 1/2 |V - Phi z|^2 + lam |z|_1, Phi the "
                   "column-normalized key features")
            w.line(f"return rt.ista_attention(pq, pk, v, steps={plan.attrs['steps']!r}, lam={plan.attrs['lam']!r})")
        elif plan.lowering == "fft":
            w.line("# the convolution runs as torch.fft (cuFFT / pocketfft)")
            w.line(f"return rt.toeplitz_attention(pq, pk, v, toeplitz_f(ctx).to(q.device), {common})")
        elif plan.lowering == "graph":
            g = att.attr("graph")
            w.line(f"# G = {g.kind}({g.adjacency}) applied through products with {g.adjacency} (torch.sparse when sparse)")
            w.line(f"return rt.graph_attention(pq, pk, v, ctx.inputs[{key(g.adjacency)}], {key(g.kind)}, "
                   f"{g.options!r}, {common})")
        elif plan.lowering == "fft2":
            w.line("# the 2-D convolutions run as torch.fft.rfft2 (cuFFT / pocketfft)")
            w.line(f"return rt.grid_toeplitz_attention(pq, pk, v, grid_f(ctx).to(q.device), grid_width(ctx), {common})")
        elif plan.lowering == "rings":
            metric = plan.attrs["grid"].metric
            w.line(f"return rt.ring_attention(pq, pk, v, ring_g(ctx).to(q.device), grid_width(ctx), {metric!r}, {common})")
        else:
            fn = "causal_linear_attention" if plan.lowering == "linear_chunked" else "linear_attention"
            mod = "modulation(ctx).to(q.device)" if modulated else "None"
            dec = ", decay=decay(ctx).to(q.device)" if decayed else ""
            w.line(f"return rt.{fn}(pq, pk, v, modulation={mod}{dec}, {common})")


def emit_grid_factor(w: CodeWriter, plan: Plan, f: TExpr) -> None:
    """grid_width(ctx), and f at one representative (i, j) per offset (fft2) or per (query, ring) (rings)."""
    form, ex = plan.attrs["grid"], TorchExpr()
    with w.block("def grid_width(ctx):"):
        w.line(f'"""Tokens lie row-major on a grid of this many columns: {form.describe()}."""')
        w.line(f"width = int({ex(form.width)})")
        w.line("if width < 1:")
        w.line("    raise ValueError(f'grid width must be >= 1, got {width}')")
        w.line("return width")
    w.line()
    if plan.lowering == "fft2":
        with w.block("def grid_f(ctx):"):
            w.line(f'"""f(dr, dc) on every grid offset: {fmt(f)}"""')
            w.line("width = grid_width(ctx)")
            w.line("dr, dc = rt.grid_offsets(ctx.Nq, ctx.N, width)")
            w.line("i, j = rt.offset_pairs(dr, dc, width)")
            w.line("h = torch.arange(ctx.H, dtype=torch.int32).view(1, ctx.H, 1, 1)")
            w.line(f"return rt.as_4d({ex(f)}).expand(-1, -1, dr.shape[2], dc.shape[3])")
        w.line()
        return
    with w.block("def ring_g(ctx):"):
        w.line(f'"""g(i, rho) for rho = 0 .. T, past which rings share ring T\'s weight: {fmt(f)}"""')
        w.line("width = grid_width(ctx)")
        w.line(f"T = rt.ring_extent(ctx.Nq, ctx.N, width, {form.metric!r})")
        if form.saturation is not None:
            w.line(f"T = max(0, min(T, {py_size_expr(form.saturation)}))  # proven saturation")
        w.line("i = torch.arange(ctx.Nq, dtype=torch.int32).view(1, 1, -1, 1)")
        w.line("rho = torch.arange(T + 1, dtype=torch.int32).view(1, 1, 1, -1)")
        w.line("i, j = rt.ring_pairs(i, rho, width)")
        w.line("h = torch.arange(ctx.H, dtype=torch.int32).view(1, ctx.H, 1, 1)")
        w.line(f"return rt.as_4d({ex(f)}).expand(-1, -1, ctx.Nq, T + 1)")
    w.line()


APPROX_CALLS = {
    "mra": "ax.mra_attention(q, k, v, block={block}, blocks_per_row={blocks_per_row}, mode={mode!r}, "
           "first={first}, diagonal={diagonal})",
    "lara": "ax.lara_attention(q, k, v, landmarks={landmarks}, alpha={alpha!r}, noise=ctx.noise)",
    "ra": "ax.ra_attention(q, k, v, noise=ctx.noise)",
}


def emit_approx(w: CodeWriter, graph: Graph) -> None:
    """A declared approximation of softmax: one call of its algorithm (approx_algorithms.py)."""
    approx = graph.node(attention_of(graph)).attr("approx")
    with w.block("def forward_torch(self, q, k, v, ctx):"):
        w.line(f'"""softmax(q k^T * scale) v approximated by {approx}."""')
        if approx.method in ("lara", "ra"):
            w.line("# ctx.noise: this call's random draw (seeded; redrawn per training call when redraw=1)")
        w.line(f"return {APPROX_CALLS[approx.method].format(**approx.options)}.to(v.dtype)")


def emit_torch(graph: Graph, plan: Plan) -> str:
    w = CodeWriter()
    if plan.lowering == "mixed_chunk":
        from .mixed import emit_mixed_torch
        emit_mixed_torch(w, graph, plan)
    elif plan.lowering in APPROX_CALLS:
        emit_approx(w, graph)
    elif plan.lowering in ("tiled", "block_sparse"):
        emit_features(w, feature_maps_used(*quadratic_form(graph, attention_of(graph))))
        emit_tiled(w, graph, plan)
    else:
        out = attention_of(graph)
        emit_features(w, feature_maps_used(*(expr_of(graph, o) for o in graph.operands(out)[:2])))
        emit_linear(w, graph, plan)
    if graph.node(attention_of(graph)).attr("pool") is not None:
        from .mixed import emit_pool
        emit_pool(w, graph)
    return w.text()
