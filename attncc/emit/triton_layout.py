"""Emit the kernels that build a run-time block layout (attncc/analysis/token_layout.py) per call.

From token metadata (a bounded layout), two small launches and no N x N work:
  `_token_bounds`, grid (max(QB, KB), B): each query block's and key block's min / max of every
                  metadata expression (O(N));
  `_tile_classes`, grid (QB, B): each tile's class (0 empty, 1 partial, 2 full) from those bounds by
                  the interval rules, printed from the same rules the analysis evaluates (O(QB KB)).
Any other mask that reads inputs: one launch, `_tile_classes` evaluating the mask on every pair of
each tile (what the attention kernel would evaluate, once per call instead of once per head).
`token_tiles(ctx, B, BLOCK_M, BLOCK_N, device)` runs them and turns the classes into the lists the
attention kernels walk (rt.token_tiles: on the device, no host sync; reused while the inputs are
the same unmodified tensors).
"""
from __future__ import annotations

from ..analysis.token_layout import TokenLayout, tile_rule
from ..lang.expr import BOOL, RUNTIME_SIZES, TExpr
from .exprs import brief, key
from .let import LetScope
from .triton import Kernel, KernelExpr, size_arg, sizes_used
from .triton_helpers import HELPERS
from .writer import CodeWriter

BIG = 2147483647
CLASS_COLUMNS = 64  # key blocks classified per step of `_tile_classes`
GROUP = 16  # blocks a program of `_token_bounds` reduces, query blocks a program of `_tile_classes` classifies


class Code:
    """A printed Triton expression that combines like a tensor, so the interval rules print code."""
    __hash__ = None

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return self.text

    def _op(self, op: str, other, reflected: bool = False) -> "Code":
        a, b = (other, self) if reflected else (self, other)
        return Code(f"({_text(a)} {op} {_text(b)})")

    __add__ = lambda self, o: self._op("+", o)  # noqa: E731
    __radd__ = lambda self, o: self._op("+", o, True)  # noqa: E731
    __sub__ = lambda self, o: self._op("-", o)  # noqa: E731
    __rsub__ = lambda self, o: self._op("-", o, True)  # noqa: E731
    __mul__ = lambda self, o: self._op("*", o)  # noqa: E731
    __rmul__ = lambda self, o: self._op("*", o, True)  # noqa: E731
    __le__ = lambda self, o: self._op("<=", o)  # noqa: E731
    __lt__ = lambda self, o: self._op("<", o)  # noqa: E731
    __ge__ = lambda self, o: self._op(">=", o)  # noqa: E731
    __gt__ = lambda self, o: self._op(">", o)  # noqa: E731
    __eq__ = lambda self, o: self._op("==", o)  # noqa: E731
    __ne__ = lambda self, o: self._op("!=", o)  # noqa: E731
    __and__ = lambda self, o: self._op("&", o)  # noqa: E731
    __rand__ = lambda self, o: self._op("&", o, True)  # noqa: E731
    __or__ = lambda self, o: self._op("|", o)  # noqa: E731
    __ror__ = lambda self, o: self._op("|", o, True)  # noqa: E731

    def __neg__(self) -> "Code":
        return Code(f"(-{self.text})")

    def __invert__(self) -> "Code":
        return Code(f"(~{self.text})")


def _text(x) -> str:
    return x.text if isinstance(x, Code) else repr(x)


class TritonLib:
    """The interval rules' operations, printed."""

    @staticmethod
    def minimum(a, b):
        return Code(f"tl.minimum({_text(a)}, {_text(b)})")

    @staticmethod
    def maximum(a, b):
        return Code(f"tl.maximum({_text(a)}, {_text(b)})")

    @staticmethod
    def where(c, a, b):
        return Code(f"tl.where({_text(c)}, {_text(a)}, {_text(b)})")


def _sizes(layout: TokenLayout) -> list[str]:
    """The declared sizes the mask reads (kernel arguments S_<name>; N and Nq are arguments anyway)."""
    return [s for s in sizes_used(layout.mask) if s not in RUNTIME_SIZES]


def emit_token_bounds(w: CodeWriter, layout: TokenLayout, kernel: Kernel) -> None:
    """`_token_bounds`: per block, the min and max of each metadata expression over its tokens
    (GROUP blocks a program: a [GROUP, block] tile reduced along its rows)."""
    ex = KernelExpr({}, {s: size_arg(s) for s in sizes_used(layout.mask)})
    w.line("@triton.jit")
    with w.block(f"def _token_bounds({''.join(f'{a}, ' for a in kernel.arg_names())}Nq, N, QLo, QHi, KLo, KHi, "
                 "BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP: tl.constexpr):"):
        meta = ", ".join(f"{side}{n} = {brief(t)}" for side, ts in (("q", layout.queries), ("k", layout.keys))
                         for n, t in enumerate(ts))
        w.line(f'"""Min and max over each query block and each key block of the token metadata: {meta}."""')
        w.line("blocks = tl.program_id(0) * GROUP + tl.arange(0, GROUP)")
        w.line("off_b = tl.program_id(1)")
        w.line("QB = tl.cdiv(Nq, BLOCK_M)")
        w.line("KB = tl.cdiv(N, BLOCK_N)")
        for side, exprs, var, count, block, tiles, lo, hi in (
                ("q", layout.queries, "i", "Nq", "BLOCK_M", "QB", "QLo", "QHi"),
                ("k", layout.keys, "j", "N", "BLOCK_N", "KB", "KLo", "KHi")):
            if not exprs:
                continue
            # the printed metadata reads i as offs_m[:, None] (j as offs_n[None, :]): one [GROUP, block]
            # tile of tokens, block b's in row b either way
            index = f"blocks[:, None] * {block} + tl.arange(0, {block})[None, :]"
            w.line(f"tokens = {index}")
            w.line(f"inside = tokens < {count}")
            scope = LetScope(_TokenExpr(ex, var), prefix=f"{side}t")
            scope.bind(w, list(exprs))
            for n, t in enumerate(exprs):
                value = f"({scope(t)})" + (".to(tl.int32)" if t.type == BOOL else "")
                w.line(f"x = {value} + tl.zeros([GROUP, {block}], dtype=tl.int32)")
                at = f"(off_b * {tiles} + blocks) * {len(exprs)} + {n}"
                w.line(f"tl.store({lo} + {at}, tl.min(tl.where(inside, x, {BIG}), 1), mask=blocks < {tiles})")
                w.line(f"tl.store({hi} + {at}, tl.max(tl.where(inside, x, -{BIG}), 1), mask=blocks < {tiles})")
    w.line()


class _TokenExpr(KernelExpr):
    """KernelExpr with the side's index variable read as the [GROUP, block] tile `tokens`."""

    def __init__(self, inner: KernelExpr, var: str):
        super().__init__(inner.dots, inner.sizes)
        self.var = var

    def node(self, t: TExpr, args: list[str]) -> str:
        if t.op == "var" and t.value == self.var:
            return "tokens"
        return super().node(t, args)


def emit_bounded_classes(w: CodeWriter, layout: TokenLayout) -> None:
    """`_tile_classes` from the block bounds, by the interval rules printed through TritonLib: a
    [GROUP query blocks, BLOCK_C key blocks] tile of classes per step."""
    sizes = _sizes(layout)
    args = "".join(f"{size_arg(s)}, " for s in sizes)
    w.line("@triton.jit")
    with w.block(f"def _tile_classes(Nq, N, {args}QLo, QHi, KLo, KHi, Cls, BLOCK_M: tl.constexpr, "
                 "BLOCK_N: tl.constexpr, GROUP: tl.constexpr, BLOCK_C: tl.constexpr):"):
        w.line(f'"""Class of every tile (0 empty, 1 partial, 2 full) of GROUP query blocks for {brief(layout.mask)}."""')
        w.line("rows = (tl.program_id(0) * GROUP + tl.arange(0, GROUP))[:, None]")
        w.line("off_b = tl.program_id(1)")
        w.line("QB = tl.cdiv(Nq, BLOCK_M)")
        w.line("KB = tl.cdiv(N, BLOCK_N)")
        w.line("i_lo = rows * BLOCK_M")
        w.line("i_hi = tl.minimum(i_lo + BLOCK_M, Nq) - 1")
        bounds: dict[TExpr, tuple] = {}
        for n, t in enumerate(layout.queries):
            at = f"(off_b * QB + rows) * {len(layout.queries)} + {n}"
            w.line(f"q{n}_lo = tl.load(QLo + {at}, mask=rows < QB, other=0)")
            w.line(f"q{n}_hi = tl.load(QHi + {at}, mask=rows < QB, other=0)")
            bounds[t] = (Code(f"q{n}_lo"), Code(f"q{n}_hi"))
        with w.block("for c0 in range(0, KB, BLOCK_C):"):
            w.line("cols = (c0 + tl.arange(0, BLOCK_C))[None, :]")
            w.line("inside = (rows < QB) & (cols < KB)")
            w.line("j_lo = cols * BLOCK_N")
            w.line("j_hi = tl.minimum(j_lo + BLOCK_N, N) - 1")
            for n, t in enumerate(layout.keys):
                at = f"(off_b * KB + cols) * {len(layout.keys)} + {n}"
                w.line(f"k{n}_lo = tl.load(KLo + {at}, mask=cols < KB, other=0)")
                w.line(f"k{n}_hi = tl.load(KHi + {at}, mask=cols < KB, other=0)")
                bounds[t] = (Code(f"k{n}_lo"), Code(f"k{n}_hi"))
            env = {"bounds": bounds, "sizes": {s: Code(size_arg(s)) for s in sizes},
                   "rsizes": {"N": Code("N"), "Nq": Code("Nq")}, "i": (Code("i_lo"), Code("i_hi")),
                   "j": (Code("j_lo"), Code("j_hi"))}
            any_, all_ = tile_rule(layout, TritonLib(), env)
            w.line("# any: some pair of the tile may hold; all: every pair holds (interval rules)")
            w.line(f"any_ = {_on_tiles(any_)}")
            w.line(f"all_ = {_on_tiles(all_)}")
            w.line("whole = (i_lo + BLOCK_M <= Nq) & (j_lo + BLOCK_N <= N)  # full tiles lie inside Nq and N")
            w.line("cls = tl.where(all_ & whole, 2, tl.where(any_, 1, 0))")
            w.line("tl.store(Cls + (off_b * QB + rows) * KB + cols, cls.to(tl.int8), mask=inside)")
    w.line()


def _on_tiles(x) -> str:
    """A rule's value over the step's tiles (a Python bool where the rule is constant)."""
    if x is True:
        return "inside"
    if x is False:
        return "inside & False"
    return f"inside & ({_text(x)})"


def emit_evaluated_classes(w: CodeWriter, layout: TokenLayout, kernel: Kernel) -> None:
    """`_tile_classes` evaluating the mask on every pair of each tile of one query block."""
    ex = KernelExpr({}, {s: size_arg(s) for s in sizes_used(layout.mask)})
    w.line("@triton.jit")
    with w.block(f"def _tile_classes({''.join(f'{a}, ' for a in kernel.arg_names())}Nq, N, Cls, "
                 "BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):"):
        w.line(f'"""Class of every tile of one query block (0 empty, 1 partial, 2 full): {brief(layout.mask)} '
               'on each pair."""')
        w.line("row = tl.program_id(0)")
        w.line("off_b = tl.program_id(1)")
        w.line("QB = tl.cdiv(Nq, BLOCK_M)")
        w.line("KB = tl.cdiv(N, BLOCK_N)")
        w.line("offs_m = row * BLOCK_M + tl.arange(0, BLOCK_M)")
        with w.block("for c in range(0, KB):"):
            w.line("offs_n = c * BLOCK_N + tl.arange(0, BLOCK_N)")
            w.line("inside = (offs_m[:, None] < Nq) & (offs_n[None, :] < N)")
            scope = LetScope(ex)
            scope.bind(w, [layout.mask])
            w.line(f"keep = ({scope(layout.mask)}) & inside")
            w.line("any_ = tl.max(tl.max(keep.to(tl.int32), 1), 0)")
            w.line("all_ = tl.min(tl.min((keep | (~inside)).to(tl.int32), 1), 0)")
            w.line("whole = (row * BLOCK_M + BLOCK_M <= Nq) & (c * BLOCK_N + BLOCK_N <= N)  # full tiles lie inside Nq and N")
            w.line("all_ = tl.where(whole, all_, 0)")
            w.line("tl.store(Cls + (off_b * QB + row) * KB + c, tl.where(all_ == 1, 2, tl.where(any_ == 1, 1, 0)).to(tl.int8))")
    w.line()


def emit_token_tiles(w: CodeWriter, layout: TokenLayout) -> None:
    """The layout kernels and `token_tiles`, which runs them (cached while the inputs are unchanged)."""
    exprs = [*layout.queries, *layout.keys] if layout.bounded else [layout.mask]
    kernel = Kernel(exprs, {})
    for h in kernel.helpers:
        w.lines_of(HELPERS[h])
        w.line()
    if layout.bounded:
        emit_token_bounds(w, layout, kernel)
        emit_bounded_classes(w, layout)
    else:
        emit_evaluated_classes(w, layout, kernel)
    vals = "".join(f"{v}, " for v in kernel.arg_values())
    with w.block("def token_tiles(ctx, B, BLOCK_M, BLOCK_N, device):"):
        w.line(f'"""The tiles of this call for {brief(layout.mask)}: built on the device (no host sync), reused '
               'while the inputs are unchanged."""')
        with w.block("def build():"):
            w.line("QB, KB = triton.cdiv(ctx.Nq, BLOCK_M), triton.cdiv(ctx.N, BLOCK_N)")
            w.line("cls = torch.empty(B, QB, KB, device=device, dtype=torch.int8)")
            if layout.bounded:
                nq, nk = max(1, len(layout.queries)), max(1, len(layout.keys))
                w.line(f"q_lo, q_hi = (torch.empty(B, QB, {nq}, device=device, dtype=torch.int32) for _ in range(2))")
                w.line(f"k_lo, k_hi = (torch.empty(B, KB, {nk}, device=device, dtype=torch.int32) for _ in range(2))")
                w.line(f"_token_bounds[(triton.cdiv(max(QB, KB), {GROUP}), B)]({vals}ctx.Nq, ctx.N, q_lo, q_hi, k_lo, k_hi, "
                       f"BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, GROUP={GROUP})")
                sizes = "".join(f"ctx.sizes[{key(s)}], " for s in _sizes(layout))
                w.line(f"_tile_classes[(triton.cdiv(QB, {GROUP}), B)](ctx.Nq, ctx.N, {sizes}q_lo, q_hi, k_lo, k_hi, cls, "
                       f"BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, GROUP={GROUP}, BLOCK_C={CLASS_COLUMNS})")
            else:
                w.line(f"_tile_classes[(QB, B)]({vals}ctx.Nq, ctx.N, cls, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)")
            w.line("return cls")
        w.line("return rt.token_tiles(ctx, SPEC_HASH, BLOCK_M, BLOCK_N, B, device, build)")
    w.line()
