"""Emit the Triton backward of the linear lowerings (see triton_backward.py for the tiled ones).

Linear, out_i = mod phi(q_i) S_i / (mod phi(q_i) z_i + eps) (rows; `none`: mod phi(q_i) S_i). With
G_i = [dnum_i, dden_i] = [mod dO_i / Z_i, -mod (dO_i . out_i) / Z_i] (Z_i the clamped denominator), it
is an unnormalized linear attention of the values [V, 1] with output gradient G:
  dphi(q_i) = sum_j a_ij (dnum_i . v_j + dden_i) phi(k_j),   a_ij = gamma^(i - j) [j <= i] (causal)
  dphi(k_j) = sum_i a_ij (dnum_i . v_j + dden_i) phi(q_i),   dv_j = sum_i a_ij (phi(q_i) . phi(k_j)) dnum_i
Chunked: dQ walks chunks forward with the carried state (S, z) of the forward; dK, dV walk them in
reverse with R = sum_(later i) gamma^(a_i + 1) phi(q_i) [dnum_i, dden_i]^T, R <- gamma^C R + this chunk's:
dphi(k_j) = gamma^(C-1-b_j) (R_num v_j + R_den) + intra-chunk terms. Non-causal: one program per (b, h)
sums R over all queries, then reads it for every key. dq = dphi(q) o phi'(q), dk alike.
"""
from __future__ import annotations

from ..lang.features import FEATURE_MAPS
from ..ir.graph import Graph, attention_node, attention_of, expr_of
from ..lang.normalizers import NORMALIZERS
from ..passes.quadratic import quadratic_form
from ..plan.select import Plan
from ..lang.derivative import NotDifferentiable
from .gated import gate_lookups
from .triton import launch_common, load_rows, row_feature
from .triton_linear import carry_state, decay_factors, feature_tile, linear_scalars, load_chunk, value_tile
from .triton_backward import (TritonBackward, backward_head, bwd_args, bwd_launch, bwd_prologue, group_member,
                              store_tile)
from .writer import CodeWriter


def _linear_features(graph: Graph) -> tuple[str, str]:
    (out,) = graph.operands(graph.output)
    ops = graph.operands(out)
    return tuple(row_feature(expr_of(graph, o)) or "identity" for o in ops[:2])


def finish_grads(w: CodeWriter, normalize: str) -> None:
    """dnum, dden of each row from den (the forward's unmodulated denominator), dO and out."""
    if NORMALIZERS[normalize].divides_by_row_sum:
        w.line("zz = den * mod + eps")
        w.line("zs = tl.where(zz == 0.0, 1.0, zz)  # as the forward: no clamp where there is nothing to divide")
        w.line("inv = mod / zs")
        w.line("dden = tl.where(zz == 0.0, 0.0, -tl.sum(do * out, 1) * inv)")
    else:
        w.line("inv = mod + tl.zeros([BLOCK], dtype=tl.float32)")
        w.line("dden = tl.zeros([BLOCK], dtype=tl.float32)")
    w.line("dnum = do * inv[:, None]")


def load_out(w: CodeWriter) -> None:
    w.line("out = tl.load(Out + offs[:, None] * stride_om + offs_e[None, :] * stride_od, "
           "mask=(offs[:, None] < Nq) & (offs_e[None, :] < E), other=0.0).to(tl.float32)")


def chain_feature(w: CodeWriter, var: str, grad: str, ptr: str, offs: str, limit: str, feature: str) -> None:
    """var = grad o phi'(raw rows), phi the side's feature map."""
    if feature == "identity":
        w.line(f"{var} = {grad}")
        return
    load_rows(w, "x", ptr, offs, limit, "offs_d", "D")
    w.line("x = x.to(tl.float32)")
    w.line(f"{var} = {grad} * ({FEATURE_MAPS[feature].triton_grad})")


def emit_linear_backward(w: CodeWriter, graph: Graph, plan: Plan) -> None:
    """The backward kernels of the linear lowerings and the custom op's `op_forward`, `op_backward`."""
    normalize, eps = attention_node(graph).attr("normalize"), attention_node(graph).attr("eps")
    fq, fk = _linear_features(graph)
    causal = plan.entry.causal_chunks
    if causal:
        decayed = bool(plan.attrs.get("decayed"))
        emit_chunked_dq_kernel(w, fq, fk, normalize, decayed)
        emit_chunked_dkdv_kernel(w, fq, fk, decayed)
    else:
        emit_linear_bwd_kernel(w, fq, fk, normalize)
    emit_linear_op(w, plan, eps, normalize)


_CONSTEXPRS = "BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr, PRECISION: tl.constexpr"


def _dot(a: str, b: str) -> str:
    return f"tl.dot({a}, {b}, input_precision=PRECISION)"


def _within_chunk(var: str, decayed: bool) -> str:
    """var <- var o a_ij inside a chunk: the decay gamma^(i - j) on j <= i, or the causal mask alone."""
    return f"{var} = {var} * within" if decayed else f"{var} = tl.where(offs[:, None] >= offs[None, :], {var}, 0.0)"


def emit_chunked_dq_kernel(w: CodeWriter, fq: str, fk: str, normalize: str, decayed: bool) -> None:
    """`_linear_bwd_dq`: chunks forward with the forward's carried state; saves each row's inv and dden,
    or under SPLIT_D (one of several feature blocks, a program per block) reads them: the launcher made
    them from the forward's denominators, a sum over every feature block."""
    qd = "q_decay[:, None] * " if decayed else ""
    w.line("@triton.jit")
    with w.block(f"def _linear_bwd_dq({bwd_args()}, Mod, Decay, Inv, Dden, eps, {_CONSTEXPRS}, SPLIT_D: tl.constexpr):"):
        w.line('"""dQ walking chunks forward with the carried state; saves each row\'s dnum scale and dden."""')
        bwd_prologue(w, per_bh_only=True, feature_axis=1)
        w.line("mod = tl.load(Mod + pid_bh)")
        if decayed:
            decay_factors(w)
        w.line("S = tl.zeros([BLOCK_D, BLOCK_E], dtype=tl.float32)")
        w.line("z = tl.zeros([BLOCK_D], dtype=tl.float32)")
        with w.block("for start in range(0, tl.maximum(Nq, N), BLOCK):"):
            load_chunk(w, ("pq", "pk", "v", "do"), fq, fk)
            with w.block("if SPLIT_D:"):
                load_row_grads(w)
            with w.block("else:"):
                load_out(w)
                w.line(f"a = {_dot('pq', 'tl.trans(pk)')}")
                w.line(_within_chunk("a", decayed))
                w.line(f"den = tl.sum(a, 1) + {'q_decay * ' if decayed else ''}tl.sum(pq * z[None, :], 1)")
                finish_grads(w, normalize)
                store_row_grads(w)
            w.line(f"da = {_dot('dnum', 'tl.trans(v)')} + dden[:, None]")
            w.line(_within_chunk("da", decayed))
            w.line(f"dpq = {_dot('da', 'pk')} + {qd}({_dot('dnum', 'tl.trans(S)')} + dden[:, None] * z[None, :])")
            chain_feature(w, "dq", "dpq", "Q", "offs", "Nq", fq)
            store_tile(w, "DQ", "dq", "offs", "Nq", "offs_d", "D")
            carry_state(w, decayed, "pk", "k_decay", "v", "S", "z", "pk")
    w.line()


def store_row_grads(w: CodeWriter) -> None:
    """Kernel lines: each row's inv and dden, saved by a dQ kernel for its dK/dV kernel (load_row_grads)."""
    w.line("tl.store(Inv + pid_bh * Nq + offs, inv, mask=offs < Nq)")
    w.line("tl.store(Dden + pid_bh * Nq + offs, dden, mask=offs < Nq)")


def load_row_grads(w: CodeWriter) -> None:
    """Kernel lines: each row's inv and dden (saved by the dQ kernel or the launcher), and dnum."""
    w.line("inv = tl.load(Inv + pid_bh * Nq + offs, mask=offs < Nq, other=0.0)")
    w.line("dden = tl.load(Dden + pid_bh * Nq + offs, mask=offs < Nq, other=0.0)")
    w.line("dnum = do * inv[:, None]")


def emit_chunked_dkdv_kernel(w: CodeWriter, fq: str, fk: str, decayed: bool) -> None:
    """`_linear_bwd_dkdv`: chunks in reverse, carrying R, the later queries' (decayed) gradient state.
    Under SPLIT_D a program owns one feature block: dK's columns are its own, dV (a sum over the
    features) is its share, stored in fp32 to DVPart [feature blocks, B H, N, E] for the launcher to sum."""
    kd = "k_decay[:, None] * " if decayed else ""
    w.line("@triton.jit")
    with w.block(f"def _linear_bwd_dkdv({bwd_args()}, Decay, Inv, Dden, DVPart, {_CONSTEXPRS}, SPLIT_D: tl.constexpr):"):
        w.line('"""dK, dV walking chunks in reverse with R = sum of later (decayed) phi(q) [dnum, dden]^T."""')
        bwd_prologue(w, per_bh_only=True, feature_axis=1)
        if decayed:
            decay_factors(w)
        w.line("R = tl.zeros([BLOCK_D, BLOCK_E], dtype=tl.float32)")
        w.line("r = tl.zeros([BLOCK_D], dtype=tl.float32)")
        w.line("chunks = tl.cdiv(tl.maximum(Nq, N), BLOCK)")
        with w.block("for t in range(0, chunks):"):
            load_chunk(w, ("pq", "pk", "v", "do"), fq, fk, first="(chunks - 1 - t) * BLOCK")
            load_row_grads(w)
            w.line(f"a = {_dot('pq', 'tl.trans(pk)')}")
            w.line(_within_chunk("a", decayed))
            w.line(f"da = {_dot('dnum', 'tl.trans(v)')} + dden[:, None]")
            w.line(_within_chunk("da", decayed))
            w.line(f"dpk = {_dot('tl.trans(da)', 'pq')} + {kd}({_dot('v', 'tl.trans(R)')} + r[None, :])")
            w.line(f"dv = {_dot('tl.trans(a)', 'dnum')} + {kd}{_dot('pk', 'R')}")
            chain_feature(w, "dk", "dpk", "K", "offs", "N", fk)
            store_tile(w, "DK", "dk", "offs", "N", "offs_d", "D")
            with w.block("if SPLIT_D:"):
                w.line("part = (pid_f * tl.num_programs(0) + pid_bh) * N + offs")
                w.line("tl.store(DVPart + part[:, None] * E + offs_e[None, :], dv, mask=(offs[:, None] < N) & (offs_e[None, :] < E))")
            with w.block("else:"):
                store_tile(w, "DV", "dv", "offs", "N", "offs_e", "E")
            carry_state(w, decayed, "pq", "q_decay", "dnum", "R", "r", "pq * dden[:, None]")
    w.line()


def emit_linear_bwd_kernel(w: CodeWriter, fq: str, fk: str, normalize: str) -> None:
    """`_linear_bwd` (not causal): one program per (b, h), the queries' pass, then the keys' from R."""
    w.line("@triton.jit")
    with w.block(f"def _linear_bwd({bwd_args()}, State, Z, Mod, eps, {_CONSTEXPRS}):"):
        w.line('"""One program per key/value head: the queries of each of its GROUP query heads first (dQ, and')
        w.line('R = sum over them of phi(Q)^T [dnum, dden]), then its keys (dK, dV) from R."""')
        bwd_prologue(w, per_bh_only=True, per_kv_head=True)
        w.line("S = tl.load(State + pid_bh * BLOCK_D * BLOCK_E + offs_d[:, None] * BLOCK_E + offs_e[None, :])")
        w.line("z = tl.load(Z + pid_bh * BLOCK_D + offs_d)")
        w.line("R = tl.zeros([BLOCK_D, BLOCK_E], dtype=tl.float32)")
        w.line("r = tl.zeros([BLOCK_D], dtype=tl.float32)")
        with w.block("for member in range(GROUP):  # the query heads reading this key/value head"):
            group_member(w, ("Q", "DO", "Out", "DQ"))
            w.line("mod = tl.load(Mod + off_b * H + off_h)")
            _query_pass(w, fq, normalize)
        with w.block("for start in range(0, N, BLOCK):"):
            load_chunk(w, ("pk", "v"), fk=fk)
            w.line(f"dpk = {_dot('v', 'tl.trans(R)')} + r[None, :]")
            w.line(f"dv = {_dot('pk', 'R')}")
            chain_feature(w, "dk", "dpk", "K", "offs", "N", fk)
            store_tile(w, "DK", "dk", "offs", "N", "offs_d", "D")
            store_tile(w, "DV", "dv", "offs", "N", "offs_e", "E")
    w.line()


def _query_pass(w: CodeWriter, fq: str, normalize: str) -> None:
    """`_linear_bwd`'s pass over one query head's rows: dQ, and R, r summed."""
    with w.block("for start in range(0, Nq, BLOCK):"):
        load_chunk(w, ("pq", "do"), fq)
        load_out(w)
        w.line("den = tl.sum(pq * z[None, :], 1)")
        finish_grads(w, normalize)
        w.line(f"dpq = {_dot('dnum', 'tl.trans(S)')} + dden[:, None] * z[None, :]")
        chain_feature(w, "dq", "dpq", "Q", "offs", "Nq", fq)
        store_tile(w, "DQ", "dq", "offs", "Nq", "offs_d", "D")
        w.line(f"R += {_dot('tl.trans(pq)', 'dnum')}")
        w.line("r += tl.sum(pq * dden[:, None], 0)")


def emit_linear_op(w: CodeWriter, plan: Plan, eps: float, normalize: str) -> None:
    """The custom op's `op_forward` and `op_backward`, which launches the kernels above. The chunked
    forward's statistic is its rows' denominators when the feature columns are split (the backward
    cannot sum them within one program), else nothing (the dQ kernel recomputes them)."""
    causal = plan.entry.causal_chunks
    with w.block("def op_forward(self, q, k, v, ctx, host):"):
        w.line('"""The custom op\'s forward: the output and its statistic (split rows\' denominators, or zeros)."""')
        w.line("stat = q.new_zeros(*q.shape[:3], dtype=torch.float32)")
        w.line(f"return triton_forward(self, q, k, v, ctx, host{', den=stat' if causal else ''}), stat")
    w.line()
    with w.block("def op_backward(self, q, k, v, out, stat, dout, ctx, host):"):
        backward_head(w, "(dq, dk, dv, no table gradients) by the reverse recurrence.", fixed_blocks=False,
                      per_query_head=causal)  # chunked: dK, dV per query head (summed by group); else per key/value head
        feature_tile(w)
        # chunks that fit: the [F_TILE, BLOCK_E] states (whole value width) and four fp32 chunks of rows
        rows = "F_TILE" if causal else "BLOCK_D"  # `_linear_bwd` keeps whole-width states
        w.line(f"BLOCK_M = BLOCK_N = (32 if max({rows}, BLOCK_E) <= 64 else 16) if autotune.on_gpu(q) else 16")
        linear_scalars(w, plan)
        if causal:
            _chunked_backward_launch(w, normalize, eps)
        else:
            blocks = "BLOCK=BLOCK_M, BLOCK_D=BLOCK_D, BLOCK_E=BLOCK_E, PRECISION=precision"
            # zeros: the state kernel writes the columns of its value blocks, `_linear_bwd` reads the padded width
            w.line("state = torch.zeros(B * Hkv, BLOCK_D, BLOCK_E, device=q.device, dtype=torch.float32)")
            w.line("z = torch.empty(B * Hkv, BLOCK_D, device=q.device, dtype=torch.float32)")
            value_tile(w)  # the forward's state kernel, column and feature blocks and all; `_linear_bwd` reads every column
            w.line(f"_linear_state[(B * Hkv, value_blocks, feature_blocks)]({launch_common()}, state, z, BLOCK=BLOCK_N,")
            w.line("    BLOCK_D=F_TILE, BLOCK_E=E_TILE, STATE_D=BLOCK_D, STATE_E=BLOCK_E, PRECISION=precision)")
            w.line(f"_linear_bwd[(B * Hkv,)]({bwd_launch()}, state, z, mod, {eps!r},")
            w.line(f"    {blocks})")
        w.line("return dq, triton_ops.group_sum(dk, k), triton_ops.group_sum(dv, v), {}" if causal else
               "return dq, dk, dv, {}")
    w.line()
    w.line("GRAD_TABLES = ()  # tables the backward kernels differentiate")


def _chunked_backward_launch(w: CodeWriter, normalize: str, eps: float) -> None:
    """Launcher lines: the chunked dQ and dK / dV kernels, one program per (b, h, feature block); split,
    the rows' inv and dden come from the forward's denominators and dV is the blocks' shares summed."""
    blocks = "BLOCK=BLOCK_M, BLOCK_D=F_TILE, BLOCK_E=BLOCK_E, PRECISION=precision, SPLIT_D=feature_blocks > 1"
    with w.block("if feature_blocks > 1:"):
        w.line(f"inv, dden = rt.linear_row_grads(stat, dout, out, mod, {normalize!r}, {eps!r})")
        w.line("dv_part = torch.empty(feature_blocks, B * H, N, E, device=q.device, dtype=torch.float32)")
    with w.block("else:"):
        w.line("inv = torch.empty(B, H, Nq, device=q.device, dtype=torch.float32)")
        w.line("dden = torch.empty(B, H, Nq, device=q.device, dtype=torch.float32)")
        w.line("dv_part = None")
    w.line(f"_linear_bwd_dq[(B * H, feature_blocks)]({bwd_launch()}, mod, gamma, inv, dden, {eps!r},")
    w.line(f"    {blocks})")
    w.line(f"_linear_bwd_dkdv[(B * H, feature_blocks)]({bwd_launch()}, gamma, inv, dden, dv_part,")
    w.line(f"    {blocks})")
    with w.block("if feature_blocks > 1:"):
        w.line("dv.copy_(dv_part.sum(0).view(B, H, N, E))")


def linear_backward_support(graph: Graph, plan: Plan) -> str | None:
    weight, _ = quadratic_form(graph, attention_of(graph))
    if any(e.op in ("param", "input") for e in weight.walk()):
        return "the modulation or decay reads learned tables"
    return None


def linear_backward_line(graph: Graph, plan: Plan) -> str:
    if plan.entry.causal_chunks:
        return "generated Triton kernels (dQ forward over chunks, dK/dV by the reverse chunked recurrence)"
    return "generated Triton kernels (state, then dQ over queries and dK/dV over keys)"


LINEAR_BACKWARD = TritonBackward(linear_backward_support, linear_backward_line, emit_linear_backward)


# ---------------------------------------------------------------------- gated (linear_gated)
# W = (phi(q_i) . phi(k_j)) exp(G_i - G_j) on j <= i, G read per token: the decayed kernels above with
# gate differences for gamma powers, plus the gradient of the gates. With da_ij = dnum_i . v_j + dden_i,
#   dG_i (query side) = sum_j da_ij w_ij = phi(q_i) . dphi(q_i),   dG_j (key side) = -phi(k_j) . dphi(k_j),
# and the inputs and tables G reads get sum_t dG_t dG(t)/dx, scattered by the module's gate_grads (O(N)).
# (A gate per dimension has its own kernels: triton_gla.py, whose GATED_BACKWARD dispatches between them.)

def _gate_rows(w: CodeWriter) -> None:
    """Kernel lines: the gates of the chunk from `start`, the masked in-chunk factor exp(G_i - G_j), the
    chunk's end gate `end`, the previous end `ref` (the first key's for chunk 0, as the forward), and the
    scales of queries (from ref) and keys (to end)."""
    w.line("gq = tl.load(Gq + pid_bh * Nq + tl.minimum(offs, Nq - 1))")
    w.line("gk = tl.load(Gk + pid_bh * N + tl.minimum(offs, N - 1))")
    w.line("causal = offs[:, None] >= offs[None, :]")
    w.line("within = tl.where(causal, tl.exp(tl.where(causal, gq[:, None] - gk[None, :], 0.0)), 0.0)")
    w.line("ref = tl.load(Gk + pid_bh * N + tl.maximum(tl.minimum(start - 1, N - 1), 0))")
    w.line("end = tl.load(Gk + pid_bh * N + tl.minimum(start + BLOCK - 1, N - 1))")
    w.line("q_scale = tl.exp(gq - ref)")
    w.line("k_scale = tl.exp(end - gk)")
    w.line("carry = tl.exp(end - ref)")


def emit_gated_dq_kernel(w: CodeWriter, fq: str, fk: str, normalize: str) -> None:
    """`_gated_bwd_dq`: chunks forward with the gated state; dQ, dG at the queries, each row's inv and dden."""
    w.line("@triton.jit")
    with w.block(f"def _gated_bwd_dq({bwd_args()}, Mod, Gq, Gk, DGq, Inv, Dden, eps, {_CONSTEXPRS}):"):
        w.line('"""dQ and the query-side dG walking chunks forward with the carried gated state."""')
        bwd_prologue(w, per_bh_only=True)
        w.line("mod = tl.load(Mod + pid_bh)")
        w.line("S = tl.zeros([BLOCK_D, BLOCK_E], dtype=tl.float32)")
        w.line("z = tl.zeros([BLOCK_D], dtype=tl.float32)")
        with w.block("for start in range(0, tl.maximum(Nq, N), BLOCK):"):
            load_chunk(w, ("pq", "pk", "v", "do"), fq, fk)
            load_out(w)
            _gate_rows(w)
            w.line(f"a = {_dot('pq', 'tl.trans(pk)')} * within")
            w.line("den = tl.sum(a, 1) + q_scale * tl.sum(pq * z[None, :], 1)")
            finish_grads(w, normalize)
            store_row_grads(w)
            w.line(f"da = ({_dot('dnum', 'tl.trans(v)')} + dden[:, None]) * within")
            w.line(f"dpq = {_dot('da', 'pk')} + q_scale[:, None] * ({_dot('dnum', 'tl.trans(S)')} + "
                   "dden[:, None] * z[None, :])")
            w.line("tl.store(DGq + pid_bh * Nq + offs, tl.sum(pq * dpq, 1), mask=offs < Nq)")
            chain_feature(w, "dq", "dpq", "Q", "offs", "Nq", fq)
            store_tile(w, "DQ", "dq", "offs", "Nq", "offs_d", "D")
            carry_state(w, True, "pk", "k_scale", "v", "S", "z", "pk")
    w.line()


def emit_gated_dkdv_kernel(w: CodeWriter, fq: str, fk: str) -> None:
    """`_gated_bwd_dkdv`: chunks in reverse carrying R = sum of later exp(G_i - end) phi(q_i) [dnum, dden]^T."""
    w.line("@triton.jit")
    with w.block(f"def _gated_bwd_dkdv({bwd_args()}, Gq, Gk, DGk, Inv, Dden, {_CONSTEXPRS}):"):
        w.line('"""dK, dV and the key-side dG walking chunks in reverse with the later queries\' gated state."""')
        bwd_prologue(w, per_bh_only=True)
        w.line("R = tl.zeros([BLOCK_D, BLOCK_E], dtype=tl.float32)")
        w.line("r = tl.zeros([BLOCK_D], dtype=tl.float32)")
        w.line("chunks = tl.cdiv(tl.maximum(Nq, N), BLOCK)")
        with w.block("for t in range(0, chunks):"):
            w.line("start = (chunks - 1 - t) * BLOCK")
            load_chunk(w, ("pq", "pk", "v", "do"), fq, fk)
            _gate_rows(w)
            load_row_grads(w)
            w.line(f"a = {_dot('pq', 'tl.trans(pk)')} * within")
            w.line(f"da = ({_dot('dnum', 'tl.trans(v)')} + dden[:, None]) * within")
            w.line(f"dpk = {_dot('tl.trans(da)', 'pq')} + k_scale[:, None] * ({_dot('v', 'tl.trans(R)')} + r[None, :])")
            w.line(f"dv = {_dot('tl.trans(a)', 'dnum')} + k_scale[:, None] * {_dot('pk', 'R')}")
            w.line("tl.store(DGk + pid_bh * N + offs, -tl.sum(pk * dpk, 1), mask=offs < N)")
            chain_feature(w, "dk", "dpk", "K", "offs", "N", fk)
            store_tile(w, "DK", "dk", "offs", "N", "offs_d", "D")
            store_tile(w, "DV", "dv", "offs", "N", "offs_e", "E")
            carry_state(w, True, "pq", "q_scale", "dnum", "R", "r", "pq * dden[:, None]")
    w.line()


def _gate(graph: Graph):
    (out,) = graph.operands(graph.output)
    return expr_of(graph, graph.operands(out)[3])


def emit_gated_backward(w: CodeWriter, graph: Graph, plan: Plan) -> None:
    """The gated backward kernels and the custom op's `op_forward`, `op_backward`."""
    normalize, eps = attention_node(graph).attr("normalize"), attention_node(graph).attr("eps")
    fq, fk = _linear_features(graph)
    emit_gated_dq_kernel(w, fq, fk, normalize)
    emit_gated_dkdv_kernel(w, fq, fk)
    tables = sorted({e.value for e, _ in gate_lookups(_gate(graph))})
    with w.block("def op_forward(self, q, k, v, ctx, host):"):
        w.line('"""The custom op\'s forward: the output (no row statistics: the backward recomputes them)."""')
        w.line("return triton_forward(self, q, k, v, ctx, host), q.new_zeros(*q.shape[:3], dtype=torch.float32)")
    w.line()
    with w.block("def op_backward(self, q, k, v, out, stat, dout, ctx, host):"):
        backward_head(w, "(dq, dk, dv, gradients of what the gate reads) by the gated chunked recurrences.",
                      fixed_blocks=False, per_query_head=True)
        # the linear backward's chunks: 64-token ones needed 258-386 KB of shared memory at d = 128
        w.line("BLOCK_M = BLOCK_N = (32 if max(BLOCK_D, BLOCK_E) <= 64 else 16) if autotune.on_gpu(q) else 16")
        linear_scalars(w, plan)
        w.line("gq, gk = (host.gate(ctx, n).to(device=q.device, dtype=torch.float32).expand(B, H, n, 1)")
        w.line("          .reshape(B * H, n).contiguous() for n in (Nq, N))")
        w.line("dgq, dgk = torch.empty_like(gq), torch.empty_like(gk)")
        w.line("inv = torch.empty(B, H, Nq, device=q.device, dtype=torch.float32)")
        w.line("dden = torch.empty(B, H, Nq, device=q.device, dtype=torch.float32)")
        blocks = "BLOCK=BLOCK_M, BLOCK_D=BLOCK_D, BLOCK_E=BLOCK_E, PRECISION=precision"
        w.line(f"_gated_bwd_dq[(B * H,)]({bwd_launch()}, mod, gq, gk, dgq, inv, dden, {eps!r},")
        w.line(f"    {blocks})")
        w.line(f"_gated_bwd_dkdv[(B * H,)]({bwd_launch()}, gq, gk, dgk, inv, dden,")
        w.line(f"    {blocks})")
        w.line("grads = host.gate_grads(ctx, Nq, dgq.view(B, H, Nq, 1), {})")
        w.line("dk, dv = triton_ops.group_sum(dk, k), triton_ops.group_sum(dv, v)")
        w.line("return dq, dk, dv, host.gate_grads(ctx, N, dgk.view(B, H, N, 1), grads)")
    w.line()
    w.line(f"GRAD_TABLES = {tuple(tables)!r}  # tables the backward kernels differentiate (through dG)")


def gated_backward_support(graph: Graph, plan: Plan) -> str | None:
    (out,) = graph.operands(graph.output)
    amplitude = expr_of(graph, graph.operands(out)[2])
    if any(e.op in ("param", "input") for e in amplitude.walk()):
        return "the amplitude A of A exp(G(i) - G(j)) reads tables or inputs"
    try:
        gate_lookups(_gate(graph))
    except NotDifferentiable as e:
        return f"the gate G has no derivative ({e})"
    return None


def gated_backward_line(graph: Graph, plan: Plan) -> str:
    return ("generated Triton kernels (dQ and dG forward over chunks, dK/dV/dG by the reverse gated recurrence; "
            "what G reads from dG)")

