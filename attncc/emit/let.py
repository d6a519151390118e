"""Expressions printed from their DAG, with let-bound temporaries.

Emitters print expressions (scores, weights, masks, table indices, derivatives) into generated torch
and Triton code. Printed as trees, a subexpression used twice would be computed twice (tables
loaded twice), an operand that a spelling repeats (`x * x` for `x ** 2`, `x ^ (x >> 1)` for
`gray(x)`) would be inlined twice, and a deep expression would nest past what Python parses. A
`LetScope` prints the expressions of one block of code as a DAG instead (equal subtrees are one node:
TExpr equality ignores spans): it assigns a temporary `t0 = ...`, `t1 = ...` to every compound node
that is (a node's operands are what its printer takes its code from: ExprPrinter.operands)
  - used more than once (by the expressions of the scope together),
  - an operand its parent's spelling repeats, or
  - MAX_NESTING operator levels deep (so no line nests deeper),
and prints everything else inline. Names follow a post-order walk of the expressions in the order
given, so the same expressions always give the same text. Nothing here recurses over depth.
"""
from __future__ import annotations

from collections import Counter

from ..lang.expr import TExpr, postorder
from .exprs import ExprPrinter
from .writer import CodeWriter

MAX_NESTING = 8


class LetScope:
    """The temporaries of one block of generated code, printed by `printer` (a TorchExpr, TritonExpr...).

    `bind(w, exprs)` writes the temporaries the expressions need to `w`; afterwards `scope(t)` is the
    code of any expression of that block, with the bound subexpressions replaced by their names."""

    def __init__(self, printer: ExprPrinter, prefix: str = "t"):
        self.printer = printer
        self.prefix = prefix
        self.names: dict[TExpr, str] = {}

    def _operands(self, t: TExpr) -> tuple[TExpr, ...]:
        """What the printer takes t's code from (none for a node bound here: its name is its code)."""
        return () if t in self.names else self.printer.operands(t)

    def bind(self, w: CodeWriter, exprs: list[TExpr | None]) -> None:
        roots = [t for t in exprs if t is not None]
        order = [t for t in dict.fromkeys(n for root in roots for n in postorder(root, children=self._operands))
                 if t not in self.names]
        uses = Counter(roots)
        repeated: set[TExpr] = set()
        for t in order:
            if self._operands(t):
                uses.update(self._operands(t))
                repeated.update(self._repeated_operands(t))
        code: dict[TExpr, str] = {}
        depth: dict[TExpr, int] = {}
        for t in order:
            inner = self._operands(t)
            code[t] = self.printer.node(t, [self.names.get(a) or code[a] for a in inner])
            depth[t] = 1 + max((0 if a in self.names else depth[a] for a in inner), default=-1)
            if not t.args or code[t].isidentifier():  # leaves, and dot terms (already named)
                continue
            if uses[t] > 1 or t in repeated or (depth[t] >= MAX_NESTING and t not in roots):
                name = f"{self.prefix}{len(self.names)}"
                w.line(f"{name} = {code[t]}")
                self.names[t] = name

    def _repeated_operands(self, t: TExpr) -> list[TExpr]:
        """The operands that t's spelling writes more than once."""
        operands = self._operands(t)
        marks = [f"\0{n}\0" for n in range(len(operands))]
        text = self.printer.node(t, marks)
        return [a for a, mark in zip(operands, marks) if text.count(mark) > 1]

    def __call__(self, t: TExpr) -> str:
        """Code of t: inline, except for the subexpressions bound in this scope."""
        if t in self.names:
            return self.names[t]
        code: dict[TExpr, str] = {}
        for e in postorder(t, children=self._operands):
            code[e] = self.names.get(e) or self.printer.node(e, [self.names.get(a) or code[a] for a in self._operands(e)])
        return code[t]


def let_expr(w: CodeWriter, printer: ExprPrinter, t: TExpr) -> str:
    """The code of t alone, its temporaries written to w first."""
    scope = LetScope(printer)
    scope.bind(w, [t])
    return scope(t)
