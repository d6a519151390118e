"""Emit gated linear attention (lowering `linear_gated`): the torch gate function and call, the Triton forward."""
from __future__ import annotations

from ..ir.graph import Graph, attention_node, attention_of, expr_of
from ..lang.derivative import NotDifferentiable, diff, leaves
from ..analysis.row_gates import row_gate_terms
from ..lang.expr import VEC, TExpr
from ..lang.rows import row_input_layout
from ..plan.select import Plan
from .exprs import TorchExpr, brief
from .let import let_expr
from .torch import emit_kernelized
from .triton import emit_feature_fn, kernel_common_args, launch_common, launcher_head, program_prologue, row_feature, \
    tuned_launch
from .triton_linear import carry_state, finish_rows, linear_scalars, load_chunk, value_tile
from .writer import CodeWriter


def emit_gate(w: CodeWriter, exprs: list, input_dims: dict) -> None:
    """gate(ctx, n): G(t) of M = A exp(G(i) - G(j)) at the tokens t = 0 .. n-1, as [., ., n, 1]; a gate
    per dimension (a row, exp(G_d(i) - G_d(j))) as [., ., n, W]."""
    gate = exprs[3]
    with w.block("def gate(ctx, n):"):
        per = " per dimension" if gate.type == VEC else ""
        w.line(f'"""G(i) of the gate exp(G(i) - G(j)){per} at tokens 0 .. n-1: {brief(gate)}"""')
        w.line("i = torch.arange(n, dtype=torch.int32).view(1, 1, -1, 1)")
        w.line("j = torch.zeros((1, 1, 1, 1), dtype=torch.int32)")
        w.line("h = torch.arange(ctx.H, dtype=torch.int32).view(1, ctx.H, 1, 1)")
        if gate.type == VEC:
            w.line(f"return {_row_code(w, TorchExpr(), gate, input_dims)}")
        else:
            w.line(f"return rt.as_4d({let_expr(w, TorchExpr(), gate)}, ctx.dtype)")
    w.line()


_ROW_OPERATORS = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


def _row_code(w: CodeWriter, ex: TorchExpr, t: TExpr, input_dims: dict) -> str:
    """A gate row at the tokens i = 0 .. n-1 ([B|1, H|1, n, W]): row inputs read through rt.input_rows,
    numbers as the scalar gate prints them (broadcast along the width)."""
    if t.type != VEC:
        return f"rt.as_4d({let_expr(w, ex, t)}, ctx.dtype)"
    a = [_row_code(w, ex, x, input_dims) for x in t.args]
    if t.op == "rowin":
        per_head, _ = row_input_layout(input_dims[t.value])
        return f"rt.input_rows(ctx.inputs[{t.value!r}], {len(input_dims[t.value])}, {per_head}, n, {t.value!r}).to(ctx.dtype)"
    if t.op == "neg":
        return f"(-{a[0]})"
    if t.op in _ROW_OPERATORS:
        return f"({a[0]} {_ROW_OPERATORS[t.op]} {a[1]})"
    raise ValueError(f"a gate row of the form {t.op} (analysis/row_gates.py finds sums of row inputs and numbers)")


def gate_lookups(gate: TExpr) -> list[tuple[TExpr, TExpr]]:
    """(lookup, dG/d(lookup)) for the float table and input lookups G depends on (what its gradient flows
    to); raises NotDifferentiable if G has no derivative."""
    derivatives = [(e, diff(gate, e)) for e in leaves(gate) if e.op in ("param", "input")]
    return [(e, d) for e, d in derivatives if d is not None]


def emit_row_gate_grads(w: CodeWriter, gate: TExpr, input_dims: dict) -> None:
    """gate_grads(ctx, n, dg, grads) of a gate row G = sum_t c_t X_t[h?, i] + g(i) (dg: [B, H, n, W]):
    c_t dg onto the rows of each input X_t, sum_d dg_d through the scalar part g as emit_gate_grads does."""
    terms = row_gate_terms(gate)
    if terms is None:  # no Triton backward then (gated_backward_support): nothing calls gate_grads
        return
    rows, scalar = terms
    ex = TorchExpr()
    with w.block("def gate_grads(ctx, n, dg, grads):"):
        w.line('"""grads[name] += d(sum_t dg[..., t, :] . G(t)) / d(name) for what G reads (dg: [B, H, n, W])."""')
        w.line("i = torch.arange(n, dtype=torch.int32).view(1, 1, -1, 1)")
        w.line("j = torch.zeros((1, 1, 1, 1), dtype=torch.int32)")
        w.line("h = torch.arange(ctx.H, dtype=torch.int32).view(1, ctx.H, 1, 1)")
        for row, c in rows:
            per_head, _ = row_input_layout(input_dims[row.value])
            w.line(f"grads[{row.value!r}] = grads.get({row.value!r}, 0) + rt.row_input_grad(ctx.inputs[{row.value!r}], "
                   f"{len(input_dims[row.value])}, {per_head}, dg * {let_expr(w, ex, c)})")
        if scalar is not None:
            w.line("dg = dg.sum(-1, keepdim=True)")
            _lookup_grads(w, ex, gate_lookups(scalar))
        w.line("return grads")
    w.line()


def emit_gate_grads(w: CodeWriter, gate: TExpr) -> None:
    """gate_grads(ctx, n, dg, grads): adds to grads[name] the gradient of sum_t dg_t G(t) (tokens 0 .. n-1)
    with respect to each table and float input G reads: dG/d(lookup) scattered to the looked-up entries.
    The Triton backward calls it with the gradients of the gates its kernels compute."""
    try:
        lookups = gate_lookups(gate)
    except NotDifferentiable:  # no Triton backward then (gated_backward_support): nothing calls gate_grads
        return
    ex = TorchExpr()
    with w.block("def gate_grads(ctx, n, dg, grads):"):
        w.line('"""grads[name] += d(sum_t dg[..., t, 0] G(t)) / d(name) for what G reads (dg: [B, H, n, 1])."""')
        w.line("i = torch.arange(n, dtype=torch.int32).view(1, 1, -1, 1)")
        w.line("j = torch.zeros((1, 1, 1, 1), dtype=torch.int32)")
        w.line("h = torch.arange(ctx.H, dtype=torch.int32).view(1, ctx.H, 1, 1)")
        _lookup_grads(w, ex, lookups)
        w.line("return grads")
    w.line()


def _lookup_grads(w: CodeWriter, ex: TorchExpr, lookups: list) -> None:
    """grads[name] += dg dG/d(lookup) scattered to the entries each table or input lookup reads."""
    for e, d in lookups:
        table = f"ctx.{'params' if e.op == 'param' else 'inputs'}[{e.value!r}]"
        index = ", ".join(let_expr(w, ex, a) for a in e.args)
        derivative = let_expr(w, ex, d)
        w.line(f"grads[{e.value!r}] = grads.get({e.value!r}, 0) + rt.lookup_grad({table}, [{index}], "
               f"{len(e.args)}, dg * {derivative})")


def emit_gated_torch(w: CodeWriter, graph: Graph, plan: Plan) -> None:
    """forward_torch of `linear_gated`: rt.gated_linear_attention with the gate at queries and keys."""
    def call(w: CodeWriter, common: str) -> None:
        w.line("gates = (gate(ctx, ctx.Nq).to(q.device), gate(ctx, ctx.N).to(q.device))")
        w.line("return rt.gated_linear_attention(pq, pk, v, modulation=modulation(ctx).to(q.device), "
               f"gates=gates, {common})")
    dims = {name: info.dims for name, info in graph.signature.inputs.items()}

    def holes(w: CodeWriter, exprs: list) -> None:
        emit_gate(w, exprs, dims)
        if exprs[3].type == VEC:
            emit_row_gate_grads(w, exprs[3], dims)
        else:
            emit_gate_grads(w, exprs[3])
    emit_kernelized(w, graph, plan, holes, call)


def emit_gated_triton(w: CodeWriter, graph: Graph, plan: Plan) -> str:
    """The Triton forward of `linear_gated`: `_linear_gated` and its launcher `triton_forward`."""
    ops = graph.operands(attention_of(graph))
    fq, fk = (row_feature(expr_of(graph, o)) or "identity" for o in ops[:2])
    for fm in sorted({fq, fk} - {"identity"}):
        emit_feature_fn(w, fm)
    emit_gated_kernel(w, fq, fk, finish_rows(attention_node(graph).attr("normalize")))
    emit_gated_launcher(w, plan, attention_node(graph).attr("eps"))
    return "chunked gated linear kernel"


def emit_gated_kernel(w: CodeWriter, fq: str, fk: str, finish: str) -> None:
    """`_linear_gated`: one program per (b, h, value block) walks the chunks with the gates of their tokens."""
    w.line("@triton.jit")
    with w.block(f"def _linear_gated({kernel_common_args()}, Mod, Gq, Gk, eps, BLOCK: tl.constexpr, "
                 "BLOCK_D: tl.constexpr,"):
        w.line("BLOCK_E: tl.constexpr, PRECISION: tl.constexpr):")
        w.line('"""Gated causal linear attention, one program per (b, h, BLOCK_E value columns): chunks of BLOCK')
        w.line("tokens, quadratic with exp(G_i - G_j) inside a chunk; the state S = sum_j exp(R - G_j) phi(k_j)")
        w.line("v_j^T kept at R, the key gate of the last chunk end, moved on by exp(R_new - R) (only differences:")
        w.line('the gates reach -1e3 and more)."""')
        program_prologue(w, per_bh_only=True, value_axis=1)
        w.line("mod = tl.load(Mod + pid_bh)")
        w.line("Gq += pid_bh * Nq")
        w.line("Gk += pid_bh * N")
        w.line("S = tl.zeros([BLOCK_D, BLOCK_E], dtype=tl.float32)")
        w.line("z = tl.zeros([BLOCK_D], dtype=tl.float32)")
        w.line("ref = tl.load(Gk)  # R: the state is zero until the first chunk end")
        with w.block("for start in range(0, tl.maximum(Nq, N), BLOCK):"):
            load_chunk(w, ("pq", "pk", "v"), fq, fk)
            w.line("gq = tl.load(Gq + tl.minimum(offs, Nq - 1))  # padded rows repeat the last gate (rows are 0)")
            w.line("gk = tl.load(Gk + tl.minimum(offs, N - 1))")
            w.line("causal = offs[:, None] >= offs[None, :]")
            w.line("a = tl.dot(pq, tl.trans(pk), input_precision=PRECISION)")
            w.line("a = tl.where(causal, a * tl.exp(tl.where(causal, gq[:, None] - gk[None, :], 0.0)), 0.0)")
            w.line("q_scale = tl.exp(gq - ref)")
            w.line("num = tl.dot(a, v, input_precision=PRECISION) + q_scale[:, None] * "
                   "tl.dot(pq, S, input_precision=PRECISION)")
            w.line("den = tl.sum(a, 1) + q_scale * tl.sum(pq * z[None, :], 1)")
            w.line(f"out = {finish}")
            w.line("tl.store(Out + offs[:, None] * stride_om + offs_e[None, :] * stride_od, out.to(Out.dtype.element_ty), "
                   "mask=(offs[:, None] < Nq) & (offs_e[None, :] < E))")
            w.line("end = tl.load(Gk + tl.minimum(start + BLOCK - 1, N - 1))")
            w.line("k_scale = tl.exp(end - gk)")
            w.line("carry = tl.exp(end - ref)")
            carry_state(w, True, "pk", "k_scale", "v", "S", "z", "pk")
            w.line("ref = end")
    w.line()


def emit_gated_launcher(w: CodeWriter, plan: Plan, eps: float) -> None:
    """`triton_forward` of `linear_gated`: the gates at queries and keys as [B * H, n] fp32, then the kernel."""
    with w.block("def triton_forward(self, q, k, v, ctx, host):"):
        launcher_head(w, fixed_blocks=False)
        linear_scalars(w, plan)
        value_tile(w)
        for name, n in (("gq", "Nq"), ("gk", "N")):
            w.line(f"{name} = host.gate(ctx, {n}).to(device=q.device, dtype=torch.float32).expand(B, H, {n}, 1)"
                   f".reshape(B * H, {n}).contiguous()")
        w.line()
        with w.block("def launch(BLOCK, num_warps, num_stages):"):
            w.line(f"_linear_gated[(B * H, value_blocks)]({launch_common()}, mod, gq, gk, {eps!r}, BLOCK=BLOCK,")
            w.line("    BLOCK_D=BLOCK_D, BLOCK_E=E_TILE, PRECISION=precision, num_warps=num_warps, num_stages=num_stages)")
        w.line()
        tuned_launch(w, plan.entry.autotune_kind)
