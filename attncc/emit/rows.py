"""Rows of a [B, H, tokens, dim] tensor into a kernel's tile: pointer loads (masked to the bounds,
optionally through a feature map) and, under the kernels' USE_TMA constexpr (sm_90, chosen by the
launchers through attncc/runtime/tma.py), loads through device-side tensor descriptors."""
from __future__ import annotations

from contextlib import nullcontext

from ..lang.expr import TExpr
from ..lang.features import FEATURE_MAPS
from .writer import CodeWriter


def row_feature(t: TExpr):
    """The elementwise map of a dot side; random-feature rows arrive already mapped (attncc/lang/features.py)."""
    return t.value if t.op == "feature" and t.value in FEATURE_MAPS else None


def load_rows(w: CodeWriter, var: str, ptr: str, offs: str, limit: str | None, cols: str, width: str, feature=None):
    """Load a [rows, cols] tile of a [B, H, tokens, dim] tensor, zero outside; optionally apply phi in fp32.
    limit None: the rows are known to lie inside (a full tile), only the columns are masked."""
    inside = (f"({offs}[:, None] < {limit}) & " if limit is not None else "") + f"({cols}[None, :] < {width})"
    w.line(f"{var} = tl.load({ptr} + {offs}[:, None] * stride_{ptr.lower()}m + {cols}[None, :] * stride_{ptr.lower()}d, "
           f"mask={inside}, other=0.0)")
    if feature is not None:
        x = f"{var}.to(tl.float32)"
        body = f"_feature_{feature}({x})" if feature != "identity" else x
        w.line(f"{var} = tl.where({inside}, {body}, 0.0)")


def descriptor_rows(w: CodeWriter, var: str, ptr: str, cols: str, width: str, start: str = "start_n",
                    offs: str = "offs_n", limit: str | None = None) -> None:
    """A tile's rows from `start` (default: a full key tile's): the descriptor's load under USE_TMA
    (zero past the bounds), else the pointer load of load_rows."""
    with w.block("if USE_TMA:"):
        w.line(f"{var} = {ptr.lower()}_desc.load([{start}, 0])")
    with w.block("else:"):
        load_rows(w, var, ptr, offs, limit, cols, width)


TMA_NOTE = "# sm_90: tiles by the tensor memory accelerator, out-of-bounds rows and columns zero"


def tensor_descriptors(w: CodeWriter, dots: dict, with_do: bool = False, sides: str = "qkv") -> None:
    """The device-side descriptors of one (batch, head) (USE_TMA: sm_90, the launcher's choice, see
    attncc/runtime/tma.py): [tokens, dim] with the row stride and a contiguous last dim, of the raw
    query and key rows (those no feature map is applied to), of the values (and of dO: with_do), of
    the `sides` named (q: the query side with dO; k, v). Each is made from the tensor's pointer as the
    kernel set it: K and V at the key/value head (Hkv heads), Q and dO at the query head."""
    raw_q = "q" in sides and any(row_feature(d.args[0]) is None for d in dots)
    raw_k = "k" in sides and any(row_feature(d.args[1]) is None for d in dots)
    descriptors = [("q", "Q", "Nq", "D", "BLOCK_M", "BLOCK_D")] if raw_q else []
    descriptors += [("k", "K", "N", "D", "BLOCK_N", "BLOCK_D")] if raw_k else []
    descriptors += [("v", "V", "N", "E", "BLOCK_N", "BLOCK_E")] if "v" in sides else []
    descriptors += [("do", "DO", "Nq", "E", "BLOCK_M", "BLOCK_E")] if with_do and "q" in sides else []
    for var, ptr, rows, cols, block_rows, block_cols in descriptors:
        w.line(f"{var}_desc = tl.make_tensor_descriptor({ptr}, shape=[{rows}, {cols}], "
               f"strides=[stride_{var}m, 1], block_shape=[{block_rows}, {block_cols}])")


# fp32 inputs: head columns per step of the score dots when a kernel forms feature-mapped key rows: the
# K of a dot (Triton 3.6 wants K >= 16; 8 columns compiled with 3.9 only). With the fp32 tiles of such
# kernels (32 x 16, 8 warps) no step size measured on grid_rpe, ripple, toeplitz_linear spills at d = 64 or 128
FMA_ROW_CHUNK = 16


def chunked_rows(dots) -> bool:
    """Whether the score dots read key rows through a feature map: such a kernel takes the constexpr
    ROW_CHUNK, the head columns one step of its dots covers. BLOCK_D (half precision) keeps whole rows,
    the query tile's held across the key tiles; fp32 inputs take FMA_ROW_CHUNK: their dots run on FMA
    units with operands in registers, and a [BLOCK_N, BLOCK_D] fp32 tile mapped in the loop spilled
    420-876 B even at 32 x 32 tiles (docs/compile_gate.md). Each step reloads its query columns (a
    BLOCK_N-th of the dot's work)."""
    return any(row_feature(d.args[1]) is not None for d in dots)


def row_chunk_line() -> str:
    """The launcher line choosing ROW_CHUNK (see chunked_rows)."""
    return f"row_chunk = BLOCK_D if q.element_size() <= 2 else min(BLOCK_D, {FMA_ROW_CHUNK})  # fp32: the score dots in column steps"


def row_var(side: str, fm: str | None, chunk: bool = False) -> str:
    """The variable of a dot side's rows under feature map fm: q_relu, k_raw, ... (qc_relu: one chunk of columns)."""
    return f"{side}{'c' if chunk else ''}_{fm or 'raw'}"


def _whole_rows(w: CodeWriter, chunked: bool, note: str = ""):
    """The block of a chunked kernel's whole-row code (ROW_CHUNK == BLOCK_D: half precision); none otherwise."""
    return w.block(f"if ROW_CHUNK == BLOCK_D:{note}") if chunked else nullcontext()


def query_rows(w: CodeWriter, dots: dict, tma: bool = False, chunked: bool = False) -> None:
    """The query tile's rows, once per feature map the dots apply to them (tma: under USE_TMA the kernel
    makes its descriptors and the raw rows come through one; chunked: only where ROW_CHUNK keeps whole
    rows, the chunks load their own)."""
    maps = dict.fromkeys(row_feature(d.args[0]) for d in dots)
    raw_by_tma = tma and None in maps and not chunked
    if tma:
        with w.block(f"if USE_TMA:  {TMA_NOTE}"):
            tensor_descriptors(w, dots)
            if raw_by_tma:
                w.line("q_raw = q_desc.load([pid_m * BLOCK_M, 0])")
    if raw_by_tma:
        with w.block("else:"):
            load_rows(w, "q_raw", "Q", "offs_m", "Nq", "offs_d", "D")
    with _whole_rows(w, chunked, "  # whole rows, held across the key tiles"):
        for fm in maps:
            if not (raw_by_tma and fm is None):
                load_rows(w, row_var("q", fm), "Q", "offs_m", "Nq", "offs_d", "D", feature=fm)


def tile_dots(w: CodeWriter, dots: dict, limit: str | None = "N", tma: bool = False, chunked: bool = False) -> None:
    """Inside a key-tile loop: load the tile's key rows (through each map used) and form every dot
    (limit None: the tile's keys all lie below N; tma: a full tile's raw rows come through the
    descriptor under USE_TMA; chunked: see chunked_rows)."""
    with _whole_rows(w, chunked):
        for fm in dict.fromkeys(row_feature(d.args[1]) for d in dots):
            if tma and fm is None:
                descriptor_rows(w, "k_raw", "K", "offs_d", "D")
            else:
                load_rows(w, row_var("k", fm), "K", "offs_n", limit, "offs_d", "D", feature=fm)
        for d, name in dots.items():
            w.line(f"{name} = {_row_dot(d)}")
    if not chunked:
        return
    with w.block("else:  # fp32: each dot summed over steps of ROW_CHUNK head columns"):
        for name in dots.values():
            w.line(f"{name} = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)")
        with w.block("for c0 in tl.static_range(0, BLOCK_D, ROW_CHUNK):"):
            w.line("offs_c = c0 + tl.arange(0, ROW_CHUNK)")
            for side, ptr, offs, rows_limit, index in (("q", "Q", "offs_m", "Nq", 0), ("k", "K", "offs_n", limit, 1)):
                for fm in dict.fromkeys(row_feature(d.args[index]) for d in dots):
                    load_rows(w, row_var(side, fm, True), ptr, offs, rows_limit, "offs_c", "D", feature=fm)
            for d, name in dots.items():
                w.line(f"{name} += {_row_dot(d, chunk=True)}")


def _row_dot(d: TExpr, chunk: bool = False) -> str:
    """tl.dot of a dot's query and key rows (a chunk of their columns)."""
    q, k = (row_var(side, row_feature(t), chunk) for side, t in zip("qk", d.args))
    return f"tl.dot({q}, tl.trans({k}), input_precision=PRECISION)"
