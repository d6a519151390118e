"""Typing of expressions: names, operators, functions, dot products and table lookups.

`ExprTyper` is the half of the checker that turns an AST expression into a typed `TExpr` in a
context (a size, a table shape, a mask or bias, a score or weight), reporting every error to
`self.bag`. The checker (attncc/frontend/check.py) supplies the declarations it reads: `sizes`, `params`,
`inputs`, `features`, the current definition's `index_names`, and collects `divisors`. Lets
(`let NAME = EXPR`) are typed here too: `let_decls` in declaration order, `lets` once typed.
"""
from __future__ import annotations

import math

import numpy as np

from . import ast
from ..lang.evaluate import Env, eval_scalar, evaluate  # one definition of operator semantics, for folding
from ..lang.expr import BOOL, FLOAT, INT, RUNTIME_SIZES, VEC, TExpr, const
from ..lang.features import ALL_MAPS
from ..lang.rows import side
from ..lang.operators import BINARY, CONSTANT_HINTS, FUNCTIONS, OPERATORS, REWRITES, UNARY
from ..lang.source import Span, did_you_mean
from .rowtype import RowTyper

INT_LIMIT = 2**31
FLOAT32_MAX, FLOAT32_TINY = float(np.finfo(np.float32).max), float(np.finfo(np.float32).tiny)
DEFINITIONS = ("index", "score", "weight", "let")  # contexts that see the index variables and tables


class ExprTyper(RowTyper):
    def _expr(self, e: ast.Expr, ctx: str) -> TExpr | None:
        """Type one expression. ctx: const | size | shape | shape_tokens | index (mask, bias) | score | weight |
        let (a let's body: what score allows)."""
        try:
            return self._typed(e, ctx)
        except RecursionError:
            self.bag.error("expression is too deeply nested", e.span)
            return None

    def _typed(self, e: ast.Expr, ctx: str) -> TExpr | None:
        """Operator chains (`a + b + ...`, `not not ...`) are the only nesting without brackets, so the only
        one as deep as a spec is long: they are typed without recursion, operands first, left to right.
        Calls and lookups recurse, at most parse.MAX_NESTING brackets deep."""
        typed: dict[int, TExpr | None] = {}
        stack: list[tuple[ast.Expr, bool]] = [(e, False)]
        while stack:
            node, ready = stack.pop()
            if isinstance(node, ast.Binary) and not ready:
                stack += [(node, True), (node.right, False), (node.left, False)]
            elif isinstance(node, ast.Unary) and not ready:
                stack += [(node, True), (node.operand, False)]
            elif isinstance(node, ast.Binary):
                left, right = typed[id(node.left)], typed[id(node.right)]
                typed[id(node)] = None if left is None or right is None else self._binary(node, left, right)
            elif isinstance(node, ast.Unary):
                x = typed[id(node.operand)]
                typed[id(node)] = None if x is None else self._unary(node, x)
            else:
                typed[id(node)] = self._atom(node, ctx)
        return typed[id(e)]

    def _atom(self, e: ast.Expr, ctx: str) -> TExpr | None:
        if isinstance(e, ast.Num):
            if isinstance(e.value, int) and abs(e.value) >= INT_LIMIT:
                self.bag.error("integer literal out of range", e.span, "integers must lie within ±2^31")
                return None
            if isinstance(e.value, float) and not math.isfinite(e.value):
                self.bag.error("number literal out of range", e.span)
                return None
            return self._in_float32(const(e.value, e.span))
        if isinstance(e, ast.Bool):
            return const(e.value, e.span)
        if isinstance(e, ast.Name):
            return self._name(e, ctx)
        if isinstance(e, ast.Call):
            return self._call(e, ctx)
        if isinstance(e, ast.Index):
            return self._index(e, ctx)
        raise TypeError(type(e))

    def _unary(self, e: ast.Unary, x: TExpr) -> TExpr | None:
        if e.op == "+":
            return x if x.type in (INT, FLOAT) else self._not_a_number(e, x)
        operator = UNARY[e.op]
        if operator.operands == BOOL:
            x = self._want(x, BOOL, e.operand.span, f"`{e.op}`")
        elif x.type not in (INT, FLOAT):
            return self._not_a_number(e, x)
        return self._fold(TExpr(operator.name, (x,), None, operator.result_type([x.type]), e.span))

    def _name(self, e: ast.Name, ctx: str) -> TExpr | None:
        n = e.id
        if ctx in DEFINITIONS:
            if n == self.index_names[0]:
                return TExpr("var", (), "i", INT, e.span)
            if n == self.index_names[1]:
                return TExpr("var", (), "j", INT, e.span)
            if n in ("h", "hk"):  # hk = h // (H // Hkv): the key/value head query head h reads
                return TExpr("var", (), n, INT, e.span)
            if n == "scale":
                return TExpr("scale", (), "scale", FLOAT, e.span)
            if n in ("N", "Nq", "H", "D", "E"):
                return TExpr("rsize", (), n, INT, e.span)
            if n in self.let_decls:
                return self._let(e, ctx)
            if n == "Hkv":
                self.bag.error("`Hkv` (the key/value heads) can size a table but not be used in a definition",
                               e.span, "index a table of one entry per key/value head with `hk`, e.g. `slope[hk]` "
                               "with `param slope[Hkv]`")
                return None
            if n == "b" and not self._declared(n):  # older specs name a block size `b`: theirs wins
                return TExpr("var", (), "b", INT, e.span)
        if n in self.let_decls:
            self.bag.error(f"`{n}` is a `let`, usable only in definitions and other lets", e.span,
                           f"for a constant, declare `size {n} = ...`")
            return None
        if ctx.startswith("shape"):
            if n in ("H", "Hkv", "D", "E"):
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
        known = set(self.sizes) | {"h", "hk", "b", "scale", *RUNTIME_SIZES, *self.index_names}
        where = {"const": "a constant", "size": "a size", "shape": "a table shape",
                 "shape_tokens": "an input shape"}.get(ctx)
        if where and (n in known or n in ("i", "j")):
            self.bag.error(f"`{n}` cannot be used in {where}", e.span,
                           "index variables exist only in definitions and lets" if n in ("i", "j", "h", "hk", "b") else None)
            return None
        if ctx == "let" and any(n in d.params for d in self.defs.values()):
            self.bag.error(f"unknown name `{n}`", e.span, "in a `let`, the query index is `i` and the key index `j`")
            return None
        self.bag.error(f"unknown name `{n}`", e.span, CONSTANT_HINTS.get(n) or
                       did_you_mean(n, known | set(self.params) | set(self.inputs) | set(self.let_decls)))
        return None

    def _declared(self, n: str) -> bool:
        return n in self.sizes or n in self.params or n in self.inputs or n in self.features

    def _LetDecl(self, s: ast.LetDecl):
        self.let_decls[s.name] = s  # typed with the definitions, once every declaration is known

    def _type_lets(self) -> None:
        """Each let's body, typed once where definitions are (query index `i`, key index `j`, `dot`
        allowed): a let may use every declaration and the lets above it."""
        self.index_names = ("i", "j")
        for name, s in self.let_decls.items():
            if self._mentions_row(s.value):  # a row, for the dots that use it
                self.lets[name] = self._row(s.value)
                if self.lets[name] is not None and len(side(self.lets[name])) != 1:
                    self.bag.error(f"the row `{name}` reads both the query index `i` and the key index `j`",
                                   s.value.span, "a row is of one token: the query's i or the key's j")
                    self.lets[name] = None
            else:
                self.lets[name] = self._expr(s.value, ctx="let")

    def _let(self, e: ast.Name, ctx: str) -> TExpr | None:
        """A let's typed body (typed once, in declaration order: a let may use only the lets above it)."""
        n = e.id
        if n not in self.lets:
            self.bag.error(f"`{n}` is used before its `let`", e.span, "a let may use only the lets declared above it")
            return None
        value = self.lets[n]
        if value is not None and value.type == VEC:
            self.bag.error(f"`{n}` is a row, usable only as a side of `dot`", e.span, f"write e.g. `dot({n}, k[j])`")
            return None
        if value is not None and ctx == "index" and value.uses("dot"):
            self.bag.error(f"`{n}` uses `dot`, which may appear only in `score` or `weight`", e.span,
                           "masks and biases depend on positions, not on q and k")
            return None
        return value  # None: its body's error is reported at the let

    def _want(self, x: TExpr, t: str, span: Span, what: str) -> TExpr:
        if x.type == t or (t == FLOAT and x.type == INT):
            return x
        self.bag.error(f"{what} needs {'a ' if t != INT else 'an '}{t}, got {x.type}", span,
                       "compare it, e.g. `x != 0`" if t == BOOL else None)
        return x

    def _not_a_number(self, e: ast.Unary, x: TExpr) -> None:
        self.bag.error(f"`{e.op}` needs a number, got {x.type}", e.operand.span)

    def _binary(self, e: ast.Binary, left: TExpr, right: TExpr) -> TExpr | None:
        operator = BINARY[e.op]
        for side, x in (("left", left), ("right", right)):
            if x.type == VEC:
                self.bag.error(f"`{e.op}` cannot take a row vector", (e.left if side == "left" else e.right).span,
                               "combine rows with `dot(...)`")
                return None
        if operator.operands == BOOL:
            self._want(left, BOOL, e.left.span, f"`{e.op}`")
            self._want(right, BOOL, e.right.span, f"`{e.op}`")
        elif BOOL in (left.type, right.type) and (operator.operands != "equatable" or left.type != right.type):
            bad = e.left if left.type == BOOL else e.right
            equality = operator.operands == "equatable"
            what = "compares a bool with a number" if equality else "needs numbers, got a bool"
            self.bag.error(f"`{e.op}` {what}", bad.span, "combine conditions with `and` / `or`")
            return None
        if operator.operands == INT:
            for x, sub in ((left, e.left), (right, e.right)):
                if x.type != INT:
                    self.bag.error(f"`{e.op}` needs integers, got {x.type}", sub.span)
                    return None
        if operator.divisor and not self._nonzero_divisor(right, e.right.span):
            return None
        problem = operator.restriction([left, right])
        if problem is not None:
            position, message, hint = problem
            self.bag.error(message, (e.left, e.right)[position].span, hint)
            return None
        result = operator.result_type([left.type, right.type])
        return self._fold(TExpr(operator.name, (left, right), None, result, e.span))

    def _nonzero_divisor(self, t: TExpr, span: Span) -> bool:
        """A divisor made of constants and declared sizes must not be 0 (checked again at construction)."""
        foldable = all(x.op in ("const", "size") or x.op in OPERATORS
                       or (x.op == "call" and x.value in ("min", "max", "abs")) for x in t.walk())
        if not foldable:  # reads an index, a table or an input: nothing to check at compile time
            return True
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
            self.bag.error(f"unknown function `{e.fn}`", e.fn_span, self._function_hint(e.fn))
            for a in e.args:  # every error at once: those inside its arguments too
                self._typed(a, ctx)
            return None
        args = [self._typed(a, ctx) for a in e.args]
        if any(a is None for a in args):
            return None
        operator = FUNCTIONS[e.fn]
        variadic = operator.operands.endswith("+")
        kinds = operator.kinds(len(args))
        if (variadic and len(args) < 2) or (not variadic and len(args) != len(kinds)):
            n = "2 or more" if variadic else str(len(kinds))
            self.bag.error(f"`{e.fn}` takes {n} argument{'s' if n != '1' else ''}, got {len(args)}", e.span)
            return None
        for a, node, kind in zip(args, e.args, kinds):
            if a.type == VEC or (kind == "num" and a.type == BOOL):
                self.bag.error(f"`{e.fn}` needs a number, got {a.type}", node.span)
                return None
            if kind in (INT, BOOL) and a.type != kind:
                self.bag.error(f"`{e.fn}` needs {'an' if kind == INT else 'a'} {kind}, got {a.type}", node.span,
                               "use `//` for integer division" if kind == INT else None)
                return None
        values = [a for a, kind in zip(args, kinds) if kind != BOOL]
        if len(values) == 2 and BOOL in (values[0].type, values[1].type) and values[0].type != values[1].type:
            self.bag.error(f"`{e.fn}` needs both branches of the same kind", e.span)
            return None
        result = operator.result_type([a.type for a in args])
        return self._fold(TExpr("call", tuple(args), e.fn, result, e.span))

    def _function_hint(self, fn: str) -> str:
        if fn in REWRITES:
            return f"write {REWRITES[fn]}"
        return did_you_mean(fn, set(FUNCTIONS) | {"dot"} | set(self.features)) or \
            f"the functions are {', '.join(sorted(FUNCTIONS))} (docs/language.md, section 12)"

    def _index(self, e: ast.Index, ctx: str) -> TExpr | None:
        if e.table in ("q", "k", "v"):
            self.bag.error(f"a row of `{e.table}` may appear only inside `dot`", e.span,
                           "write `dot(q[i], k[j])`")
            return None
        if any(isinstance(i, ast.Slice) for i in e.indices):
            self.bag.error("a slice may appear only in a row inside `dot`", e.span,
                           "write e.g. `dot(q[i, 0:R], k[j, 0:R])`")
            return None
        info = self.inputs.get(e.table)
        if info is not None and ctx in DEFINITIONS and len(e.indices) == len(info.dims) - 1 and len(info.dims) > 1:
            self.bag.error(f"a row of `{e.table}` may appear only inside `dot`", e.span,
                           f"index all {len(info.dims)} dimensions for a number, or write `dot(..., {e.table}[...])`")
            return None
        table = self.params.get(e.table) or self.inputs.get(e.table)
        is_param = e.table in self.params
        if table is None:
            self.bag.error(f"unknown table `{e.table}`", e.table_span,
                           did_you_mean(e.table, set(self.params) | set(self.inputs)))
            for i in e.indices if ctx in DEFINITIONS else ():  # every error at once: those in its indices too
                self._typed(i, ctx)
            return None
        if ctx not in DEFINITIONS:
            self.bag.error(f"table `{e.table}` cannot be used here", e.span,
                           "tables are read in definitions and lets; sizes and shapes are constants")
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

    def _in_float32(self, t: TExpr) -> TExpr | None:
        """A float constant that float32 represents (as itself or a nearby number), else None after an
        error: float32 and half inputs and every Triton kernel compute in float32, where 1e300 is inf and
        1e-300 is 0, while the float64 reference keeps them (a softmax would silently change)."""
        if t.type != FLOAT or t.value == 0 or FLOAT32_TINY <= abs(t.value) <= FLOAT32_MAX:
            return t
        what = "beyond float32's range (about 3.4e38)" if abs(t.value) > FLOAT32_MAX else \
            "below float32's normal range (about 1.2e-38): 0 or denormal there"
        self.bag.error(f"the number {t.value:g} is {what}", t.span,
                       "computations in float32 (float32 and half inputs, Triton kernels) cannot hold it; scale the "
                       "expression (a constant added to a softmax score changes nothing: drop it)")
        return None

    def _fold(self, t: TExpr) -> TExpr:
        """Fold operators over constants so that sizes and literals become plain numbers."""
        if not t.args or any(a.op != "const" for a in t.args):
            return t
        try:
            return self._in_float32(const(eval_scalar(t), t.span))
        except OverflowError:
            self.bag.error("integer overflow in a constant expression", t.span, "integers are 32-bit")
            return t
        except (ArithmeticError, ValueError, RuntimeError):
            return t
