"""The module's `prepare_rows`: prepared rows q', k' (passes/rows.py) as generated torch code.

One line a distinct row subexpression (shared ones computed once); numbers inside the rows (a
scale, a gate) are printed by TorchExpr over index columns i, j ([1, 1, tokens, 1]) and h, so they
broadcast along the width. Rows are computed at ctx.dtype (float32 for half inputs) and handed to
the lowerings in q's dtype.
"""
from __future__ import annotations

from ..lang.expr import VEC, TExpr, postorder
from ..lang.features import FEATURE_MAPS
from ..lang.operators import fmt, operator_of
from ..lang.rows import PreparedRows, row_input_layout
from .exprs import TorchExpr, brief, key
from .writer import CodeWriter

# index columns of the numbers inside rows: tokens on axis 2, so that they broadcast along the width
_INDEX_COLUMNS = {"i": "i = torch.arange(ctx.Nq, dtype=torch.int32, device=q.device).view(1, 1, -1, 1)",
                  "j": "j = torch.arange(ctx.N, dtype=torch.int32, device=q.device).view(1, 1, -1, 1)",
                  "h": "h = torch.arange(ctx.H, dtype=torch.int32, device=q.device).view(1, -1, 1, 1)"}
_ROW_OPERATORS = {"mul": "*", "div": "/", "add": "+", "sub": "-"}


def prepare_rows_method(w: CodeWriter, rows: PreparedRows, inputs: dict, spec_name: str) -> None:
    """PREPARED_ROWS and `prepare_rows(self, q, k, ctx) -> (q', k')`, read by CompiledAttention.prepared."""
    w.line("PREPARED_ROWS = True")
    with w.block("def prepare_rows(self, q, k, ctx):"):
        w.line('"""The rows every lowering reads in place of q and k (passes/rows.py):')
        w.line(f"q' = {brief(rows.q)}")
        w.line(f"k' = {brief(rows.k)}")
        w.line('"""')
        used = {e.value for part in (rows.q, rows.k) for e in postorder(part, descend=lambda t: t.op != "rowin")
                if e.op == "var"}  # (a row input's indices are spelled by rt.input_rows)
        used |= {"i"} if "b" in used else set()  # rt.batch_index(ctx, i) places b on i's device
        for var, line in _INDEX_COLUMNS.items():
            if var in used:
                w.line(line)
        w.line("given = q  # the rows leave in its dtype")
        w.line("q, k = q.to(ctx.dtype), k.to(ctx.dtype)")
        names: dict[TExpr, str] = {}
        printer = _RowPrinter(names, {name: info.dims for name, info in inputs.items()})
        for part in (rows.q, rows.k):
            for e in postorder(part, descend=lambda t: t.type == VEC):
                if e.type == VEC and e not in names:
                    code = printer.row(e)
                    if e.op in ("qrow", "krow"):
                        names[e] = code
                        continue
                    names[e] = f"r{len([n for n in names.values() if n.startswith('r')])}"
                    w.line(f"{names[e]} = {code}  # {brief(e, 100)}")
        w.line(f"q_rows = rt.full_rows({names[rows.q]}, q, given.dtype, 'prepared q rows')")
        w.line(f"k_rows = rt.full_rows({names[rows.k]}, k, given.dtype, 'prepared k rows')")
        w.line(f"rt.check_widths(q_rows, k_rows, {key(spec_name)})")
        w.line("return q_rows, k_rows")
    w.line()


class _RowPrinter:
    def __init__(self, names: dict, input_dims: dict):
        self.names = names
        self.input_dims = input_dims
        self.numbers = TorchExpr()

    def row(self, t: TExpr) -> str:
        a = [self.names[x] if x.type == VEC else self.numbers(x) for x in t.args]
        if t.op in ("qrow", "krow"):
            return t.value
        if t.op == "rowin":
            dims = self.input_dims[t.value]
            per_head, _ = row_input_layout(dims)
            count = "ctx.Nq" if t.args[-1].value == "i" else "ctx.N"
            return (f"rt.input_rows(ctx.inputs[{key(t.value)}], {len(dims)}, {per_head}, {count}, "
                    f"{key(t.value)}).to(ctx.dtype)")
        if t.op == "slice":
            return f"rt.row_slice({a[0]}, {a[1]}, {a[2]}, {fmt(t.args[0])!r})"
        if t.op == "concat":
            return f"rt.concat_rows([{', '.join(a)}])"
        if t.op == "neg":
            return f"(-{a[0]})"
        if t.op in _ROW_OPERATORS:
            return f"({a[0]} {_ROW_OPERATORS[t.op]} {a[1]})"
        if t.op == "feature":
            return "(lambda x: " + FEATURE_MAPS[t.value].torch_expr + f")({a[0]})"
        return operator_of(t).torch_code(a, "ctx.dtype")
