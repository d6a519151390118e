"""Emit the Triton kernels of gated linear attention with a gate per feature dimension (GLA, Yang et
al. 2023; lowering `linear_gated` when its gate is a row):

    W[i, j] = mod sum_d phi(q_i)_d psi(k_j)_d exp(G_id - G_jd)   on j <= i,   G non-increasing in the token

One program per (b, h) walks chunks of BLOCK tokens (16 by default) with a state kept at R, the gate
row of the previous chunk's last token:

  across chunks  num_i += (phi(q_i) o exp(G_i - R)) S,   S <- exp(R' - R) o S + (psi(K) o exp(R' - G))^T V
                 (R' the chunk's own last gate: every exponent is a later gate minus an earlier one, <= 0)
  inside a chunk the weights a_ij = sum_d phi(q_i)_d psi(k_j)_d exp(G_id - G_jd), one key row j at a
                 time ([BLOCK, D] per row, the difference masked to -inf where j > i before the exp),
                 then tl.dot(a, V) on the tensor cores.

The gates come as one [B H, T, D] fp32 sequence, T = max(Nq, N) (G is one function of the token: the
query and the key side read the same rows). Gradients, with da_ij = dnum_i . v_j + dden_i:

  dphi(q_i) = sum_j da_ij psi(k_j) o exp(G_i - G_j),   dpsi(k_j) = sum_i da_ij phi(q_i) o exp(G_i - G_j),
  dv_j = sum_i a_ij dnum_i,   dG_t = phi(q_t) o dphi(q_t) - psi(k_t) o dpsi(k_t)   (written as its two sides)

`_gla_bwd_dq` walks the chunks forward with the forward's state, `_gla_bwd_dkdv` in reverse with
R = sum_(later i) (phi(q_i) o exp(G_i - R')) [dnum_i, dden_i]^T; both take the in-chunk terms one row at a
time as the forward does.
"""
from __future__ import annotations

from ..analysis.row_gates import row_gate_terms
from ..ir.graph import Graph, attention_node, attention_of, expr_of
from ..lang.derivative import NotDifferentiable
from ..lang.normalizers import NORMALIZERS
from ..plan.select import Plan
from .gated import emit_gated_triton, gate_lookups
from .triton import emit_feature_fn, kernel_common_args, launch_common, launcher_head, program_prologue, row_feature
from .triton_backward import TritonBackward, backward_head, bwd_args, bwd_launch, bwd_prologue, store_tile
from .triton_backward_linear import chain_feature, emit_gated_backward, finish_grads, gated_backward_line, \
    gated_backward_support, load_out, load_row_grads, store_row_grads
from .triton_linear import finish_rows, linear_scalars, load_chunk, value_tile
from .writer import CodeWriter

_CONSTEXPRS = "BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr, PRECISION: tl.constexpr"
GLA_BLOCK = 16  # tokens per chunk: the in-chunk weights cost BLOCK x D per token, one row at a time
FMA_WARPS = 8  # fp32 inputs' forward: the FMA dot (phi(Q) o exp(G - R)) S reads whole [BLOCK, BLOCK_D] rows
# and [BLOCK_D, BLOCK_E] columns from registers; with 4 warps it spilled at d = 128 (docs/compile_gate.md)


def _dot(a: str, b: str) -> str:
    return f"tl.dot({a}, {b}, input_precision=PRECISION)"


def _gate_row(w: CodeWriter, var: str, token: str) -> None:
    """var = the gate row [BLOCK_D] of a token (clamped into the sequence; 0 past D)."""
    w.line(f"{var} = tl.load(G + tl.minimum({token}, T - 1) * D + offs_d, mask=offs_d < D, other=0.0)")


def _chunk_gates(w: CodeWriter) -> None:
    """The chunk's gates g [BLOCK, BLOCK_D] (the last repeated past T), and its last gate `end`."""
    w.line("g = tl.load(G + tl.minimum(offs, T - 1)[:, None] * D + offs_d[None, :], mask=offs_d[None, :] < D, "
           "other=0.0)")
    _gate_row(w, "end", "start + BLOCK - 1")


def _token_row(w: CodeWriter, var: str, ptr: str, token: str, limit: str, feature: str) -> None:
    """var = one fp32 row [BLOCK_D] of Q or K at `token` (zero past `limit`), through the side's feature map."""
    inside = f"offs_d < tl.where({token} < {limit}, D, 0)"  # no columns past the last token
    w.line(f"{var} = tl.load({ptr} + ({token}) * stride_{ptr.lower()}m + offs_d * stride_{ptr.lower()}d, "
           f"mask={inside}, other=0.0).to(tl.float32)")
    if feature != "identity":
        w.line(f"{var} = tl.where({inside}, _feature_{feature}({var}), 0.0)")


def _key_column(w: CodeWriter, fk: str) -> None:
    """Loop body lines for key row jj of the chunk: kj, and e[i, d] = exp(G_id - G_jd) on i >= jj (0 above)."""
    _token_row(w, "kj", "K", "start + jj", "N", fk)
    _gate_row(w, "gj", "start + jj")
    w.line("e = tl.exp(tl.where(rows[:, None] >= jj, g - gj[None, :], -float('inf')))")


def _intra_weights(w: CodeWriter, fk: str) -> None:
    """a [BLOCK, BLOCK] = the in-chunk weights (unmodulated), one key column at a time."""
    w.line("a = tl.zeros([BLOCK, BLOCK], dtype=tl.float32)")
    with w.block("for jj in range(0, BLOCK):"):
        _key_column(w, fk)
        w.line("a = tl.where(rows[None, :] == jj, tl.sum(pq * kj[None, :] * e, 1)[:, None], a)")


def _carry(w: CodeWriter, rows: str, scale_to: str, right: str, state: str, vec: str, vec_rows: str) -> None:
    """state <- exp(end - ref) o state + (rows o exp(...))^T right; vec alike; then ref <- end (forward walks)."""
    w.line(f"scaled = {rows} * tl.exp({scale_to})")
    w.line("carry = tl.exp(end - ref)")
    w.line(f"{state} = carry[:, None] * {state} + {_dot('tl.trans(scaled)', right)}")
    w.line(f"{vec} = carry * {vec} + tl.sum({vec_rows}, 0)")


def emit_gla_forward_kernel(w: CodeWriter, fq: str, fk: str, finish: str) -> None:
    """`_gla_fwd`: one program per (b, h, BLOCK_E value columns) walks the chunks."""
    w.line("@triton.jit")
    with w.block(f"def _gla_fwd({kernel_common_args()}, Mod, G, eps, {_CONSTEXPRS}):"):
        w.line('"""Gated linear attention with a gate per dimension: chunks of BLOCK tokens, the in-chunk weights')
        w.line("sum_d q_id k_jd exp(G_id - G_jd) one key row at a time, the state S kept at the gate row R of the")
        w.line('previous chunk end and moved on by exp(R_new - R) per dimension (differences only: gates reach -1e3)."""')
        program_prologue(w, per_bh_only=True, value_axis=1)
        w.line("mod = tl.load(Mod + pid_bh)")
        w.line("T = tl.maximum(Nq, N)")
        w.line("G += pid_bh * T * D")
        w.line("rows = tl.arange(0, BLOCK)")
        w.line("S = tl.zeros([BLOCK_D, BLOCK_E], dtype=tl.float32)")
        w.line("z = tl.zeros([BLOCK_D], dtype=tl.float32)")
        _gate_row(w, "ref", "0")
        w.line("# R: the state is zero until the first chunk end")
        with w.block("for start in range(0, T, BLOCK):"):
            load_chunk(w, ("pq", "pk", "v"), fq, fk)
            _chunk_gates(w)
            _intra_weights(w, fk)
            w.line("qs = pq * tl.exp(g - ref[None, :])")
            w.line(f"num = {_dot('a', 'v')} + {_dot('qs', 'S')}")
            w.line("den = tl.sum(a, 1) + tl.sum(qs * z[None, :], 1)")
            w.line(f"out = {finish}")
            w.line("tl.store(Out + offs[:, None] * stride_om + offs_e[None, :] * stride_od, out.to(Out.dtype.element_ty), "
                   "mask=(offs[:, None] < Nq) & (offs_e[None, :] < E))")
            _carry(w, "pk", "end[None, :] - g", "v", "S", "z", "scaled")
            w.line("ref = end")
    w.line()


def emit_gla_dq_kernel(w: CodeWriter, fq: str, fk: str, normalize: str, rows_sum: bool) -> None:
    """`_gla_bwd_dq`: chunks forward with the forward's state: dQ, the query side of dG, each row's inv and
    dden (rows_sum: the normalizer divides by the row sums, which the in-chunk weights give first)."""
    w.line("@triton.jit")
    with w.block(f"def _gla_bwd_dq({bwd_args()}, Mod, G, DGq, Inv, Dden, eps, {_CONSTEXPRS}):"):
        w.line('"""dQ and the query side of dG walking the chunks forward with the carried per-dimension gated state."""')
        bwd_prologue(w, per_bh_only=True)
        w.line("mod = tl.load(Mod + pid_bh)")
        w.line("T = tl.maximum(Nq, N)")
        w.line("G += pid_bh * T * D")
        w.line("DGq += pid_bh * Nq * D")
        w.line("rows = tl.arange(0, BLOCK)")
        w.line("S = tl.zeros([BLOCK_D, BLOCK_E], dtype=tl.float32)")
        w.line("z = tl.zeros([BLOCK_D], dtype=tl.float32)")
        _gate_row(w, "ref", "0")
        with w.block("for start in range(0, T, BLOCK):"):
            load_chunk(w, ("pq", "pk", "v", "do"), fq, fk)
            _chunk_gates(w)
            w.line("q_scale = tl.exp(g - ref[None, :])")
            if rows_sum:
                load_out(w)
                _intra_weights(w, fk)
                w.line("den = tl.sum(a, 1) + tl.sum(pq * q_scale * z[None, :], 1)")
            finish_grads(w, normalize)
            store_row_grads(w)
            w.line(f"da = {_dot('dnum', 'tl.trans(v)')} + dden[:, None]")
            w.line(f"dpq = q_scale * ({_dot('dnum', 'tl.trans(S)')} + dden[:, None] * z[None, :])")
            with w.block("for jj in range(0, BLOCK):"):
                _key_column(w, fk)
                w.line("dpq += tl.sum(tl.where(rows[None, :] == jj, da, 0.0), 1)[:, None] * kj[None, :] * e")
            w.line("tl.store(DGq + offs[:, None] * D + offs_d[None, :], pq * dpq, "
                   "mask=(offs[:, None] < Nq) & (offs_d[None, :] < D))")
            chain_feature(w, "dq", "dpq", "Q", "offs", "Nq", fq)
            store_tile(w, "DQ", "dq", "offs", "Nq", "offs_d", "D")
            _carry(w, "pk", "end[None, :] - g", "v", "S", "z", "scaled")
            w.line("ref = end")
    w.line()


def emit_gla_dkdv_kernel(w: CodeWriter, fq: str, fk: str) -> None:
    """`_gla_bwd_dkdv`: chunks in reverse carrying R = sum of later (phi(q_i) o exp(G_i - R')) [dnum_i, dden_i]^T."""
    w.line("@triton.jit")
    with w.block(f"def _gla_bwd_dkdv({bwd_args()}, G, DGk, Inv, Dden, {_CONSTEXPRS}):"):
        w.line('"""dK, dV and the key side of dG walking the chunks in reverse with the later queries\' gated state."""')
        bwd_prologue(w, per_bh_only=True)
        w.line("T = tl.maximum(Nq, N)")
        w.line("G += pid_bh * T * D")
        w.line("DGk += pid_bh * N * D")
        w.line("rows = tl.arange(0, BLOCK)")
        w.line("R = tl.zeros([BLOCK_D, BLOCK_E], dtype=tl.float32)")
        w.line("r = tl.zeros([BLOCK_D], dtype=tl.float32)")
        w.line("chunks = tl.cdiv(T, BLOCK)")
        with w.block("for t in range(0, chunks):"):
            w.line("start = (chunks - 1 - t) * BLOCK")
            load_chunk(w, ("pq", "pk", "v", "do"), fq, fk)
            _chunk_gates(w)
            _gate_row(w, "ref", "tl.maximum(start - 1, 0)")
            load_row_grads(w)
            w.line(f"da = {_dot('dnum', 'tl.trans(v)')} + dden[:, None]")
            w.line("k_scale = tl.exp(end[None, :] - g)")
            w.line(f"dpk = k_scale * ({_dot('v', 'tl.trans(R)')} + r[None, :])")
            w.line(f"dv = {_dot('pk * k_scale', 'R')}")
            w.line("a = tl.zeros([BLOCK, BLOCK], dtype=tl.float32)")
            with w.block("for ii in range(0, BLOCK):  # query row ii: e[j, d] = exp(G_id - G_jd) on j <= ii"):
                _token_row(w, "qi", "Q", "start + ii", "Nq", fq)
                _gate_row(w, "gi", "start + ii")
                w.line("e = tl.exp(tl.where(rows[:, None] <= ii, gi[None, :] - g, -float('inf')))")
                w.line("a = tl.where(rows[:, None] == ii, tl.sum(qi[None, :] * pk * e, 1)[None, :], a)")
                w.line("dpk += tl.sum(tl.where(rows[:, None] == ii, da, 0.0), 0)[:, None] * qi[None, :] * e")
            w.line(f"dv += {_dot('tl.trans(a)', 'dnum')}")
            w.line("tl.store(DGk + offs[:, None] * D + offs_d[None, :], -pk * dpk, "
                   "mask=(offs[:, None] < N) & (offs_d[None, :] < D))")
            chain_feature(w, "dk", "dpk", "K", "offs", "N", fk)
            store_tile(w, "DK", "dk", "offs", "N", "offs_d", "D")
            store_tile(w, "DV", "dv", "offs", "N", "offs_e", "E")
            w.line("scaled = pq * tl.exp(g - ref[None, :])")
            w.line("carry = tl.exp(end - ref)")
            w.line(f"R = carry[:, None] * R + {_dot('tl.trans(scaled)', 'dnum')}")
            w.line("r = carry * r + tl.sum(scaled * dden[:, None], 0)")
    w.line()


# ---------------------------------------------------------------------- the module's launchers
def _features(graph: Graph) -> tuple[str, str]:
    ops = graph.operands(attention_of(graph))
    return tuple(row_feature(expr_of(graph, o)) or "identity" for o in ops[:2])


def _gate_rows(w: CodeWriter) -> None:
    """Launcher lines: the gate rows at max(Nq, N) tokens as one [B H, T, D] fp32 sequence."""
    w.line("T = max(Nq, N)")
    w.line("g = host.gate(ctx, T).to(device=q.device, dtype=torch.float32).expand(B, H, T, D).reshape(B * H, T, D)"
           ".contiguous()")


def _blocks(e_block: str) -> str:
    return f"BLOCK={GLA_BLOCK}, BLOCK_D=BLOCK_D, BLOCK_E={e_block}, PRECISION=precision"


def emit_gla_triton(w: CodeWriter, graph: Graph, plan: Plan) -> str:
    """The Triton forward of `linear_gated` with a gate per dimension: `_gla_fwd` and `triton_forward`."""
    fq, fk = _features(graph)
    for fm in sorted({fq, fk} - {"identity"}):
        emit_feature_fn(w, fm)
    emit_gla_forward_kernel(w, fq, fk, finish_rows(attention_node(graph).attr("normalize")))
    with w.block("def triton_forward(self, q, k, v, ctx, host):"):
        launcher_head(w, fixed_blocks=False)
        linear_scalars(w, plan)
        value_tile(w)
        _gate_rows(w)
        w.line(f"warps = 4 if q.element_size() <= 2 else {FMA_WARPS}  # fp32: the state read phi(Q) S runs on FMA units")
        w.line(f"_gla_fwd[(B * H, value_blocks)]({launch_common()}, mod, g, {attention_node(graph).attr('eps')!r},")
        w.line(f"    {_blocks('E_TILE')}, num_warps=warps)")
        w.line("return out")
    w.line()
    return f"chunked gated linear kernel, a gate per dimension (chunks of {GLA_BLOCK})"


def emit_gla_backward(w: CodeWriter, graph: Graph, plan: Plan) -> None:
    """`_gla_bwd_dq`, `_gla_bwd_dkdv` and the custom op's `op_forward`, `op_backward`."""
    normalize, eps = attention_node(graph).attr("normalize"), attention_node(graph).attr("eps")
    fq, fk = _features(graph)
    emit_gla_dq_kernel(w, fq, fk, normalize, NORMALIZERS[normalize].divides_by_row_sum)
    emit_gla_dkdv_kernel(w, fq, fk)
    with w.block("def op_forward(self, q, k, v, ctx, host):"):
        w.line('"""The custom op\'s forward: the output (no row statistics: the backward recomputes them)."""')
        w.line("return triton_forward(self, q, k, v, ctx, host), q.new_zeros(*q.shape[:3], dtype=torch.float32)")
    w.line()
    with w.block("def op_backward(self, q, k, v, out, stat, dout, ctx, host):"):
        backward_head(w, "(dq, dk, dv, gradients of what the gate rows read) by the gated chunked recurrences.",
                      fixed_blocks=False, per_query_head=True)
        linear_scalars(w, plan)
        _gate_rows(w)
        w.line("dgq = torch.empty(B * H, Nq, D, device=q.device, dtype=torch.float32)")
        w.line("dgk = torch.empty(B * H, N, D, device=q.device, dtype=torch.float32)")
        w.line("inv = torch.empty(B, H, Nq, device=q.device, dtype=torch.float32)")
        w.line("dden = torch.empty(B, H, Nq, device=q.device, dtype=torch.float32)")
        w.line(f"_gla_bwd_dq[(B * H,)]({bwd_launch()}, mod, g, dgq, inv, dden, {eps!r},")
        w.line(f"    {_blocks('BLOCK_E')})")
        w.line(f"_gla_bwd_dkdv[(B * H,)]({bwd_launch()}, g, dgk, inv, dden,")
        w.line(f"    {_blocks('BLOCK_E')})")
        w.line("dg = torch.zeros(B, H, T, D, device=q.device, dtype=torch.float32)  # the two sides of each token's gate")
        w.line("dg[:, :, :Nq] += dgq.view(B, H, Nq, D)")
        w.line("dg[:, :, :N] += dgk.view(B, H, N, D)")
        w.line("dk, dv = triton_ops.group_sum(dk, k), triton_ops.group_sum(dv, v)  # the gates are per query head")
        w.line("return dq, dk, dv, host.gate_grads(ctx, T, dg, {})")
    w.line()
    rows, scalar = row_gate_terms(_gate(graph))
    tables = {row.value for row, _ in rows} | {e.value for e, _ in (gate_lookups(scalar) if scalar is not None else [])}
    w.line(f"GRAD_TABLES = {tuple(sorted(tables))!r}  # tables the backward kernels differentiate (through dG)")


def _gate(graph: Graph):
    return expr_of(graph, graph.operands(attention_of(graph))[3])


def _per_dimension(graph: Graph) -> bool:
    return bool(attention_node(graph).attr("gate_rows"))


def emit_triton(w: CodeWriter, graph: Graph, plan: Plan) -> str:
    """The Triton forward of `linear_gated`: a gate per dimension here, a scalar gate in gated.py."""
    return (emit_gla_triton if _per_dimension(graph) else emit_gated_triton)(w, graph, plan)


def _support(graph: Graph, plan: Plan) -> str | None:
    if not _per_dimension(graph):
        return gated_backward_support(graph, plan)
    amplitude = expr_of(graph, graph.operands(attention_of(graph))[2])
    if any(e.op in ("param", "input") for e in amplitude.walk()):
        return "the amplitude A of the gated weight reads tables or inputs"
    terms = row_gate_terms(_gate(graph))
    if terms is None:
        return "the gate row is not a sum of row inputs and numbers"
    try:
        gate_lookups(terms[1]) if terms[1] is not None else None
    except NotDifferentiable as e:
        return f"the gate's numbers have no derivative ({e})"
    return None


def _line(graph: Graph, plan: Plan) -> str:
    if not _per_dimension(graph):
        return gated_backward_line(graph, plan)
    return ("generated Triton kernels (dQ and the query side of dG forward over chunks, dK/dV and the key side in "
            "reverse; the gate rows' inputs from dG)")


def _emit_backward(w: CodeWriter, graph: Graph, plan: Plan) -> None:
    (emit_gla_backward if _per_dimension(graph) else emit_gated_backward)(w, graph, plan)


GATED_BACKWARD = TritonBackward(_support, _line, _emit_backward)
