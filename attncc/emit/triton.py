"""Emit the Triton backend: fixed kernel skeletons with generated holes, plus their launchers.

Skeletons:
  tiled           grid (cdiv(Nq, BLOCK_M), B*H); loop over key tiles inside the proven band;
                  softmax: online max/sum (rows with no visible key give 0); rows/none: running sums.
  linear, linear_chunked   the kernelized skeletons: see triton_linear.py.
  fft, fft2, graph, rings   the transforms in torch, the contraction (and ring box reads) in Triton:
                  see triton_structured.py.
Holes: the score/weight and mask expressions over tiles (i = offs_m[:, None], j = offs_n[None, :],
h = off_h), feature maps, table loads (indices clamped into range). Backward: generated kernels where
triton_backward.py has them, else recomputation through the torch backend's autograd.
"""
from __future__ import annotations

import math

from ..lang.expr import RUNTIME_SIZES, TExpr
from ..lang.features import FEATURE_MAPS
from ..ir.graph import Graph, attention_node, attention_of
from ..lang.operators import operator_of
from ..lang.normalizers import NORMALIZERS, Normalizer
from ..passes.quadratic import quadratic_form
from ..plan.select import Plan
from .exprs import TritonExpr, band_bounds, brief, key, name_dots
from .let import LetScope
from .writer import CodeWriter

BIG = 1 << 30

HELPERS = {
    "_floordiv": '''@triton.jit
def _floordiv(a, b):
    """Floor division on integers (Triton's // truncates toward zero); x // 0 = 0."""
    safe = tl.where(b == 0, 1, b)
    q = a // safe
    return tl.where(b == 0, 0, tl.where(((a % safe) != 0) & ((a < 0) != (safe < 0)), q - 1, q))
''',
    "_floormod": '''@triton.jit
def _floormod(a, b):
    """Modulo on integers with the divisor's sign; x % 0 = x."""
    safe = tl.where(b == 0, 1, b)
    r = a % safe
    return tl.where(b == 0, a, tl.where((r != 0) & ((r < 0) != (safe < 0)), r + safe, r))
''',
    "_powf": '''@triton.jit
def _powf(a, b):
    """a ** b on floats as in torch: negative bases need integral exponents (else NaN)."""
    r = tl.exp(b * tl.log(tl.abs(a)))
    whole = tl.floor(b) == b
    odd = whole & (tl.abs(b - 2.0 * tl.floor(b * 0.5)) == 1.0)
    r = tl.where(a < 0.0, tl.where(whole, tl.where(odd, -r, r), float('nan')), r)
    return tl.where(a == 0.0, tl.where(b == 0.0, 1.0, tl.where(b > 0.0, 0.0, float('inf'))), r)
''',
    "_tanh": '''@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0
''',
    "_log1p": '''@triton.jit
def _log1p(x):
    """log(1 + x), accurate near 0: log(u) * x / (u - 1) with u = 1 + x as rounded (Goldberg)."""
    u = 1.0 + x
    d = u - 1.0
    r = tl.log(u) * (x / tl.where(d == 0.0, 1.0, d))
    return tl.where(d == 0.0, x, tl.where(u == float('inf'), u, r))
''',
    "_expm1": '''@triton.jit
def _expm1(x):
    """exp(x) - 1, accurate near 0: (u - 1) * x / log(u) with u = exp(x) as rounded (Kahan)."""
    u = tl.exp(x)
    lu = tl.log(u)
    r = (u - 1.0) * (x / tl.where(u == 1.0, 1.0, lu))
    return tl.where(u == 1.0, x, tl.where(u - 1.0 == -1.0, -1.0, tl.where(u == float('inf'), u, r)))
''',
    "_softplus": '''@triton.jit
def _softplus(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), which never overflows."""
    e = tl.exp(-tl.abs(x))
    u = 1.0 + e
    d = u - 1.0
    return tl.maximum(x, 0.0) + tl.where(d == 0.0, e, tl.log(u) * (e / tl.where(d == 0.0, 1.0, d)))
''',
    "_floor_int": '''@triton.jit
def _floor_int(x):
    """floor(x) as an int32, saturating at the int32 range, NaN giving 0 (as rt.float_to_int)."""
    x = tl.where(x == x, x, 0.0)
    r = tl.floor(tl.minimum(tl.maximum(x, -2147483648.0), 2147483520.0)).to(tl.int32)
    return tl.where(x >= 2147483648.0, 2147483647, r)
''',
    "_trunc_int": '''@triton.jit
def _trunc_int(x):
    """x truncated toward 0 as an int32, saturating at the int32 range, NaN giving 0 (as rt.float_to_int)."""
    x = tl.where(x == x, x, 0.0)
    r = tl.minimum(tl.maximum(x, -2147483648.0), 2147483520.0).to(tl.int32)
    return tl.where(x >= 2147483648.0, 2147483647, r)
''',
    "_popcount": '''@triton.jit
def _popcount(x):
    """Set bits of the 32-bit pattern of x (SWAR)."""
    u = x.to(tl.int32).to(tl.uint32, bitcast=True)
    u = u - ((u >> 1) & 0x55555555)
    u = (u & 0x33333333) + ((u >> 2) & 0x33333333)
    u = (u + (u >> 4)) & 0x0F0F0F0F
    return ((u * 0x01010101) >> 24).to(tl.int32)
''',
}


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


class Kernel:
    """Shared pieces of every kernel: table/size arguments and their launcher values."""

    def __init__(self, exprs: list[TExpr | None], param_dims: dict):
        self.params, self.inputs = _tables(*exprs)
        self.sizes = [s for s in sizes_used(*exprs) if s not in RUNTIME_SIZES]
        self.param_dims = param_dims
        self.helpers = sorted({h for t in exprs if t is not None for h in helpers_of(t)})

    def arg_names(self) -> list[str]:
        names = []
        for p in self.params:
            names += [f"P_{p}"] + [f"P_{p}_n{d}" for d in range(self.param_dims[p])] + \
                     [f"P_{p}_s{d}" for d in range(self.param_dims[p])]
        for name, nd in self.inputs:
            names += [f"I_{name}", f"I_{name}_sb"] + [f"I_{name}_n{d}" for d in range(nd)] + \
                     [f"I_{name}_s{d}" for d in range(nd)]
        names += [f"S_{s}" for s in self.sizes]
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
        return values


def helpers_of(t: TExpr):
    for e in t.walk():
        operator = operator_of(e)
        helper = operator.triton_helper(e) if operator is not None else None
        if helper is not None:
            yield helper


def emit_feature_fn(w: CodeWriter, name: str) -> None:
    w.line("@triton.jit")
    with w.block(f"def _feature_{name}(x):"):
        w.line(f'"""{FEATURE_MAPS[name].doc}"""')
        w.line(f"return {FEATURE_MAPS[name].triton_expr}")
    w.line()


def load_rows(w: CodeWriter, var: str, ptr: str, offs: str, limit: str, cols: str, width: str, feature=None):
    """Load a [rows, cols] tile of a [B, H, tokens, dim] tensor, zero outside; optionally apply phi in fp32."""
    w.line(f"{var} = tl.load({ptr} + {offs}[:, None] * stride_{ptr.lower()}m + {cols}[None, :] * stride_{ptr.lower()}d, "
           f"mask=({offs}[:, None] < {limit}) & ({cols}[None, :] < {width}), other=0.0)")
    if feature is not None:
        x = f"{var}.to(tl.float32)"
        body = f"_feature_{feature}({x})" if feature != "identity" else x
        w.line(f"{var} = tl.where(({offs}[:, None] < {limit}) & ({cols}[None, :] < {width}), {body}, 0.0)")


def kernel_common_args() -> str:
    return ("Q, K, V, Out, Nq, N, H, D, E, "
            "stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_km, stride_kd, "
            "stride_vb, stride_vh, stride_vm, stride_vd, stride_ob, stride_oh, stride_om, stride_od")


def launch_common() -> str:
    return ("q, k, v, out, Nq, N, H, D, E, *q.stride(), *k.stride(), *v.stride(), *out.stride()")


def program_prologue(w: CodeWriter, per_bh_only: bool = False) -> None:
    if not per_bh_only:
        w.line("pid_m = tl.program_id(0)")
        w.line("pid_bh = tl.program_id(1)")
    else:
        w.line("pid_bh = tl.program_id(0)")
    w.line("off_b = pid_bh // H")
    w.line("off_h = pid_bh % H")
    w.line("Q += off_b * stride_qb + off_h * stride_qh")
    w.line("K += off_b * stride_kb + off_h * stride_kh")
    w.line("V += off_b * stride_vb + off_h * stride_vh")
    w.line("Out += off_b * stride_ob + off_h * stride_oh")
    w.line("offs_d = tl.arange(0, BLOCK_D)")
    w.line("offs_e = tl.arange(0, BLOCK_E)")



def query_tile(w: CodeWriter, dots: dict) -> None:
    """Kernel prologue, then the query tile's rows, once per feature map the dots apply to them."""
    program_prologue(w)
    w.line("offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)")
    for fm in dict.fromkeys(row_feature(d.args[0]) for d in dots):
        load_rows(w, f"q_{fm or 'raw'}", "Q", "offs_m", "Nq", "offs_d", "D", feature=fm)


def row_feature(t: TExpr):
    """The elementwise map of a dot side; random-feature rows arrive already mapped (attncc/lang/features.py)."""
    return t.value if t.op == "feature" and t.value in FEATURE_MAPS else None


def tile_dots(w: CodeWriter, dots: dict) -> None:
    """Inside a key-tile loop: load the tile's key rows (through each map used) and form every dot."""
    for fm in dict.fromkeys(row_feature(d.args[1]) for d in dots):
        load_rows(w, f"k_{fm or 'raw'}", "K", "offs_n", "N", "offs_d", "D", feature=fm)
    for d, name in dots.items():
        qvar, kvar = (f"{x}_{row_feature(side) or 'raw'}" for x, side in zip("qk", d.args))
        w.line(f"{name} = tl.dot({qvar}, tl.trans({kvar}), input_precision=PRECISION)")


def key_tile_loop(w: CodeWriter, plan: Plan, tiles: str = "Part") -> str:
    """The loop header over the key tiles that query tile pid_m may see (block layout, band, or all);
    a layout built per call lists them: `tiles` Part (partial), Full or Row (every visited one)."""
    lo, hi = band_bounds(plan.mask)
    if plan.entry.token_tiles:
        if tiles == "Part":
            w.line(f"# layout built per call ({plan.attrs['token_layout'].describe()}): partial tiles, then full ones")
        w.line("row = off_b * tl.cdiv(Nq, BLOCK_M) + pid_m")
        return f"for idx in range(0, tl.load({tiles}Count + row)):"
    if plan.entry.block_sparse:
        w.line(f"# block-sparse: only the key tiles that the layout row lists ({plan.attrs['block_layout'].describe()})")
        return "for idx in range(tl.load(RowPtr + pid_m), tl.load(RowPtr + pid_m + 1)):"
    if lo is not None or hi is not None:
        w.line(f"# mask is {plan.mask.describe()}: only key tiles inside the band are visited")
        w.line("lo = tl.maximum(pid_m * BLOCK_M - band_hi, 0) // BLOCK_N * BLOCK_N")
        w.line("hi = tl.minimum(pid_m * BLOCK_M + BLOCK_M - band_lo, N)")
        return "for start_n in range(lo, hi, BLOCK_N):"
    return "for start_n in range(0, N, BLOCK_N):"


def emit_tiled_kernel(w: CodeWriter, graph: Graph, plan: Plan, kernel: Kernel) -> None:
    """`_attn_fwd`, one query tile over the key tiles it may see, and its launcher `triton_forward`."""
    att = attention_node(graph)
    norm = NORMALIZERS[att.attr("normalize")]
    scores, mask = quadratic_form(graph, attention_of(graph))
    dots = name_dots(scores)
    ex = KernelExpr(dots, {s: size_arg(s) for s in sizes_used(scores, mask)})
    sparse = plan.entry.block_sparse
    stats = norm.row_statistic  # a row statistic for the backward: logsumexp, or the denominator
    extra = "".join(f"{a}, " for a in kernel.arg_names()) + ("RowPtr, Cols, " if sparse else "") + \
        ("PartCount, PartIndex, FullCount, FullIndex, " if plan.entry.token_tiles else "") + ("Stat, " if stats else "")
    w.line("@triton.jit")
    with w.block(f"def _attn_fwd({kernel_common_args()}, {extra}sm_scale, eps, band_lo, band_hi,"):
        w.line("BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,")
        w.line("PRECISION: tl.constexpr):")
        w.line(f'"""{att.attr("normalize")} attention over tiles; '
               f'{norm.score_name} = {brief(scores)}; mask = {brief(mask) if mask else "none"}."""')
        query_tile(w, dots)
        w.lines_of(RUNNING_STATE)
        update = ONLINE_SOFTMAX_UPDATE if norm.online_softmax else WEIGHTED_SUM_UPDATE
        with w.block(key_tile_loop(w, plan)):
            key_tile_weights(w, tile_start(plan, "Part"), dots, ex, scores, mask)
            w.lines_of(update)
        if plan.entry.token_tiles:  # every pair of a full tile is kept: no mask to evaluate
            with w.block(key_tile_loop(w, plan, "Full")):
                key_tile_weights(w, tile_start(plan, "Full"), dots, ex, scores, None)
                w.lines_of(update)
        store_tiled_rows(w, norm, att.attr("eps"))
    w.line()
    emit_tiled_launcher(w, plan, kernel, att.attr("eps"), stats)


# the running state of a query tile: row max (softmax only), row sums, and the weighted value sums
RUNNING_STATE = """\
m_i = tl.full([BLOCK_M], float('-inf'), dtype=tl.float32)
l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
acc = tl.zeros([BLOCK_M, BLOCK_E], dtype=tl.float32)
"""

# one key tile folded into the running state, rescaled to the new row max (FlashAttention)
ONLINE_SOFTMAX_UPDATE = """\
s = tl.where(valid, s, float('-inf'))
m_new = tl.maximum(m_i, tl.max(s, 1))
m_safe = tl.where(m_new == float('-inf'), 0.0, m_new)  # rows with no visible key yet
p = tl.exp(s - m_safe[:, None])
alpha = tl.exp(m_i - m_safe)
l_i = l_i * alpha + tl.sum(p, 1)
acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
m_i = m_new
"""

# one key tile of weights (rows, none) added to the running sums
WEIGHTED_SUM_UPDATE = """\
p = tl.where(valid, s * 1.0, 0.0)  # unnormalized weights: kept in fp32 (fp16 would under/overflow)
l_i += tl.sum(p, 1)
acc += tl.dot(p, v.to(tl.float32), input_precision=PRECISION)
"""


def tile_start(plan: Plan, tiles: str) -> str | None:
    """The first key of the loop's tile `idx`, when a layout lists the tiles (None: the loop counts keys)."""
    if plan.entry.token_tiles:
        return f"tl.load({tiles}Index + row * tl.cdiv(N, BLOCK_N) + idx) * BLOCK_N"
    return "tl.load(Cols + idx) * BLOCK_N" if plan.entry.block_sparse else None


def key_tile_weights(w: CodeWriter, start: str | None, dots: dict, ex: KernelExpr, scores: TExpr,
                     mask: TExpr | None) -> None:
    """Inside the key-tile loop: the tile's keys (from `start`, the first key of a listed tile), its
    scores `s`, where they are visible `valid`, its value rows."""
    if start is not None:
        w.line(f"start_n = {start}")
    w.line("offs_n = start_n + tl.arange(0, BLOCK_N)")
    tile_dots(w, dots)
    scope = LetScope(ex)
    scope.bind(w, [scores, mask])
    w.line(f"s = {scope(scores)}")
    valid = "(offs_n[None, :] < N)"
    if mask is not None:
        valid = f"{valid} & ({scope(mask)})"
    w.line(f"valid = {valid}")
    load_rows(w, "v", "V", "offs_n", "N", "offs_e", "E")


def store_tiled_rows(w: CodeWriter, norm: Normalizer, eps: float) -> None:
    """After the key tiles: normalize the rows, save the row statistic the backward reads, store the output."""
    if norm.online_softmax and eps:  # exp weights under rows (passes/stable_exp.py): eps is a key of logit log(eps)
        w.line(f"m_top = tl.maximum(m_i, {math.log(eps)!r})  # max(row max, log(eps)): every exponent <= 0")
        w.line("alpha = tl.exp(m_i - m_top)")
        w.line(f"z = l_i * alpha + tl.exp({math.log(eps)!r} - m_top)")
        w.line("out = acc * (alpha / z)[:, None]")
        w.line("tl.store(Stat + pid_bh * Nq + offs_m, m_top + tl.log(z), mask=offs_m < Nq)  # log(sum e^s + eps)")
    elif norm.online_softmax:
        w.line("out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # no visible key: output 0")
        w.line("tl.store(Stat + pid_bh * Nq + offs_m, m_i + tl.log(tl.where(l_i == 0.0, 1.0, l_i)), mask=offs_m < Nq)  # -inf: no visible key")
    elif norm.divides_by_row_sum:
        w.line("z = l_i + eps")
        w.line("tl.store(Stat + pid_bh * Nq + offs_m, z, mask=offs_m < Nq)")
        w.line("out = acc / tl.where(z == 0.0, 1.0, z)[:, None]  # nothing to normalize: output 0")
    else:
        w.line("out = acc")
    w.line("tl.store(Out + offs_m[:, None] * stride_om + offs_e[None, :] * stride_od, out.to(Out.dtype.element_ty), "
           "mask=(offs_m[:, None] < Nq) & (offs_e[None, :] < E))")


def emit_tiled_launcher(w: CodeWriter, plan: Plan, kernel: Kernel, eps: float, stats: bool) -> None:
    """`triton_forward`: `_attn_fwd` launched with the tiles autotune chose (block-sparse: the layout's tile)."""
    sparse = plan.entry.block_sparse
    with w.block(f"def triton_forward(self, q, k, v, ctx, host{', stat=None' if stats else ''}):"):
        launcher_head(w, fixed_blocks=False)
        if stats:
            w.line("stat = torch.empty(B, H, Nq, device=q.device, dtype=torch.float32) if stat is None else stat")
        if sparse:
            w.line("tile, row_ptr, cols = self.cached_tiles(ctx, host.block_layout, q.device)  # once per length")
        band_line(w, plan)
        vals = "".join(f"{v}, " for v in kernel.arg_values()) + ("row_ptr, cols, " if sparse else "")
        stat = "stat, " if stats else ""
        w.line()
        with w.block(f"def launch({'' if sparse else 'BLOCK_M, BLOCK_N, '}num_warps, num_stages):"):
            if sparse:
                w.line("BLOCK_M = BLOCK_N = tile")
            if plan.entry.token_tiles:
                w.line("tiles = token_tiles(ctx, B, BLOCK_M, BLOCK_N, q.device)  # on the device, reused while the inputs are")
                vals += "tiles.part_count, tiles.part_index, tiles.full_count, tiles.full_index, "
            w.line("grid = (triton.cdiv(Nq, BLOCK_M), B * H)")
            w.line(f"_attn_fwd[grid]({launch_common()}, {vals}{stat}ctx.scale, {eps!r}, band_lo, band_hi,")
            w.line("    BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, BLOCK_E=BLOCK_E, PRECISION=precision,")
            w.line("    num_warps=num_warps, num_stages=num_stages)")
        w.line()
        tuned_launch(w, plan.entry.autotune_kind, ", tile=tile" if sparse else "")


def band_line(w: CodeWriter, plan: Plan) -> None:
    lo, hi = band_bounds(plan.mask)
    band = [lo or f"-{BIG}", hi or str(BIG)]  # an unbounded side: a bound no tile reaches
    w.line(f"band_lo, band_hi = {band[0]}, {band[1]}  # keys j with band_lo <= i - j <= band_hi")
    # -N < i - j < Nq: a bound past that range means the same, and a size near 2^31 (a "no limit"
    # sentinel) would overflow the kernel's int32 tile arithmetic
    w.line("band_lo, band_hi = (min(max(bound, -N), Nq) for bound in (band_lo, band_hi))  # saturated to the offsets that occur")


def launcher_head(w: CodeWriter, allocate_out: bool = True, fixed_blocks: bool = True) -> None:
    w.line("B, H, Nq, D = q.shape")
    w.line("N, E = k.shape[2], v.shape[3]")
    w.line("q, k, v = q.contiguous(), k.contiguous(), v.contiguous()")
    if allocate_out:
        w.line("out = torch.empty(B, H, Nq, E, device=q.device, dtype=q.dtype)")
    if fixed_blocks:  # forward launchers take theirs from autotune
        w.line("BLOCK_M = BLOCK_N = 64 if q.is_cuda else 16")
    w.line("BLOCK_D = max(16, triton.next_power_of_2(D))")
    w.line("BLOCK_E = max(16, triton.next_power_of_2(E))")
    w.line("precision = 'ieee' if q.dtype == torch.float32 else 'tf32'")


def tuned_launch(w: CodeWriter, kind: str, extra_sizes: str = "") -> None:
    """Launch with the configuration autotune chose for these sizes (tuned once per key on CUDA)."""
    w.line(f"sizes = dict(BH=B * H, Nq=Nq, N=N, D=BLOCK_D, E=BLOCK_E{extra_sizes})")
    w.line(f"launch(**autotune.best(SPEC_HASH, {kind!r}, q, sizes, launch))")
    w.line("return out")


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
from attncc.runtime import autotune, triton_ops

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


