"""The syntax tree of a spec: plain frozen dataclasses, every node with its Span."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..lang.source import Span


@dataclass(frozen=True)
class Expr:
    span: Span


@dataclass(frozen=True)
class Num(Expr):
    value: int | float
    is_int: bool


@dataclass(frozen=True)
class Bool(Expr):
    value: bool


@dataclass(frozen=True)
class Name(Expr):
    id: str


@dataclass(frozen=True)
class Unary(Expr):
    op: str  # "-", "+", "not"
    operand: Expr


@dataclass(frozen=True)
class Binary(Expr):
    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Kwarg:
    name: str
    value: Expr
    span: Span


@dataclass(frozen=True)
class Call(Expr):
    fn: str
    fn_span: Span
    args: tuple[Expr, ...]
    kwargs: tuple[Kwarg, ...] = ()


@dataclass(frozen=True)
class Index(Expr):
    table: str
    table_span: Span
    indices: tuple[Expr, ...]


@dataclass(frozen=True)
class Slice(Expr):
    """`lo:hi` as the last index of a row (`q[i, 0:D // 2]`); a missing bound is None."""
    lo: Expr | None
    hi: Expr | None


@dataclass(frozen=True)
class Stmt:
    span: Span


@dataclass(frozen=True)
class SizeDecl(Stmt):
    name: str
    name_span: Span
    value: Expr


@dataclass(frozen=True)
class LetDecl(Stmt):
    """`let NAME = EXPR`: a named subexpression the definitions (and later lets) may use."""
    name: str
    name_span: Span
    value: Expr


@dataclass(frozen=True)
class ParamDecl(Stmt):
    name: str
    name_span: Span
    shape: tuple[Expr, ...]
    init: Expr | None


@dataclass(frozen=True)
class InputDecl(Stmt):
    name: str
    name_span: Span
    dims: tuple[Expr, ...]
    dtype: str | None
    dtype_span: Span | None
    source: Expr | None = None  # a graph kernel of another input: `= diffusion(adj, t=0.5)`


@dataclass(frozen=True)
class FeatureDecl(Stmt):
    name: str
    name_span: Span
    fn: str
    fn_span: Span
    args: tuple[Expr, ...] = ()
    kwargs: tuple[Kwarg, ...] = ()


@dataclass(frozen=True)
class Def(Stmt):
    kind: str  # score | weight | mask | bias
    kind_span: Span
    params: tuple[str, str]
    params_span: Span
    body: Expr


@dataclass(frozen=True)
class Approx:
    """`approx NAME(kwargs)` after a normalizer: the attention is computed by that approximation."""
    method: str
    method_span: Span
    args: tuple[Expr, ...] = ()
    kwargs: tuple[Kwarg, ...] = ()


@dataclass(frozen=True)
class Normalize(Stmt):
    kind: str
    kind_span: Span
    args: tuple[Expr, ...] = ()
    kwargs: tuple[Kwarg, ...] = ()
    approx: Approx | None = None


@dataclass(frozen=True)
class PoolDecl(Stmt):
    """`pool k, v = context(...)`: k and/or v pooled (ContextPool) before the attention."""
    targets: tuple[str, ...]
    target_spans: tuple[Span, ...]
    fn: str
    fn_span: Span
    args: tuple[Expr, ...] = ()
    kwargs: tuple[Kwarg, ...] = ()


@dataclass(frozen=True)
class MapDecl(Stmt):
    """`map NAME { ... }`: one named attention map of a composed spec (its definitions, and
    declarations of its own); the spec's top-level declarations are shared by every map."""
    name: str
    name_span: Span
    stmts: tuple[Stmt, ...] = ()


@dataclass(frozen=True)
class OutputDecl(Stmt):
    """`output = EXPR`: a composed spec's result, a linear combination of its maps' outputs."""
    value: Expr


@dataclass(frozen=True)
class Spec:
    name: str
    name_span: Span
    stmts: tuple[Stmt, ...] = field(default_factory=tuple)
    span: Span = Span(0, 0)


def format_expr(e: Expr) -> str:
    """Canonical, fully parenthesised text of an expression (used by printers and tests); without
    recursion, since operator chains nest as deep as a spec is long."""
    text: dict[int, str] = {}
    stack: list[tuple[Expr, bool]] = [(e, False)]
    while stack:
        node, ready = stack.pop()
        parts = _parts(node)
        if not ready and parts:
            stack.append((node, True))
            stack.extend((p, False) for p in reversed(parts))
            continue
        text[id(node)] = _format_node(node, [text[id(p)] for p in parts])
    return text[id(e)]


def _parts(e: Expr) -> list[Expr]:
    """The subexpressions of e, in the order its text shows them."""
    if isinstance(e, Unary):
        return [e.operand]
    if isinstance(e, Binary):
        return [e.left, e.right]
    if isinstance(e, Call):
        return [*e.args, *(k.value for k in e.kwargs)]
    if isinstance(e, Index):
        return list(e.indices)
    if isinstance(e, Slice):
        return [b for b in (e.lo, e.hi) if b is not None]
    return []


def _format_node(e: Expr, parts: list[str]) -> str:
    if isinstance(e, Num):
        return repr(e.value)
    if isinstance(e, Bool):
        return "true" if e.value else "false"
    if isinstance(e, Name):
        return e.id
    if isinstance(e, Unary):
        sep = " " if e.op == "not" else ""
        return f"({e.op}{sep}{parts[0]})"
    if isinstance(e, Binary):
        return f"({parts[0]} {e.op} {parts[1]})"
    if isinstance(e, Call):
        args = parts[:len(e.args)] + [f"{k.name}={v}" for k, v in zip(e.kwargs, parts[len(e.args):])]
        return f"{e.fn}({', '.join(args)})"
    if isinstance(e, Index):
        return f"{e.table}[{', '.join(parts)}]"
    if isinstance(e, Slice):
        bounds = iter(parts)
        lo = next(bounds) if e.lo is not None else ""
        return f"{lo}:{next(bounds) if e.hi is not None else ''}"
    raise TypeError(type(e))


def format_spec(spec: Spec) -> str:
    """The AST as a canonical spec text: one statement a line, expressions fully parenthesised."""
    lines = [f"attention {spec.name} {{"]
    for s in spec.stmts:
        if isinstance(s, MapDecl):
            lines += [f"    map {s.name} {{", *("        " + format_stmt(m) for m in s.stmts), "    }"]
        else:
            lines.append("    " + format_stmt(s))
    lines.append("}")
    return "\n".join(lines)


def _call_args(args, kwargs) -> str:
    return ", ".join([format_expr(a) for a in args] + [f"{k.name}={format_expr(k.value)}" for k in kwargs])


def format_stmt(s: Stmt) -> str:
    if isinstance(s, SizeDecl):
        return f"size {s.name} = {format_expr(s.value)}"
    if isinstance(s, LetDecl):
        return f"let {s.name} = {format_expr(s.value)}"
    if isinstance(s, ParamDecl):
        init = f" = {format_expr(s.init)}" if s.init is not None else ""
        return f"param {s.name}[{', '.join(map(format_expr, s.shape))}]{init}"
    if isinstance(s, InputDecl):
        dtype = f" : {s.dtype}" if s.dtype else ""
        source = f" = {format_expr(s.source)}" if s.source is not None else ""
        return f"input {s.name}[{', '.join(map(format_expr, s.dims))}]{dtype}{source}"
    if isinstance(s, FeatureDecl):
        return f"feature {s.name} = {s.fn}({_call_args(s.args, s.kwargs)})"
    if isinstance(s, Def):
        return f"{s.kind}({s.params[0]}, {s.params[1]}) = {format_expr(s.body)}"
    if isinstance(s, Normalize):
        args = f"({_call_args(s.args, s.kwargs)})" if s.args or s.kwargs else ""
        approx = f" approx {s.approx.method}({_call_args(s.approx.args, s.approx.kwargs)})" if s.approx else ""
        return f"normalize {s.kind}{args}{approx}"
    if isinstance(s, OutputDecl):
        return f"output = {format_expr(s.value)}"
    if isinstance(s, MapDecl):  # a map inside a map (refused by the checker): on one line
        return f"map {s.name} {{ " + " ".join(format_stmt(m) for m in s.stmts) + " }"
    if isinstance(s, PoolDecl):
        return f"pool {', '.join(s.targets)} = {s.fn}({_call_args(s.args, s.kwargs)})"
    raise TypeError(type(s))
