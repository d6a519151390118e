"""Row expressions in `dot` become one dot of prepared rows q', k' that the module computes first.

The row forms (TExpr op, args, value; every one of type VEC) are listed in attncc/lang/rows.py:
`qrow`, `krow`, `rowin` (a row of an input: args (h?, i|j), value its name), `slice` (row, lo, hi),
`mul`/`div`/`add`/`sub`/`neg` of rows (and of a row by a number), `call` (row,) with value the
function (`exp`, `sigmoid`, ...), `feature` (row,) with value the map. A pass that lowers a
special form of them (a per-dimension gate `dot(q[i] * exp(G[h, i]), k[j] * exp(-G[h, j]))`)
runs before this one in PIPELINE and replaces the dot; what it leaves is canonicalised here.
"""
from __future__ import annotations

import sympy

from ..ir.graph import D, Graph, expr_of
from ..ir.lower import ExprBuilder
from ..lang.expr import FLOAT, VEC, TExpr, fold
from ..lang.rows import PreparedRows, dot_terms, plain_dots, side, width, width_sympy
from ..lang.source import AttnccError

QROW, KROW = TExpr("qrow", (), "q", VEC), TExpr("krow", (), "k", VEC)


def prepare_rows(graph: Graph, ctx) -> None:
    """attend(S(dot(A_1(i), B_1(j)), ..., dot(A_n, B_n)), mask?, v)
    -> attend(S', mask?, v) {prepared_rows = (q', k')}

    One dot (used in any way: a polynomial, exp(dot), ...): dot(f(A), g(B)) -> dot(f(q), g(k)) with
    q' = A, k' = B; an outer feature map f, g stays on the dot (random maps draw for q', k').
    Several dots: S = sum_t c_t dot(A_t, B_t) + R (checked linear: frontend/rowtype.py). With one
    coefficient c = c_t for every t, S' = c dot(q', k') + R with q' = concat_t(A_t), k' = concat_t(B_t),
    since sum_t <A_t, B_t> = <concat_t A_t, concat_t B_t>; otherwise each c_t folds into the side it
    reads (<A, B> c = <c A, B> for c of i, h, b; <A, c B> for c of j), S' = dot(q', k') + R. Every later
    pass and lowering sees plain rows of width W' = sum_t width(A_t); `scale` keeps meaning
    1/sqrt(D) of the original q (ctx.D is read before the rows are prepared)."""
    for nid in graph.find("attend"):
        node = graph.node(nid)
        ops = graph.operands(nid)
        scores = expr_of(graph, ops[0])
        dots = list(dict.fromkeys(e for e in scores.walk() if e.op == "dot"))
        if not dots or plain_dots(dots):  # q and k as they are: nothing to prepare, any combination
            continue
        if len(dots) == 1 and (dot_terms(scores) is None or any(s.op == "feature" for s in dots[0].args)):
            new_scores, rows = _one_dot(scores, dots[0])
        else:
            new_scores, rows = _linear(scores)
        _check_width_of_d(new_scores, rows, graph)
        scores_id = ExprBuilder(graph).add(new_scores)
        new = graph.add(node.op, [scores_id, *ops[1:]], shape=node.shape, dtype=node.dtype, span=node.span,
                        **{**dict(node.attrs), "prepared_rows": rows})
        graph.replace_uses(nid, new)
        ctx.note("prepare_rows", f"{len(dots)} dot term{'s' if len(dots) > 1 else ''} as one dot of prepared rows: "
                 f"{rows.describe()}")


def _core(t: TExpr) -> TExpr:
    """A dot side under its outer feature map (the map stays on the dot)."""
    return t.args[0] if t.op == "feature" else t


def _with_core(t: TExpr, core: TExpr) -> TExpr:
    return TExpr("feature", (core,), t.value, VEC, t.span) if t.op == "feature" else core


def _one_dot(scores: TExpr, dot: TExpr) -> tuple[TExpr, PreparedRows]:
    a, b = dot.args
    plain = TExpr("dot", (_with_core(a, QROW), _with_core(b, KROW)), None, FLOAT, dot.span)
    replaced = fold(scores, lambda e, args: plain if e == dot else
                    TExpr(e.op, tuple(args), e.value, e.type, e.span) if args else e,
                    descend=lambda e: e.op != "dot")
    return replaced, PreparedRows(_core(a), _core(b))


def _linear(scores: TExpr) -> tuple[TExpr, PreparedRows]:
    terms, rest = dot_terms(scores)
    coefficients = {c for _, c in terms}
    common = coefficients.pop() if len(coefficients) == 1 else None
    # kernels read the rows' width W' where the spec reads D: a common coefficient of D goes into q'
    into_q = common is not None and common.uses("rsize", "D") and "j" not in side(common)
    q_parts, k_parts = [], []
    for dot, c in terms:
        a, b = dot.args
        if common is None and not _is_one(c):
            if side(c) == {"j"}:
                b = TExpr("mul", (b, c), None, VEC)
            else:
                a = TExpr("mul", (a, c), None, VEC)
        q_parts.append(a)
        k_parts.append(b)
    concat = lambda parts: parts[0] if len(parts) == 1 else TExpr("concat", tuple(parts), None, VEC)  # noqa: E731
    q_rows = TExpr("mul", (concat(q_parts), common), None, VEC) if into_q else concat(q_parts)
    new = TExpr("dot", (QROW, KROW), None, FLOAT)
    if common is not None and not into_q and not _is_one(common):
        new = TExpr("mul", (new, common), None, FLOAT)
    if rest is not None:
        new = TExpr("add", (new, rest), None, FLOAT)
    return new, PreparedRows(q_rows, concat(k_parts))


def _check_width_of_d(scores: TExpr, rows: PreparedRows, graph: Graph) -> None:
    """Kernels see the prepared rows' width where the spec reads D: a score may read D outside the
    rows only through `scale` (ctx.scale, of the original D) or where the rows are D wide."""
    if not scores.uses("rsize", "D"):
        return
    dims = {name: info.dims for name, info in graph.signature.inputs.items()}
    if sympy.simplify(width_sympy(width(rows.q, dims)) - D) != 0:
        raise AttnccError(f"{graph.name}: the score reads D outside the dot, and the rows of the dot are not D "
                          f"wide ({rows.describe()}); write the factor as a coefficient of the dot "
                          "(`dot(a, b) / sqrt(D)`), or use `scale`")


def _is_one(c: TExpr) -> bool:
    return c.op == "const" and c.value == 1

