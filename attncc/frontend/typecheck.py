"""Typing of expressions: names, operators, functions, dot products and table lookups.

`ExprTyper` is the half of the checker that turns an AST expression into a typed `TExpr` in a
context (a size, a table shape, a mask or bias, a score or weight), reporting every error to
`self.bag`. The checker (attncc/check.py) supplies the declarations it reads: `sizes`, `params`,
`inputs`, `features`, the current definition's `index_names`, and collects `divisors`.
"""
from __future__ import annotations

import math

from . import ast
from ..lang.expr import (BINARY_OPS, BITWISE, BOOL, COMPARE, FLOAT, FUNCTIONS, INT, RUNTIME_SIZES, SYMBOL_TO_OP, VEC,
                   TExpr, const)
from ..lang.features import ALL_MAPS, RANDOM_MAPS
from ..lang.source import Span, did_you_mean

INT_LIMIT = 2**31


class ExprTyper:
    def _expr(self, e: ast.Expr, ctx: str) -> TExpr | None:
        """Type one expression. ctx: const | size | shape | shape_tokens | index | score | weight."""
        try:
            return self._typed(e, ctx)
        except RecursionError:
            self.bag.error("expression is too deeply nested", e.span)
            return None

    def _typed(self, e: ast.Expr, ctx: str) -> TExpr | None:
        if isinstance(e, ast.Num):
            if isinstance(e.value, int) and abs(e.value) >= INT_LIMIT:
                self.bag.error("integer literal out of range", e.span, "integers must lie within ±2^31")
                return None
            if isinstance(e.value, float) and not math.isfinite(e.value):
                self.bag.error("number literal out of range", e.span)
                return None
            return const(e.value, e.span)
        if isinstance(e, ast.Bool):
            return const(e.value, e.span)
        if isinstance(e, ast.Name):
            return self._name(e, ctx)
        if isinstance(e, ast.Unary):
            x = self._typed(e.operand, ctx)
            if x is None:
                return None
            if e.op == "not":
                return self._fold(TExpr("not", (self._want(x, BOOL, e.operand.span, "`not`"),), None, BOOL, e.span))
            if x.type not in (INT, FLOAT):
                self.bag.error(f"`{e.op}` needs a number, got {x.type}", e.operand.span)
                return None
            return x if e.op == "+" else self._fold(TExpr("neg", (x,), None, x.type, e.span))
        if isinstance(e, ast.Binary):
            return self._binary(e, ctx)
        if isinstance(e, ast.Call):
            return self._call(e, ctx)
        if isinstance(e, ast.Index):
            return self._index(e, ctx)
        raise TypeError(type(e))

    def _name(self, e: ast.Name, ctx: str) -> TExpr | None:
        n = e.id
        if ctx in ("index", "score", "weight"):
            if n == self.index_names[0]:
                return TExpr("var", (), "i", INT, e.span)
            if n == self.index_names[1]:
                return TExpr("var", (), "j", INT, e.span)
            if n == "h":
                return TExpr("var", (), "h", INT, e.span)
            if n == "scale":
                return TExpr("scale", (), "scale", FLOAT, e.span)
            if n in ("N", "Nq", "H", "D", "E"):
                return TExpr("rsize", (), n, INT, e.span)
        if ctx.startswith("shape"):
            if n in ("H", "D", "E"):
                return TExpr("rsize", (), n, INT, e.span)
            if n in ("N", "Nq"):
                if ctx == "shape_tokens":
                    return TExpr("rsize", (), n, INT, e.span)
                self.bag.error(f"a learned table cannot be sized by the run-time length `{n}`", e.span,
                               "declare a maximum, e.g. `size max_len = 1024`, and size the table by it")
                return None
        if n in self.sizes:
            return TExpr("size", (), n, INT, e.span) if ctx != "const" else const(self.sizes[n], e.span)
        if n in self.params or n in self.inputs:
            self.bag.error(f"`{n}` is a table; index it", e.span, f"write `{n}[...]`")
            return None
        if n in ("q", "k", "v"):
            self.bag.error(f"`{n}` is a tensor of rows; index it with a token", e.span,
                           "write `dot(q[i], k[j])`")
            return None
        known = set(self.sizes) | {"h", "scale", *RUNTIME_SIZES, *self.index_names}
        where = {"const": "a constant", "size": "a size", "shape": "a table shape",
                 "shape_tokens": "an input shape"}.get(ctx)
        if where and (n in known or n in ("i", "j")):
            self.bag.error(f"`{n}` cannot be used in {where}", e.span)
            return None
        self.bag.error(f"unknown name `{n}`", e.span, did_you_mean(n, known | set(self.params) | set(self.inputs)))
        return None

    def _want(self, x: TExpr, t: str, span: Span, what: str) -> TExpr:
        if x.type == t or (t == FLOAT and x.type == INT):
            return x
        self.bag.error(f"{what} needs {'a ' if t != INT else 'an '}{t}, got {x.type}", span,
                       "compare it, e.g. `x != 0`" if t == BOOL else None)
        return x

    def _binary(self, e: ast.Binary, ctx: str) -> TExpr | None:
        left, right = self._typed(e.left, ctx), self._typed(e.right, ctx)
        if left is None or right is None:
            return None
        op = SYMBOL_TO_OP[e.op]
        for side, x in (("left", left), ("right", right)):
            if x.type == VEC:
                self.bag.error(f"`{e.op}` cannot take a row vector", (e.left if side == "left" else e.right).span,
                               "combine rows with `dot(...)`")
                return None
        if op in ("and_", "or_"):
            self._want(left, BOOL, e.left.span, f"`{e.op}`")
            self._want(right, BOOL, e.right.span, f"`{e.op}`")
            return self._fold(TExpr(op, (left, right), None, BOOL, e.span))
        if BOOL in (left.type, right.type) and (op not in ("eq", "ne") or left.type != right.type):
            bad = e.left if left.type == BOOL else e.right
            what = "compares a bool with a number" if op in ("eq", "ne") else "needs numbers, got a bool"
            self.bag.error(f"`{e.op}` {what}", bad.span, "combine conditions with `and` / `or`")
            return None
        if op in COMPARE:
            return self._fold(TExpr(op, (left, right), None, BOOL, e.span))
        if op in BITWISE or op in ("floordiv", "mod"):
            if op in BITWISE:
                for x, sub in ((left, e.left), (right, e.right)):
                    if x.type != INT:
                        self.bag.error(f"`{e.op}` needs integers, got {x.type}", sub.span)
                        return None
            if op in ("floordiv", "mod") and not self._nonzero_divisor(right, e.right.span):
                return None
            result = INT if (left.type, right.type) == (INT, INT) else FLOAT
            return self._fold(TExpr(op, (left, right), None, result, e.span))
        if op == "div":
            if not self._nonzero_divisor(right, e.right.span):
                return None
            return self._fold(TExpr(op, (left, right), None, FLOAT, e.span))
        if op == "pow" and left.type == INT and right.type == INT:
            if not (right.op == "const" and 0 <= right.value <= 64):
                self.bag.error("an integer power needs a constant exponent in 0..64", e.right.span,
                               "write a float base, e.g. `2.0 ** x`")
                return None
        result = INT if (left.type, right.type) == (INT, INT) else FLOAT
        return self._fold(TExpr(op, (left, right), None, result, e.span))

    def _nonzero_divisor(self, t: TExpr, span: Span) -> bool:
        """A divisor made of constants and declared sizes must not be 0 (checked again at construction)."""
        if any(x.op not in ("const", "size") and x.op not in BINARY_OPS and x.op not in ("neg", "call")
               for x in t.walk()) or any(x.op == "call" and x.value not in ("min", "max", "abs") for x in t.walk()):
            return True
        from ..lang.evaluate import Env, evaluate
        try:
            zero = float(evaluate(t, Env(sizes=self.sizes)).item()) == 0
        except (ArithmeticError, RuntimeError):
            zero = True
        if zero:
            self.bag.error("division by zero", span, "a divisor of sizes must not be 0" if t.op != "const" else None)
            return False
        if t.op != "const":
            self.divisors.append(t)
        return True

    def _call(self, e: ast.Call, ctx: str) -> TExpr | None:
        if e.kwargs:
            self.bag.error(f"`{e.fn}` takes no keyword arguments here", e.kwargs[0].span)
            return None
        if e.fn == "dot":
            return self._dot(e, ctx)
        if e.fn in self.features or e.fn in ALL_MAPS:
            self.bag.error(f"feature map `{e.fn}` applies to a row inside `dot`", e.span,
                           f"write `dot({e.fn}(q[i]), {e.fn}(k[j]))`")
            return None
        if e.fn not in FUNCTIONS:
            self.bag.error(f"unknown function `{e.fn}`", e.fn_span,
                           did_you_mean(e.fn, set(FUNCTIONS) | {"dot"} | set(self.features)))
            return None
        args = [self._typed(a, ctx) for a in e.args]
        if any(a is None for a in args):
            return None
        pattern, rule = FUNCTIONS[e.fn]
        kinds = pattern.split(",")
        variadic = pattern.endswith("+")
        if (variadic and len(args) < 2) or (not variadic and len(args) != len(kinds)):
            n = "2 or more" if variadic else str(len(kinds))
            self.bag.error(f"`{e.fn}` takes {n} argument{'s' if n != '1' else ''}, got {len(args)}", e.span)
            return None
        for idx, (a, node) in enumerate(zip(args, e.args)):
            kind = kinds[0].rstrip("+") if variadic else kinds[idx]
            if a.type == VEC or (kind == "num" and a.type == BOOL):
                self.bag.error(f"`{e.fn}` needs a number, got {a.type}", node.span)
                return None
            if kind in (INT, BOOL) and a.type != kind:
                self.bag.error(f"`{e.fn}` needs {'an' if kind == INT else 'a'} {kind}, got {a.type}", node.span,
                               "use `//` for integer division" if kind == INT else None)
                return None
        values = args[1:] if e.fn == "where" else args
        if e.fn == "where" and (BOOL in (values[0].type, values[1].type)) and values[0].type != values[1].type:
            self.bag.error("`where` needs both branches of the same kind", e.span)
            return None
        if rule == "float":
            result = FLOAT
        elif rule == "same":
            result = args[0].type
        elif rule == "int":
            result = INT
        else:
            types = {a.type for a in values}
            result = BOOL if types == {BOOL} else INT if types == {INT} else FLOAT
        return self._fold(TExpr("call", tuple(args), e.fn, result, e.span))

    def _dot(self, e: ast.Call, ctx: str) -> TExpr | None:
        if ctx not in ("score", "weight"):
            self.bag.error("`dot` may appear only in `score` or `weight`", e.span,
                           "masks and biases depend on positions, not on q and k")
            return None
        if len(e.args) != 2:
            self.bag.error(f"`dot` takes 2 arguments, got {len(e.args)}", e.span)
            return None
        sides = [self._row(a) for a in e.args]
        if any(s is None for s in sides):
            return None
        if {s.args[0].op if s.op == "feature" else s.op for s in sides} != {"qrow", "krow"}:
            self.bag.error("`dot` takes one row of q and one row of k", e.span, "write `dot(q[i], k[j])`")
            return None
        if sides[0].op == "krow" or (sides[0].args and sides[0].args[0].op == "krow"):
            sides.reverse()  # dot is symmetric: keep the q side first
        return TExpr("dot", tuple(sides), None, FLOAT, e.span)

    def _row(self, e: ast.Expr) -> TExpr | None:
        if isinstance(e, ast.Call) and not e.kwargs and len(e.args) == 1 and \
                (e.fn in self.features or e.fn in ALL_MAPS):
            inner = self._row(e.args[0])
            if inner is None:
                return None
            if inner.op == "feature":
                self.bag.error("feature maps do not compose", e.span)
                return None
            if e.fn in RANDOM_MAPS and e.fn not in self.features:
                self.bag.error(f"random feature map `{e.fn}` must be declared: it carries a seed and a draw",
                               e.fn_span, f"declare `feature phi = {e.fn}(features=64, seed=0)` and write `phi(q[i])`")
                return None
            info = self.features.get(e.fn)
            fn = (info.name if info.random else info.fn) if info else e.fn
            return TExpr("feature", (inner,), fn, VEC, e.span)
        if isinstance(e, ast.Index) and e.table in ("q", "k"):
            want = self.index_names[0] if e.table == "q" else self.index_names[1]
            if len(e.indices) != 1 or not (isinstance(e.indices[0], ast.Name) and e.indices[0].id == want):
                which = "query" if e.table == "q" else "key"
                self.bag.error(f"`{e.table}` is indexed by the {which} index `{want}`", e.span,
                               f"write `{e.table}[{want}]`")
                return None
            return TExpr("qrow" if e.table == "q" else "krow", (), e.table, VEC, e.span)
        if isinstance(e, ast.Call) and len(e.args) == 1 and isinstance(e.args[0], ast.Index) \
                and e.args[0].table in ("q", "k"):
            self.bag.error(f"unknown feature map `{e.fn}`", e.fn_span,
                           did_you_mean(e.fn, set(self.features) | set(ALL_MAPS))
                           or f"declare it, e.g. `feature {e.fn} = elu1`")
            return None
        self.bag.error("expected a row of q or k, optionally through a feature map", e.span,
                       "write `q[i]`, `k[j]` or `phi(q[i])`")
        return None

    def _index(self, e: ast.Index, ctx: str) -> TExpr | None:
        if e.table in ("q", "k", "v"):
            self.bag.error(f"a row of `{e.table}` may appear only inside `dot`", e.span,
                           "write `dot(q[i], k[j])`")
            return None
        table = self.params.get(e.table) or self.inputs.get(e.table)
        is_param = e.table in self.params
        if table is None:
            self.bag.error(f"unknown table `{e.table}`", e.table_span,
                           did_you_mean(e.table, set(self.params) | set(self.inputs)))
            return None
        if ctx not in ("index", "score", "weight"):
            self.bag.error(f"table `{e.table}` cannot be used here", e.span)
            return None
        dims = table.shape if is_param else table.dims
        if len(e.indices) != len(dims):
            self.bag.error(f"`{e.table}` has {len(dims)} dimension{'s' if len(dims) != 1 else ''}, "
                           f"indexed with {len(e.indices)}", e.span)
            return None
        idx = [self._typed(i, ctx) for i in e.indices]
        if any(i is None for i in idx):
            return None
        for i, node in zip(idx, e.indices):
            if i.type != INT:
                self.bag.error(f"a table index must be an integer, got {i.type}", node.span,
                               "use `//` for integer division")
                return None
        if is_param:
            return TExpr("param", tuple(idx), e.table, FLOAT, e.span)
        dtype = {"int": INT, "float": FLOAT, "bool": BOOL}[table.dtype]
        return TExpr("input", tuple(idx), e.table, dtype, e.span)

    def _fold(self, t: TExpr) -> TExpr:
        """Fold operators over constants so that sizes and literals become plain numbers."""
        if not t.args or any(a.op != "const" for a in t.args):
            return t
        from ..lang.evaluate import eval_scalar  # one definition of operator semantics for folding
        try:
            return const(eval_scalar(t), t.span)
        except OverflowError:
            self.bag.error("integer overflow in a constant expression", t.span, "integers are 32-bit")
            return t
        except (ArithmeticError, ValueError, RuntimeError):
            return t
