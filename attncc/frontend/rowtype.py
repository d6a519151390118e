"""Typing of `dot` and its row expressions (the forms are listed in attncc/lang/rows.py).

A side of `dot` is a row: `q[i]`, `k[j]`, a row of a row input (`X[h, j]`, `X[i]`), a slice of a
row's last dimension (`q[i, 0:D // 2]`), elementwise products, sums and differences of rows, a row
scaled by a number (`row * s`, `s * row`, `row / s`), an elementwise function of a row
(`exp(-G[h, j])`) or a feature map of a row. One side reads only the query index i, the other only
the key index j; their widths must agree (checked here where sympy decides it, at call time otherwise).
`RowTyper` is mixed into ExprTyper (typecheck.py), whose error bag and declarations it reads.
"""
from __future__ import annotations

import sympy

from . import ast
from ..lang.expr import FLOAT, INT, VEC, TExpr, const
from ..lang.features import ALL_MAPS, RANDOM_MAPS
from ..lang.operators import fmt, operator_of
from ..lang.rows import ROW_FUNCTIONS, dot_terms, plain_dots, row_input_layout, side, width, width_sympy
from ..lang.source import did_you_mean

_ELEMENTWISE = {"*": "mul", "+": "add", "-": "sub"}
_ROW_HINT = "write `q[i]`, `k[j]`, a row of a row input (`X[h, j]`), or products of rows: `q[i] * exp(G[h, i])`"


def known_sign(x) -> int | None:
    """1, 0 or -1 where sympy decides the sign of x (over positive sizes), else None."""
    if x is None:
        return None
    x = sympy.simplify(x)
    if x.is_zero:
        return 0
    if x.is_positive:
        return 1
    if x.is_negative:
        return -1
    return None


class RowTyper:
    def _dot(self, e: ast.Call, ctx: str) -> TExpr | None:
        if ctx not in ("score", "weight", "let"):
            self.bag.error("`dot` may appear only in `score` or `weight`", e.span,
                           "masks and biases depend on positions, not on q and k")
            return None
        if len(e.args) != 2:
            self.bag.error(f"`dot` takes 2 arguments, got {len(e.args)}", e.span)
            return None
        sides = [self._row(a) for a in e.args]
        if any(s is None for s in sides):
            return None
        reads = []
        for s, node in zip(sides, e.args):
            tokens = side(s)
            if len(tokens) != 1:
                self.bag.error("a side of `dot` reads both the query index `i` and the key index `j`", node.span,
                               "one side is a row of the query token i, the other of the key token j; a factor "
                               "that reads both belongs outside the dot")
                return None
            reads.append(tokens.pop())
        if reads[0] == reads[1]:
            which = "query index `i`" if reads[0] == "i" else "key index `j`"
            self.bag.error(f"both sides of `dot` read the {which}", e.span,
                           "one side reads the query index i, the other the key index j: `dot(q[i], k[j])`")
            return None
        if reads[0] == "j":
            sides.reverse()  # dot is symmetric: keep the query side first
        if not self._same_width(sides[0], sides[1], e.span, "the sides of `dot`"):
            return None
        return TExpr("dot", tuple(sides), None, FLOAT, e.span)

    def _same_width(self, a: TExpr, b: TExpr, span, what: str) -> bool:
        dims = {name: info.dims for name, info in self.inputs.items()}
        wa, wb = width(a, dims), width(b, dims)
        diff = width_sympy(TExpr("sub", (wa, wb), None, INT))
        if known_sign(diff) not in (0, None):
            self.bag.error(f"{what} have different widths: {fmt(wa)} and {fmt(wb)}", span,
                           "slice the wider row to the other's width, e.g. `q[i, 0:R]`")
            return False
        return True

    def _mentions_row(self, e: ast.Expr) -> bool:
        """Whether e is written with a row (q, k, a row of an input, a feature map, a row `let`)."""
        stack = [e]
        while stack:
            x = stack.pop()
            if isinstance(x, ast.Index):
                info = self.inputs.get(x.table)
                if x.table in ("q", "k") or any(isinstance(i, ast.Slice) for i in x.indices) or \
                        (info is not None and len(x.indices) == len(info.dims) - 1):
                    return True
            if isinstance(x, ast.Call) and (x.fn in self.features or x.fn in ALL_MAPS):
                return True
            if isinstance(x, ast.Call) and x.fn == "dot":  # a number
                continue
            if isinstance(x, ast.Name) and x.id in self.lets and self.lets[x.id] is not None \
                    and self.lets[x.id].type == VEC:
                return True
            stack.extend(ast._parts(x))
        return False

    def _row(self, e: ast.Expr) -> TExpr | None:
        """A row expression (type VEC), or None after an error."""
        if isinstance(e, ast.Call) and e.fn in self.features or isinstance(e, ast.Call) and e.fn in ALL_MAPS:
            return self._feature_row(e)
        if isinstance(e, ast.Index):
            return self._leaf_row(e)
        if isinstance(e, ast.Name) and e.id in self.lets and self.lets[e.id] is not None \
                and self.lets[e.id].type == VEC:
            return self.lets[e.id]
        if isinstance(e, ast.Unary) and e.op in "+-" and self._mentions_row(e.operand):
            x = self._row(e.operand)
            return None if x is None else x if e.op == "+" else TExpr("neg", (x,), None, VEC, e.span)
        if isinstance(e, ast.Binary) and e.op in ("*", "/", "+", "-"):
            return self._binary_row(e)
        if isinstance(e, ast.Call) and e.fn in ROW_FUNCTIONS and len(e.args) == 1 and not e.kwargs \
                and self._mentions_row(e.args[0]):
            x = self._row(e.args[0])
            return None if x is None else TExpr("call", (x,), e.fn, VEC, e.span)
        if isinstance(e, ast.Call) and any(isinstance(a, ast.Index) and a.table in ("q", "k") for a in e.args):
            self.bag.error(f"unknown feature map `{e.fn}`", e.fn_span,
                           did_you_mean(e.fn, set(self.features) | set(ALL_MAPS))
                           or f"declare it, e.g. `feature {e.fn} = elu1`")
            return None
        self.bag.error("expected a row of q, k or a row input", e.span, _ROW_HINT)
        return None

    def _feature_row(self, e: ast.Call) -> TExpr | None:
        if e.kwargs or len(e.args) != 1:
            self.bag.error(f"feature map `{e.fn}` takes one row", e.span, f"write `{e.fn}(q[i])`")
            return None
        inner = self._row(e.args[0])
        if inner is None:
            return None
        if inner.uses("feature"):
            self.bag.error("feature maps do not compose", e.span)
            return None
        if e.fn in RANDOM_MAPS and e.fn not in self.features:
            self.bag.error(f"random feature map `{e.fn}` must be declared: it carries a seed and a draw",
                           e.fn_span, f"declare `feature phi = {e.fn}(features=64, seed=0)` and write `phi(q[i])`")
            return None
        info = self.features.get(e.fn)
        fn = (info.name if info.random else info.fn) if info else e.fn
        return TExpr("feature", (inner,), fn, VEC, e.span)

    def _binary_row(self, e: ast.Binary) -> TExpr | None:
        left_row, right_row = self._mentions_row(e.left), self._mentions_row(e.right)
        if left_row and right_row:
            if e.op == "/":
                self.bag.error("a row cannot be divided by a row", e.span,
                               "multiply by the other row's reciprocal written as a row, e.g. `q[i] * exp(-G[h, i])`")
                return None
            a, b = self._row(e.left), self._row(e.right)
            if a is None or b is None or not self._same_width(a, b, e.span, f"the rows of `{e.op}`"):
                return None
            return TExpr(_ELEMENTWISE[e.op], (a, b), None, VEC, e.span)
        if not (left_row or right_row):
            self.bag.error("expected a row of q, k or a row input, got a number", e.span, _ROW_HINT)
            return None
        if e.op in "+-" or (e.op == "/" and right_row):
            self.bag.error(f"`{e.op}` of a row and a number", e.span,
                           "a row may be multiplied or divided by a number (`q[i] * s`, `k[j] / s`); rows add to rows")
            return None
        row, number = (e.left, e.right) if left_row else (e.right, e.left)
        r, s = self._row(row), self._typed(number, "score")
        if r is None or s is None:
            return None
        if s.type not in (INT, FLOAT) or s.uses("dot"):
            self.bag.error(f"a row is scaled by a number, got {'a dot' if s.uses('dot') else s.type}",
                           number.span, "write e.g. `q[i] * s[h]`")
            return None
        args = (r, s) if left_row else (s, r)
        return TExpr("mul" if e.op == "*" else "div", args, None, VEC, e.span)

    def _leaf_row(self, e: ast.Index) -> TExpr | None:
        *heads, last = e.indices
        sliced = isinstance(last, ast.Slice)
        tokens = tuple(heads) if sliced else tuple(e.indices)
        if e.table in ("q", "k"):
            want = self.index_names[0] if e.table == "q" else self.index_names[1]
            if len(tokens) != 1 or not (isinstance(tokens[0], ast.Name) and tokens[0].id == want):
                which = "query" if e.table == "q" else "key"
                self.bag.error(f"`{e.table}` is indexed by the {which} index `{want}`", e.span,
                               f"write `{e.table}[{want}]`")
                return None
            base = TExpr("qrow" if e.table == "q" else "krow", (), e.table, VEC, e.span)
        else:
            base = self._input_row(e, tokens)
        if base is None or not sliced:
            return base
        return self._slice(base, last)

    def _input_row(self, e: ast.Index, tokens: tuple) -> TExpr | None:
        info = self.inputs.get(e.table)
        if info is None:
            what = "a learned table" if e.table in self.params else "`v`" if e.table == "v" else None
            if what is not None:
                self.bag.error(f"{what} has no rows a `dot` can read", e.span,
                               "declare a row input, e.g. `input X[H, N, D]`, and write `X[h, j]`")
            else:
                self.bag.error(f"unknown table `{e.table}`", e.table_span,
                               did_you_mean(e.table, set(self.inputs) | {"q", "k"}))
            return None
        layout = row_input_layout(info.dims)
        if layout is None or info.dtype != "float":
            self.bag.error(f"`{e.table}` is not a row input", e.span,
                           "a row input is a float input declared `[N, W]`, `[Nq, W]`, `[H, N, W]` or `[H, Nq, W]`, "
                           "W a width (a constant, a size, D or E)")
            return None
        per_head, token_size = layout
        names = ("h", "token") if per_head else ("token",)
        if len(tokens) != len(names):
            self.bag.error(f"a row of `{e.table}` is indexed by {'the head `h` and ' if per_head else ''}a token",
                           e.span, f"write `{e.table}[{'h, ' if per_head else ''}j]` (or `i`)")
            return None
        if per_head and not (isinstance(tokens[0], ast.Name) and tokens[0].id == "h"):
            self.bag.error(f"the head of a row of `{e.table}` is `h`", tokens[0].span, f"write `{e.table}[h, ...]`")
            return None
        token = tokens[-1]
        var = {self.index_names[0]: "i", self.index_names[1]: "j"}.get(token.id) if isinstance(token, ast.Name) else None
        if var is None:
            self.bag.error(f"a row of `{e.table}` is read at the query token `{self.index_names[0]}` or the key "
                           f"token `{self.index_names[1]}`", token.span,
                           "rows are read at the current token; shift the input itself for other positions")
            return None
        if token_size == "Nq" and var == "j":
            self.bag.error(f"`{e.table}` has one row per query token (Nq): read it at the query index",
                           token.span, f"write `{e.table}[{'h, ' if per_head else ''}{self.index_names[0]}]`")
            return None
        idx = ((TExpr("var", (), "h", INT, tokens[0].span),) if per_head else ()) + \
            (TExpr("var", (), var, INT, token.span),)
        return TExpr("rowin", idx, e.table, VEC, e.span)

    def _slice(self, base: TExpr, s: ast.Slice) -> TExpr | None:
        full = width(base, {name: info.dims for name, info in self.inputs.items()})
        bounds = []
        for b, default in ((s.lo, const(0)), (s.hi, full)):
            t = default if b is None else self._typed(b, "score")
            if t is None:
                return None
            if t.type != INT or any(x.op not in ("const", "size", "rsize") and operator_of(x) is None or
                                    x.op == "call" or (x.op == "rsize" and x.value not in ("D", "E"))
                                    for x in t.walk()):
                self.bag.error("a slice bound is an integer expression of constants and sizes", b.span,
                               "e.g. `q[i, 0:D // 2]`, `k[j, D - R:]`")
                return None
            bounds.append(t)
        lo, hi = bounds
        checks = ((width_sympy(lo), "starts before 0"), (width_sympy(TExpr("sub", (hi, lo), None, INT)), "is empty"),
                  (width_sympy(TExpr("sub", (full, hi), None, INT)), f"ends past the row's width {fmt(full)}"))
        for value, what in checks:
            sign = known_sign(value)
            if sign == -1 or (sign == 0 and what == "is empty"):
                self.bag.error(f"the slice {fmt(lo)}:{fmt(hi)} {what}", s.span,
                               f"a slice lies within 0:{fmt(full)} and is not empty")
                return None
        return TExpr("slice", (base, lo, hi), None, VEC, base.span | s.span)

    def _check_dot_terms(self, scores: TExpr | None, span) -> None:
        """Several dots are summed, each times a number: sum_t c_t dot_t + rest (passes/rows.py makes one
        dot of them). The c_t either agree or each reads one side (it folds into that side's rows)."""
        dots = {e for e in scores.walk() if e.op == "dot"} if scores is not None else set()
        if len(dots) < 2 or plain_dots(dots):  # dots of q and k themselves combine freely (no rows to form)
            return
        found = dot_terms(scores)
        if found is None:
            self.bag.error("several `dot` terms must be summed, each times a number", span,
                           "e.g. `dot(a, b) * scale + dot(c, d) * scale`; a function or product of dots takes one dot")
            return
        terms, _ = found
        if len({c for _, c in terms}) > 1 and any(side(c) == {"i", "j"} for _, c in terms):
            bad = next(c for _, c in terms if side(c) == {"i", "j"})
            self.bag.error(f"the coefficient {fmt(bad)} of a `dot` term reads both `i` and `j`", span,
                           "a coefficient of one of several dots folds into a side, so it reads only i or only j; "
                           "give every dot the same coefficient, or move the factor into one side")
        random = [s.op == "feature" and s.value in self.features and self.features[s.value].random
                  for d, _ in terms for s in d.args]
        if all(random):  # (some but not all: reported by _check_random_features)
            self.bag.error("a random feature map may be used in one `dot` only", span,
                           "write the spec with one dot, e.g. `dot(phi(q[i]), phi(k[j]))`")
