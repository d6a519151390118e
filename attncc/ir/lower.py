"""CheckedSpec -> IR graph: the dense computation, one node per operation.

    q[B,H,Nq,D]  k[B,H,N,D]  v[B,H,N,E]
    i[1,1,Nq,1]  j[1,1,1,N]  h[1,H,1,1]  b[B,1,1,1]   (index grids; expressions over them broadcast to [B,H,Nq,N])
    pairdot(phi(q), phi(k)) -> [B,H,Nq,N]
    attend(scores, mask?, v) {normalize} -> out[B,H,Nq,E]
"""
from __future__ import annotations

import sympy

from ..frontend.check import CheckedSpec
from ..lang.expr import FLOAT, VEC, TExpr, postorder
from ..lang.rows import side, width, width_sympy
from ..lang.favor import FAVOR
from ..lang.normalizers import pair_scores
from .graph import SIZE_SYMBOLS, B, D, E, Graph, H, N, Nq, broadcast
from .signature import Signature

_VAR_SHAPES = {"i": (1, 1, Nq, 1), "j": (1, 1, 1, N), "h": (1, H, 1, 1), "hk": (1, H, 1, 1), "b": (B, 1, 1, 1)}


class ExprBuilder:
    """Adds the nodes of typed expressions to a graph, sharing structurally equal subexpressions."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.cache: dict[tuple, int] = {}
        self.leaves = {graph.node(n).op: n for n in graph.order() if graph.node(n).op in ("q", "k", "v")}
        for name, shape in (("q", (B, H, Nq, D)), ("k", (B, H, N, D)), ("v", (B, H, N, E))):
            if name not in self.leaves:
                self.leaves[name] = graph.add(name, shape=shape, dtype=FLOAT)

    def add(self, t: TExpr) -> int:
        """The node of t, its subexpressions added first (left to right, without recursion)."""
        nodes: dict[TExpr, int] = {}
        for e in postorder(t):
            if e.op in ("qrow", "krow"):
                nodes[e] = self.leaves["q" if e.op == "qrow" else "k"]
                continue
            args = tuple(nodes[a] for a in e.args)
            key = (e.op, e.value, e.type, args)
            if key not in self.cache:
                self.cache[key] = self._new(e, args)
            nodes[e] = self.cache[key]
        return nodes[t]

    def _new(self, t: TExpr, args: tuple[int, ...]) -> int:
        g = self.graph
        if t.op == "feature":
            return g.add("feature", args, shape=g.node(args[0]).shape, dtype=FLOAT, span=t.span, map=t.value,
                         **self._random_map(t.value))
        if t.op == "dot":
            return g.add("pairdot", args, shape=(B, H, Nq, N), dtype=FLOAT, span=t.span)
        if t.type == VEC and t.op != "feature":  # a row of one token's side: [B, H, tokens, width]
            tokens = Nq if side(t) == {"i"} else N
            dims = {name: info.dims for name, info in g.signature.inputs.items()}
            shape = (B, H, tokens, width_sympy(width(t, dims)))
            value = {"value": t.value} if t.value is not None else {}
            return g.add(t.op, args, shape=shape, dtype=VEC, span=t.span, **value)
        if t.op == "var":
            return g.add("var", shape=_VAR_SHAPES[t.value], dtype=t.type, span=t.span, value=t.value)
        shape = broadcast(*(g.node(a).shape for a in args)) if args else ()
        if t.op == "input":  # inputs may carry a leading batch dimension
            shape = broadcast((B, 1, 1, 1), shape)
        value = {"value": t.value} if t.value is not None else {}
        return g.add(t.op, args, shape=shape, dtype=t.type, span=t.span, **value)

    def _random_map(self, name: str) -> dict:
        """A declared random-feature map's function and options (elementwise maps are named by function)."""
        phi = self.graph.signature.features.get(name)
        return {"fn": phi.fn, "options": phi.options} if phi is not None and phi.random else {}


def signature_of(spec: CheckedSpec) -> Signature:
    """The module's interface; `approx favor` draws a random feature map `favor` (see kernelize_favor)."""
    features = dict(spec.features)
    if spec.approx is not None and spec.approx.method == FAVOR:
        features[FAVOR] = spec.approx.favor_map()
    return Signature(spec.name, dict(spec.sizes), dict(spec.derived), tuple(spec.divisors), dict(spec.params),
                     dict(spec.inputs), dict(spec.graphs), features)


def lower(spec: CheckedSpec) -> Graph:
    """attend(logits | weight, mask?, v) {normalize, eps, masked, approx?, pool?, sink?, steps?, lam?}.

    approx: a declared approximation computes the node (favor: kernelized by a pass, see kernelize_favor);
    pool: ContextPool replaces k and/or v before the attention; sink: the softmax's logit per query row
    (an expression of b, h, i) in every denominator; steps, lam: the ISTA solver's."""
    graph = Graph(spec.name, signature_of(spec))
    build = ExprBuilder(graph)
    operands = [build.add(pair_scores(spec))]
    if spec.mask is not None:
        operands.append(build.add(spec.mask))
    operands.append(build.leaves["v"])
    extra = {}
    if spec.approx is not None:
        extra["approx"] = spec.approx
    if spec.pool is not None:
        extra["pool"] = spec.pool
    if spec.sink is not None:
        extra["sink"] = spec.sink
    if spec.ista is not None:
        extra.update(steps=spec.ista.steps, lam=spec.ista.lam)
    attend = graph.add("attend", operands, shape=(B, H, Nq, E), dtype=FLOAT, normalize=spec.normalize,
                       eps=spec.eps, masked=spec.mask is not None, **extra)
    graph.add("output", [attend], shape=(B, H, Nq, E), dtype=FLOAT)
    return graph


def size_symbols(signature: Signature) -> dict[str, sympy.Symbol]:
    """Sympy symbols of run-time sizes (positive) and declared sizes (non-negative integers)."""
    out = dict(SIZE_SYMBOLS)
    for name in signature.sizes:
        out[name] = sympy.Symbol(name, integer=True, nonnegative=True)
    return out
