"""Composed specs: several named attention maps, and an output that combines them linearly.

    attention diff {
        param lam[H] = 0.5                     # top-level declarations: shared by every map
        map a1 { mask(i, j) = j <= i }
        map a2 { mask(i, j) = j <= i and i - j < 64 }
        output = a1 - lam[h] * a2              # sum over maps of coefficient(h, b, i) * map
    }

Each map is checked as a spec of its own, `<spec>_<map>`: the top-level declarations followed by
the map's statements, so it gets its own IR, analyses, plan and kernels. A top-level learned table
is one table of the composed module, read by every map and by the coefficients. The output is
taken apart into one coefficient per map (`_Linear`): a map may be added, subtracted, multiplied
by or divided by an expression without maps, nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from . import ast
from .check import RESERVED, CheckedSpec, check, declarations_checker
from .records import InputInfo, ParamInfo
from ..lang.expr import BOOL, TExpr
from ..lang.normalizers import NORMALIZERS
from ..lang.source import DiagnosticBag, Source, Span, SpecError, did_you_mean

SHARED_KINDS = (ast.SizeDecl, ast.ParamDecl, ast.InputDecl, ast.FeatureDecl, ast.LetDecl)
BUILTIN_NAMES = {"h", "b", "i", "j", "scale", "N", "Nq", "H", "D", "E"}
LINEAR_HINT = ("`output` is a sum of coefficient * map terms: a map may be added, subtracted, multiplied "
               "or divided by an expression without maps, e.g. `output = a1 - lam[h] * a2`")


@dataclass
class ComposedSpec:
    """The checked meaning of a composed spec: out = sum over maps m of coefficients[m] * map_m(q, k, v)."""
    name: str
    source: Source
    maps: dict[str, CheckedSpec]  # each map checked as the spec `<name>_<map>`
    map_asts: dict[str, ast.Spec]  # the spec each map is checked as (top-level declarations + its statements)
    coefficients: dict[str, TExpr]  # of h, b, i, sizes, shared tables and inputs
    output: str  # the output as written (canonical text)
    sizes: dict[str, int]  # top-level sizes
    params: dict[str, ParamInfo]  # top-level learned tables: one parameter, shared
    inputs: dict[str, InputInfo]  # every input a call may pass: the top-level ones, then each map's own

    @property
    def shared(self) -> tuple[str, ...]:
        return tuple(self.params)


def is_composed(spec: ast.Spec) -> bool:
    """A spec with at least one `map`: checked by `check_composed`, compiled map by map."""
    return any(isinstance(s, ast.MapDecl) for s in spec.stmts)


def _nodes(node):
    """Every AST node under a statement or expression (dataclass fields, tuples), without recursion."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, tuple):
            stack.extend(n)
        elif hasattr(n, "__dataclass_fields__") and not isinstance(n, Span):
            yield n
            stack.extend(getattr(n, f.name) for f in fields(n))


def _calls(stmts) -> set[str]:
    return {n.fn for s in stmts for n in _nodes(s) if isinstance(n, ast.Call)}


def _takes_feature(stmts, feature: str) -> bool:
    """Whether a map sees a top-level feature map: it applies it by name, or it is a kernelized map
    without `score` / `weight`, whose default weight is dot(phi(q[i]), phi(k[j])) of the declared map."""
    if feature in _calls(stmts):
        return True
    defs = {s.kind for s in stmts if isinstance(s, ast.Def)}
    norm = next((s for s in stmts if isinstance(s, ast.Normalize)), None)
    scored = norm is not None and norm.kind in NORMALIZERS and NORMALIZERS[norm.kind].takes_score
    return not ({"score", "weight"} & defs) and not scored


class _Composer:
    def __init__(self, src: Source, spec: ast.Spec, reserved_attributes: frozenset[str],
                 reserved_keywords: frozenset[str]):
        self.src, self.spec = src, spec
        self.reserved = (reserved_attributes, reserved_keywords)
        self.bag = DiagnosticBag(src)
        self.shared: list[ast.Stmt] = []
        self.maps: dict[str, ast.MapDecl] = {}
        self.outputs: list[ast.OutputDecl] = []

    def run(self) -> ComposedSpec:
        self._sort_statements()
        map_asts = {name: self._map_spec(m) for name, m in self.maps.items()}
        checked: dict[str, CheckedSpec] = {}
        for name, tree in map_asts.items():
            try:
                checked[name] = check(self.src, tree, *self.reserved)
            except SpecError as exc:
                self.bag.items.extend(exc.diagnostics)
        top = declarations_checker(self.src, ast.Spec(self.spec.name, self.spec.name_span, tuple(self.shared)),
                                   *self.reserved)
        coefficients = self._coefficients(top) if len(self.outputs) == 1 else {}
        self.bag.items.extend(top.bag.items)
        unique = list({(d.message, d.span, d.hint): d for d in self.bag.items}.values())
        if unique:
            raise SpecError(self.src, unique)
        output = ast.format_expr(self.outputs[0].value)
        output = output[1:-1] if isinstance(self.outputs[0].value, ast.Binary) else output
        inputs = {**top.inputs, **{n: info for spec in checked.values() for n, info in spec.inputs.items()}}
        return ComposedSpec(self.spec.name, self.src, checked, map_asts, coefficients, output, dict(top.sizes),
                            dict(top.params), inputs)

    # ---------------------------------------------------------------- statements
    def _sort_statements(self) -> None:
        declared = {s.name for s in self.spec.stmts if isinstance(s, SHARED_KINDS)}
        for s in self.spec.stmts:
            if isinstance(s, SHARED_KINDS):
                self.shared.append(s)
            elif isinstance(s, ast.MapDecl):
                self._map(s, declared)
            elif isinstance(s, ast.OutputDecl):
                if self.outputs:
                    self.bag.error("`output` is given twice", s.span, "write one `output = ...` combining every map")
                self.outputs.append(s)
            else:
                what = s.kind if isinstance(s, ast.Def) else "normalize" if isinstance(s, ast.Normalize) else "pool"
                span = s.kind_span if isinstance(s, ast.Def) else s.span
                self.bag.error(f"`{what}` is written outside the maps of a spec that has maps", span,
                               "each map holds its own definitions: move it into a `map NAME { ... }`")
        if not self.outputs:
            self.bag.error("a spec with maps needs `output = ...`", self.spec.name_span,
                           f"combine the maps linearly, e.g. `output = {' - '.join(list(self.maps)[:2])}`")

    def _map(self, s: ast.MapDecl, declared: set[str]) -> None:
        if s.name in self.maps or s.name in declared:
            self.bag.error(f"`{s.name}` is declared twice", s.name_span, "each name is declared once")
            return
        if s.name in RESERVED or s.name in self.reserved[0]:
            self.bag.error(f"`{s.name}` cannot name a map", s.name_span,
                           "it is a built-in name or an attribute of the compiled nn.Module: choose another")
            return
        for inner in s.stmts:
            if isinstance(inner, ast.MapDecl):
                self.bag.error("a map cannot hold another map", inner.name_span,
                               "declare every map at the top level of the spec")
            elif isinstance(inner, ast.OutputDecl):
                self.bag.error("`output` belongs at the top level of the spec, after the maps", inner.span,
                               "move it out of the map")
        self.maps[s.name] = s

    def _map_spec(self, m: ast.MapDecl) -> ast.Spec:
        """The spec a map is checked and compiled as: the shared declarations it sees, then its own."""
        own = tuple(s for s in m.stmts if not isinstance(s, (ast.MapDecl, ast.OutputDecl)))
        shared = tuple(s for s in self.shared if not isinstance(s, ast.FeatureDecl) or _takes_feature(own, s.name))
        return ast.Spec(f"{self.spec.name}_{m.name}", m.name_span, shared + own, m.span)

    # ---------------------------------------------------------------- the output
    def _coefficients(self, top) -> dict[str, TExpr]:
        output = self.outputs[0].value
        known = BUILTIN_NAMES | {s.name for s in self.shared} | set(self.maps)
        errors = len(self.bag.items)
        terms = _Linear(self.maps, known, self.bag)(output)
        if len(self.bag.items) > errors:  # a map used otherwise, reported: nothing more to say of the output
            return {}
        if terms is None:
            if not self.bag.items:
                self.bag.error("`output` uses no map", output.span, LINEAR_HINT)
            return {}
        typed = {}
        for name, coefficient in terms.items():
            t = top.typed_coefficient(coefficient)
            if t is None:
                continue
            if t.type == BOOL:
                self.bag.error(f"the coefficient of `{name}` is a condition, not a number", coefficient.span,
                               "write `where(c, x, 0)` for a number chosen by a condition")
            elif t.uses("var", "j"):
                self.bag.error(f"the coefficient of `{name}` depends on the key index `j`", coefficient.span,
                               "a coefficient weighs a map's output row: it may use h, b, i, sizes, tables "
                               "and inputs")
            typed[name] = t
        for name, m in self.maps.items():
            if name not in terms:
                self.bag.error(f"map `{name}` is never used in `output`", m.name_span,
                               "add it to `output`, or drop the map")
        return typed


class _Linear:
    """An output expression taken apart into {map: coefficient expression}; None for an expression
    without maps. Errors for maps used otherwise go to the bag."""

    def __init__(self, maps: dict, known: set[str], bag: DiagnosticBag):
        self.maps, self.known, self.bag = maps, known, bag

    def __call__(self, e: ast.Expr) -> dict[str, ast.Expr] | None:
        if isinstance(e, ast.Name):
            if e.id in self.maps:
                return {e.id: ast.Num(e.span, 1, True)}
            if e.id not in self.known:
                self.bag.error(f"unknown map `{e.id}`", e.span,
                               did_you_mean(e.id, self.maps) or f"the maps: {', '.join(self.maps)}")
                return {}
            return None
        if isinstance(e, ast.Unary) and e.op in ("-", "+"):
            inner = self(e.operand)
            if inner is None or e.op == "+":
                return inner
            return {m: ast.Unary(e.span, "-", c) for m, c in inner.items()}
        if isinstance(e, ast.Binary) and e.op in ("+", "-", "*", "/"):
            return self._binary(e)
        for node in _nodes(e):
            if isinstance(node, ast.Name) and node.id in self.maps:
                self.bag.error(f"map `{node.id}` is used non-linearly", node.span, LINEAR_HINT)
                return {}
        return None

    def _binary(self, e: ast.Binary) -> dict[str, ast.Expr] | None:
        left, right = self(e.left), self(e.right)
        if left == {} or right == {}:  # an error below, reported
            return {}
        if e.op in ("+", "-"):
            if left is None and right is None:
                return None
            if left is None or right is None:
                side = e.left if left is None else e.right
                self.bag.error("a term of `output` without a map", side.span, LINEAR_HINT)
                return {}
            out = dict(left)
            for m, c in right.items():
                if m in out:
                    out[m] = ast.Binary(e.span, e.op, out[m], c)
                else:
                    out[m] = c if e.op == "+" else ast.Unary(c.span, "-", c)
            return out
        if left is not None and right is not None:
            self.bag.error(f"a map {'times' if e.op == '*' else 'divided by'} a map is not linear", e.span,
                           LINEAR_HINT)
            return {}
        if right is not None and e.op == "/":
            self.bag.error("dividing by a map is not linear", e.right.span, LINEAR_HINT)
            return {}
        if left is None and right is None:
            return None
        if left is not None:
            return {m: e.right if _one(c) and e.op == "*" else ast.Binary(e.span, e.op, c, e.right)
                    for m, c in left.items()}
        return {m: e.left if _one(c) else ast.Binary(e.span, "*", e.left, c) for m, c in right.items()}


def _one(e: ast.Expr) -> bool:
    """The coefficient of a map written alone."""
    return isinstance(e, ast.Num) and e.value == 1


def check_composed(src: Source, spec: ast.Spec, reserved_attributes: frozenset[str] = frozenset(),
                   reserved_keywords: frozenset[str] = frozenset()) -> ComposedSpec:
    """The checked composed spec (see the module docstring); every error of every map at once."""
    return _Composer(src, spec, reserved_attributes, reserved_keywords).run()


__all__ = ["ComposedSpec", "check_composed", "is_composed"]
