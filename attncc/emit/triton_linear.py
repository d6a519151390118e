"""Emit the Triton kernels of kernelized attention (lowerings `linear` and `linear_chunked`).

  linear          state pass S = phi(K)^T V, z = phi(K)^T 1 per (b, h); output pass phi(Q) S / (phi(Q) z + eps).
  linear_chunked  one program per (b, h) walks chunks: masked quadratic inside, carried (decayed) state across.
Both split the value columns across programs (VALUE_TILE at most): the fp32 state S [BLOCK_D, BLOCK_E] a
program keeps in registers is one column block of it, and each program recomputes the normalizer row
sums z (a BLOCK_D vector: cheaper than sharing it). Whole-width S spilled at d = 64 (docs/compile_gate.md).
Wide feature rows (Based's tensor powers, m = 2145 at d = 64) split the feature columns too (FEATURE_TILE
at most, BLOCK_D in the kernels is then one feature block): num and den are sums over the features, so
  linear          `_linear_state` writes the state rows of its feature block; `_linear_out` loops over the
                  feature blocks with one [BLOCK, BLOCK_E] accumulator;
  linear_chunked  each program carries S[its features, its values] and stores its share of num and den
                  (fp32 partials [feature blocks, B H, Nq, E]); the launcher sums them and divides
                  (deterministic; flash-linear-attention's fused Based kernels split the key dim so).
The chunk loaders and state updates here are shared with their backward (triton_backward_linear.py).
"""
from __future__ import annotations

from ..ir.graph import Graph, attention_node, attention_of, expr_of
from ..lang.normalizers import NORMALIZERS
from ..plan.select import Plan
from .triton import (emit_feature_fn, kernel_common_args, launch_common, launcher_head, load_rows, program_prologue,
                     row_feature, tuned_launch)
from .triton_helpers import HELPERS
from .writer import CodeWriter

VALUE_TILE = 32  # the most value columns (BLOCK_E) one program of the forward kernels carries
FMA_VALUE_TILE = 16  # the same for fp32 inputs, whose dots run on FMA units with operands in registers
FEATURE_TILE = 128  # the most feature columns (BLOCK_D) one program carries: d = 128 rows did not spill
FMA_FEATURE_TILE = 64  # fp32 inputs: 128 feature columns spilled 48-104 B (docs/compile_gate.md)
_CHUNK_ROWS = {"pq": ("Q", "Nq", "offs_d", "D", False), "pk": ("K", "N", "offs_d", "D", False),
               "v": ("V", "N", "offs_e", "E", True), "do": ("DO", "Nq", "offs_e", "E", True)}


def load_chunk(w: CodeWriter, names: tuple[str, ...], fq: str | None = None, fk: str | None = None,
                first: str = "start") -> None:
    """The chunk of tokens from `first`: `offs`, then each named row set (q and k through their feature
    maps fq, fk; values and output gradients upcast to fp32)."""
    w.line(f"offs = {first} + tl.arange(0, BLOCK)")
    for name in names:
        ptr, bound, cols, width, upcast = _CHUNK_ROWS[name]
        load_rows(w, name, ptr, "offs", bound, cols, width, feature={"pq": fq, "pk": fk}.get(name))
        if upcast:
            w.line(f"{name} = {name}.to(tl.float32)")


def emit_linear_kernels(w: CodeWriter, graph: Graph, plan: Plan) -> None:
    """The linear kernels (chunked causal, or state then output) and their launcher `triton_forward`."""
    ops = graph.operands(attention_of(graph))
    att = attention_node(graph)
    fq = row_feature(expr_of(graph, ops[0])) or "identity"
    fk = row_feature(expr_of(graph, ops[1])) or "identity"
    finish = finish_rows(att.attr("normalize"))
    if plan.entry.causal_chunks:
        emit_linear_causal_kernel(w, fq, fk, finish, bool(plan.attrs.get("decayed")))
    else:
        emit_linear_state_kernel(w, fk)
        emit_linear_out_kernel(w, fq, finish)
    emit_linear_launcher(w, plan, att.attr("eps"), att.attr("normalize"))


def finish_rows(normalize: str) -> str:
    """The output rows from num = phi(q) S and den = phi(q) z, both times the modulation."""
    return "num * mod / tl.where(den * mod + eps == 0.0, 1.0, den * mod + eps)[:, None]" \
        if NORMALIZERS[normalize].divides_by_row_sum else "num * mod"


def emit_linear_causal_kernel(w: CodeWriter, fq: str, fk: str, finish: str, decayed: bool) -> None:
    """`_linear_causal`: one program per (b, h, value block, feature block) walks the chunks, quadratic
    inside, the state carried across."""
    w.line("@triton.jit")
    with w.block(f"def _linear_causal({kernel_common_args()}, Mod, Decay, Part, PartDen, eps, BLOCK: tl.constexpr, "
                 "BLOCK_D: tl.constexpr,"):
        w.line("BLOCK_E: tl.constexpr, SPLIT_D: tl.constexpr, PRECISION: tl.constexpr):")
        w.line('"""Causal linear attention, one program per (b, h, BLOCK_E value columns, BLOCK_D feature columns): chunks of BLOCK')
        w.line('tokens, quadratic (masked) inside a chunk, the running state S = sum phi(k_j) v_j^T, z = sum phi(k_j) across chunks'
               + (' (decayed: S <- gamma^BLOCK S + sum_b gamma^(BLOCK-1-b) phi(k_b) v_b^T)' if decayed else '') + ';')
        w.line('SPLIT_D: one of several feature blocks, which stores its share of num and den (Part, PartDen)."""')
        program_prologue(w, per_bh_only=True, value_axis=1, feature_axis=2)
        w.line("mod = tl.load(Mod + pid_bh)")
        w.line("S = tl.zeros([BLOCK_D, BLOCK_E], dtype=tl.float32)")
        w.line("z = tl.zeros([BLOCK_D], dtype=tl.float32)")
        if decayed:
            decay_factors(w)
        with w.block("for start in range(0, tl.maximum(Nq, N), BLOCK):"):
            load_chunk(w, ("pq", "pk", "v"), fq, fk)
            w.line("a = tl.dot(pq, tl.trans(pk), input_precision=PRECISION)")
            if decayed:
                w.line("a = a * within")
                w.line("num = tl.dot(a, v, input_precision=PRECISION) + q_decay[:, None] * "
                       "tl.dot(pq, S, input_precision=PRECISION)")
                w.line("den = tl.sum(a, 1) + q_decay * tl.sum(pq * z[None, :], 1)")
            else:
                w.line("a = tl.where(offs[:, None] >= offs[None, :], a, 0.0)")
                w.line("num = tl.dot(a, v, input_precision=PRECISION) + tl.dot(pq, S, input_precision=PRECISION)")
                w.line("den = tl.sum(a, 1) + tl.sum(pq * z[None, :], 1)")
            store_rows(w, finish)
            carry_state(w, decayed, "pk", "k_decay", "v", "S", "z", "pk")
    w.line()


def emit_linear_state_kernel(w: CodeWriter, fk: str) -> None:
    """`_linear_state`: S = phi(K)^T V (one block of value columns) and z = phi(K)^T 1 of one (b, kv head),
    saved for `_linear_out` in a [B Hkv, BLOCK_D, STATE_E] buffer (STATE_E: the padded value dim): the
    query heads of a group share their key/value head's state."""
    w.line("@triton.jit")
    with w.block(f"def _linear_state({kernel_common_args()}, State, Z, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,"):
        w.line("BLOCK_E: tl.constexpr, STATE_D: tl.constexpr, STATE_E: tl.constexpr, PRECISION: tl.constexpr):")
        w.line('"""S[feature block, value block] = phi(K)^T V and z[feature block] = phi(K)^T 1 for one (b, kv head)."""')
        program_prologue(w, per_bh_only=True, value_axis=1, feature_axis=2, per_kv_head=True)
        w.line("S = tl.zeros([BLOCK_D, BLOCK_E], dtype=tl.float32)")
        w.line("z = tl.zeros([BLOCK_D], dtype=tl.float32)")
        with w.block("for start in range(0, N, BLOCK):"):
            load_chunk(w, ("pk", "v"), fk=fk)
            w.line("S += tl.dot(tl.trans(pk), v, input_precision=PRECISION)")
            w.line("z += tl.sum(pk, 0)")
        w.line("State += pid_bh * STATE_D * STATE_E")
        w.line("tl.store(State + offs_d[:, None] * STATE_E + offs_e[None, :], S)")
        with w.block("if pid_e == 0:  # every value block computed the same z"):
            w.line("tl.store(Z + pid_bh * STATE_D + offs_d, z)")
    w.line()


def emit_linear_out_kernel(w: CodeWriter, fq: str, finish: str) -> None:
    """`_linear_out`: one tile of queries and one block of value columns read against the saved state,
    one feature block (BLOCK_D columns) at a time."""
    w.line("@triton.jit")
    with w.block(f"def _linear_out({kernel_common_args()}, State, Z, Mod, eps, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,"):
        w.line("BLOCK_E: tl.constexpr, STATE_D: tl.constexpr, STATE_E: tl.constexpr, PRECISION: tl.constexpr):")
        w.line('"""out = phi(Q) S / (phi(Q) z + eps) for one tile of queries and BLOCK_E value columns."""')
        program_prologue(w, value_axis=2)
        w.line("offs = pid_m * BLOCK + tl.arange(0, BLOCK)")
        w.line("mod = tl.load(Mod + pid_bh)")
        w.line("kv = pid_bh // GROUP  # the (b, kv head) of the state: b Hkv + off_hk")
        w.line("State += kv * STATE_D * STATE_E")
        w.line("num = tl.zeros([BLOCK, BLOCK_E], dtype=tl.float32)")
        w.line("den = tl.zeros([BLOCK], dtype=tl.float32)")
        with w.block("for f in range(0, D, BLOCK_D):  # one pass unless the feature rows are wider than BLOCK_D"):
            w.line("offs_d = f + tl.arange(0, BLOCK_D)")
            load_rows(w, "pq", "Q", "offs", "Nq", "offs_d", "D", feature=fq)
            w.line("S = tl.load(State + offs_d[:, None] * STATE_E + offs_e[None, :])")
            w.line("z = tl.load(Z + kv * STATE_D + offs_d)")
            w.line("num += tl.dot(pq, S, input_precision=PRECISION)")
            w.line("den += tl.sum(pq * z[None, :], 1)")
        w.line(f"out = {finish}")
        w.line("tl.store(Out + offs[:, None] * stride_om + offs_e[None, :] * stride_od, out.to(Out.dtype.element_ty), "
               "mask=(offs[:, None] < Nq) & (offs_e[None, :] < E))")
    w.line()


def store_rows(w: CodeWriter, finish: str) -> None:
    """Kernel lines: the chunk's output rows, or under SPLIT_D this feature block's share of num and den
    ([feature blocks, B H, Nq, E] and [feature blocks, B H, Nq], fp32; den once, by value block 0)."""
    with w.block("if SPLIT_D:"):
        w.line("part = (pid_f * tl.num_programs(0) + pid_bh) * Nq + offs")
        w.line("tl.store(Part + part[:, None] * E + offs_e[None, :], num, mask=(offs[:, None] < Nq) & (offs_e[None, :] < E))")
        with w.block("if pid_e == 0:  # every value block computed the same den"):
            w.line("tl.store(PartDen + part, den, mask=offs < Nq)")
    with w.block("else:"):
        w.line(f"out = {finish}")
        w.line("tl.store(Out + offs[:, None] * stride_om + offs_e[None, :] * stride_od, out.to(Out.dtype.element_ty), "
               "mask=(offs[:, None] < Nq) & (offs_e[None, :] < E))")


def emit_linear_launcher(w: CodeWriter, plan: Plan, eps: float, normalize: str) -> None:
    """`triton_forward` of the linear lowerings: the kernels launched with the chunk autotune chose."""
    causal = plan.entry.causal_chunks
    with w.block(f"def triton_forward(self, q, k, v, ctx, host{', den=None' if causal else ''}):"):
        if causal:
            w.line('"""den: a [B, H, Nq] fp32 buffer that takes the rows\' denominators when the feature blocks are split."""')
        launcher_head(w, fixed_blocks=False)
        linear_scalars(w, plan)
        value_tile(w)
        feature_tile(w)
        if not causal:
            w.line("state = torch.empty(B * Hkv, BLOCK_D, BLOCK_E, device=q.device, dtype=torch.float32)  # per kv head")
            w.line("z = torch.empty(B * Hkv, BLOCK_D, device=q.device, dtype=torch.float32)")
        else:
            w.line("part = part_den = None  # each feature block's share of num and den, when there are several")
            with w.block("if feature_blocks > 1:"):
                w.line("part = torch.empty(feature_blocks, B * H, Nq, E, device=q.device, dtype=torch.float32)")
                w.line("part_den = torch.empty(feature_blocks, B * H, Nq, device=q.device, dtype=torch.float32)")
        w.line()
        with w.block("def launch(BLOCK, num_warps, num_stages):"):
            tail = "PRECISION=precision, num_warps=num_warps, num_stages=num_stages)"
            if causal:
                w.line(f"_linear_causal[(B * H, value_blocks, feature_blocks)]({launch_common()}, mod, gamma, part, "
                       f"part_den, {eps!r},")
                w.line(f"    BLOCK=BLOCK, BLOCK_D=F_TILE, BLOCK_E=E_TILE, SPLIT_D=feature_blocks > 1, {tail}")
                with w.block("if feature_blocks > 1:  # the feature blocks' shares summed, then divided"):
                    w.line("m = mod.reshape(B, H, 1, 1)")
                    w.line("rows = part_den.sum(0).view(B, H, Nq)")
                    with w.block("if den is not None:"):
                        w.line("den.copy_(rows)")
                    w.line(f"out.copy_(rt.finish_rows(part.sum(0).view(B, H, Nq, E) * m, rows * m[..., 0], {normalize!r}, {eps!r}))")
            else:
                w.line(f"_linear_state[(B * Hkv, value_blocks, feature_blocks)]({launch_common()}, state, z, BLOCK=BLOCK,")
                w.line(f"    BLOCK_D=F_TILE, BLOCK_E=E_TILE, STATE_D=BLOCK_D, STATE_E=BLOCK_E, {tail}")
                w.line(f"_linear_out[(triton.cdiv(Nq, BLOCK), B * H, value_blocks)]({launch_common()}, state, z, mod,")
                w.line(f"    {eps!r}, BLOCK=BLOCK, BLOCK_D=F_TILE, BLOCK_E=E_TILE, STATE_D=BLOCK_D, STATE_E=BLOCK_E, {tail}")
        w.line()
        tuned_launch(w, plan.entry.autotune_kind)


def value_tile(w: CodeWriter) -> None:
    """Launcher lines: the value columns of one program (`E_TILE`, at most VALUE_TILE) and their blocks."""
    w.line(f"E_TILE = min(BLOCK_E, {VALUE_TILE} if q.element_size() <= 2 else {FMA_VALUE_TILE})  # the fp32 state block [BLOCK_D, E_TILE] stays in registers")
    w.line("value_blocks = triton.cdiv(E, E_TILE)")


def feature_tile(w: CodeWriter) -> None:
    """Launcher lines: the feature columns of one program (`F_TILE`, at most FEATURE_TILE) and their blocks."""
    w.line(f"F_TILE = min(BLOCK_D, {FEATURE_TILE} if q.element_size() <= 2 else {FMA_FEATURE_TILE})  # the state rows [F_TILE, E_TILE] of one program")
    w.line("feature_blocks = triton.cdiv(D, F_TILE)")


def linear_scalars(w: CodeWriter, plan: Plan) -> None:
    """Launcher lines: the per-(b, h) modulation `mod` and, for the chunked lowering, the decay `gamma`."""
    if plan.attrs.get("modulated"):
        w.line("mod = host.modulation(ctx).to(device=q.device, dtype=torch.float32).expand(B, H, 1, 1).contiguous()")
    else:
        w.line("mod = torch.ones(B, H, device=q.device, dtype=torch.float32)")
    if not plan.entry.causal_chunks:
        return
    if plan.attrs.get("decayed"):
        w.line("gamma = host.decay(ctx).to(device=q.device, dtype=torch.float32).expand(B, H, 1, 1).contiguous()")
    else:
        w.line("gamma = mod  # unused without a decay")


def decay_factors(w: CodeWriter) -> None:
    """Kernel lines: gamma^(a - b) inside a chunk, gamma^(a + 1) for queries, gamma^(C - 1 - b) for keys, gamma^C."""
    w.line("gamma = tl.load(Decay + pid_bh)")
    w.line("pos = tl.arange(0, BLOCK) * 1.0")
    w.line("steps = pos[:, None] - pos[None, :]")
    w.line("within = tl.where(steps >= 0, _powf(gamma + steps * 0.0, tl.maximum(steps, 0.0)), 0.0)")
    w.line("q_decay = _powf(gamma + pos * 0.0, pos + 1.0)")
    w.line("k_decay = _powf(gamma + pos * 0.0, (BLOCK - 1) - pos)")
    w.line("carry = _powf(gamma, BLOCK * 1.0)")


def carry_state(w: CodeWriter, decayed: bool, rows: str, decay: str, right: str, state: str, vec: str, vec_rows: str):
    """Kernel lines: state <- carry state + rows^T right, vec <- carry vec + column sums of vec_rows,
    the rows first scaled by their decay (no carry and no scaling without a decay)."""
    if decayed:
        w.line(f"{rows} = {rows} * {decay}[:, None]")
        w.line(f"{state} = carry * {state} + tl.dot(tl.trans({rows}), {right}, input_precision=PRECISION)")
        w.line(f"{vec} = carry * {vec} + tl.sum({vec_rows}, 0)")
    else:
        w.line(f"{state} += tl.dot(tl.trans({rows}), {right}, input_precision=PRECISION)")
        w.line(f"{vec} += tl.sum({vec_rows}, 0)")


def emit_linear_triton(w: CodeWriter, graph: Graph, plan: Plan) -> str:
    """The linear skeletons' kernels and launchers (state + output, or chunked causal)."""
    out = attention_of(graph)
    if plan.attrs.get("decayed") and plan.entry.causal_chunks:
        w.lines_of(HELPERS["_powf"])
        w.line()
    for fm in sorted({row_feature(expr_of(graph, o)) for o in graph.operands(out)[:2]} - {None, "identity"}):
        emit_feature_fn(w, fm)
    emit_linear_kernels(w, graph, plan)
    return "chunked causal linear kernel" if plan.entry.causal_chunks else "linear state + output kernels"
