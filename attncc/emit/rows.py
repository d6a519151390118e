"""Rows of a [B, H, tokens, dim] tensor into a kernel's tile: pointer loads (masked to the bounds,
optionally through a feature map) and, under the kernels' USE_TMA constexpr (sm_90, chosen by the
launchers through attncc/runtime/tma.py), loads through device-side tensor descriptors."""
from __future__ import annotations

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
