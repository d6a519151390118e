"""The IR: a networkx MultiDiGraph of tensor operations with sympy shapes.

Node ids are small ints given in creation order (so printing is deterministic). Each node carries a
frozen `Node` payload; edge `key` is the operand position. Elementwise index expressions live in the
graph as ordinary nodes; `expr_of` reads a subgraph back as a typed expression for analyses/emitters.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterable

import networkx as nx
import sympy

from ..lang.expr import BOOL, FLOAT, INT, VEC, TExpr
from ..lang.operators import OPERATORS
from ..lang.source import NO_SPAN, Span
from .signature import Signature

B, H, Nq, N, D, E = sympy.symbols("B H Nq N D E", integer=True, positive=True)
SIZE_SYMBOLS = {"B": B, "H": H, "Nq": Nq, "N": N, "D": D, "E": E}

ELEMENTWISE = {*OPERATORS, "call", "param", "input"}
LEAVES = {"q", "k", "v", "const", "var", "size", "rsize", "scale"}
ROW_OPS = {"rowin", "slice"}  # rows of inputs and their slices (attncc/lang/rows.py); rows are dtype vec
TENSOR_OPS = {"feature", "pairdot", "attend", "linear_attend", "gated_attend", "toeplitz_attend", "grid_attend",
              "graph_attend", "mixed_attend", "ista_attend", "output"}


@dataclass(frozen=True)
class Node:
    op: str
    shape: tuple[Any, ...]  # sympy expressions; () for scalars
    dtype: str  # int | float | bool | vec
    attrs: tuple[tuple[str, Any], ...] = ()
    span: Span = field(default=NO_SPAN, compare=False)

    def attr(self, name: str, default=None):
        return dict(self.attrs).get(name, default)


def broadcast(*shapes: tuple) -> tuple:
    """Right-aligned broadcast of symbolic shapes (1 broadcasts against anything)."""
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for axis in range(rank):
        dims = {s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise ValueError(f"shapes {shapes} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


class Graph:
    """A thin wrapper giving the MultiDiGraph ordered operands, users and rewriting helpers."""

    def __init__(self, name: str, signature: Signature | None = None):
        self.name = name
        self.g = nx.MultiDiGraph()
        self._next = 0
        self.output: int | None = None
        self.signature = signature if signature is not None else Signature(name)

    def add(self, op: str, operands: Iterable[int] = (), *, shape=(), dtype=FLOAT, span=NO_SPAN, **attrs) -> int:
        nid = self._next
        self._next += 1
        self.g.add_node(nid, node=Node(op, tuple(shape), dtype, tuple(sorted(attrs.items())), span))
        for pos, src in enumerate(operands):
            self.g.add_edge(src, nid, key=pos)
        if op == "output":
            self.output = nid
        return nid

    def copy(self) -> "Graph":
        """An independent graph with the same nodes (payloads are immutable, so they are shared)."""
        other = Graph(self.name, self.signature)
        other.g = self.g.copy()
        other._next, other.output = self._next, self.output
        return other

    def node(self, nid: int) -> Node:
        return self.g.nodes[nid]["node"]

    def set_node(self, nid: int, node: Node) -> None:
        self.g.nodes[nid]["node"] = node

    def set_attrs(self, nid: int, **attrs) -> None:
        node = self.node(nid)
        merged = {**dict(node.attrs), **attrs}
        self.set_node(nid, replace(node, attrs=tuple(sorted(merged.items()))))

    def operands(self, nid: int) -> list[int]:
        edges = sorted(self.g.in_edges(nid, keys=True), key=lambda e: e[2])
        return [src for src, _, _ in edges]

    def users(self, nid: int) -> list[int]:
        return sorted({dst for _, dst in self.g.out_edges(nid)})

    def replace_uses(self, old: int, new: int) -> None:
        for _, dst, key in list(self.g.out_edges(old, keys=True)):
            self.g.remove_edge(old, dst, key)
            self.g.add_edge(new, dst, key=key)
        if self.output == old:
            self.output = new

    def remove_dead(self) -> None:
        """Drop every node the output does not depend on."""
        live = nx.ancestors(self.g, self.output) | {self.output}
        self.g.remove_nodes_from([n for n in list(self.g.nodes) if n not in live])

    def order(self) -> list[int]:
        return list(nx.lexicographical_topological_sort(self.g))

    def find(self, op: str) -> list[int]:
        return [n for n in self.order() if self.node(n).op == op]


# Attributes of an attention node that every rewrite into another form keeps.
CARRIED_ATTRS = ("normalize", "eps", "mask_structure", "pool", "tensor_powers", "sink", "prepared_rows", "row_gate")
OPTIONAL_ATTRS = ("pool", "tensor_powers", "sink", "prepared_rows", "row_gate")  # carried only where present


def carried_attrs(node: Node) -> dict[str, Any]:
    """The attributes of an attention node that its rewrites keep (the optional ones only where present)."""
    return {name: node.attr(name) for name in CARRIED_ATTRS
            if name not in OPTIONAL_ATTRS or node.attr(name) is not None}


def attention_of(graph: Graph) -> int:
    """The attention node: the output's operand."""
    (out,) = graph.operands(graph.output)
    return out


def attention_node(graph: Graph) -> Node:
    """The attention node's payload (its op and attributes: normalize, eps, approx, pool, ...)."""
    return graph.node(attention_of(graph))


def expr_of(graph: Graph, nid: int) -> TExpr:
    """Read the elementwise subgraph rooted at nid back as a typed expression (without recursion:
    expressions may be as deep as a spec is long)."""
    exprs: dict[int, TExpr] = {}
    operands: dict[int, list[int]] = {}  # each node's operands, read from the graph once
    stack = [nid]
    while stack:
        top = stack[-1]
        if top in exprs:  # reached again through another user before its first visit ended
            stack.pop()
            continue
        if top not in operands:
            operands[top] = graph.operands(top)
        ops = operands[top]
        pending = [a for a in ops if a not in exprs]
        if pending:
            stack.extend(reversed(pending))
            continue
        stack.pop()
        exprs[top] = _expr_node(graph.node(top), tuple(exprs[a] for a in ops))
    return exprs[nid]


def _expr_node(node: Node, args: tuple[TExpr, ...]) -> TExpr:
    if node.op in ("q", "k"):
        return TExpr("qrow" if node.op == "q" else "krow", (), node.op, VEC)
    if node.op == "pairdot":
        return TExpr("dot", args, None, FLOAT, node.span)
    if node.op == "feature":
        return TExpr("feature", args, node.attr("map"), VEC, node.span)
    if node.op == "const":
        return TExpr("const", (), node.attr("value"), node.dtype, node.span)
    return TExpr(node.op, args, node.attr("value"), node.dtype, node.span)


def verify(graph: Graph) -> None:
    """Structural invariants every pass must keep; raises AssertionError naming the bad node."""
    g = graph.g
    assert nx.is_directed_acyclic_graph(g), "IR has a cycle"
    assert graph.output is not None and graph.output in g, "IR has no output"
    for nid in g.nodes:
        node = graph.node(nid)
        assert node.op in ELEMENTWISE | LEAVES | TENSOR_OPS | ROW_OPS, f"%{nid}: unknown op {node.op}"
        keys = sorted(k for _, _, k in g.in_edges(nid, keys=True))
        assert keys == list(range(len(keys))), f"%{nid} {node.op}: operand positions {keys}"
        ops = graph.operands(nid)
        if node.op in OPERATORS and OPERATORS[node.op].form == "binary":
            assert len(ops) == 2, f"%{nid} {node.op} needs 2 operands"
        if node.op in ELEMENTWISE and node.op not in ("param", "input") and node.dtype != VEC:
            shapes = [graph.node(o).shape for o in ops]
            try:
                want = broadcast(*shapes)
            except ValueError as exc:
                raise AssertionError(f"%{nid} {node.op}: {exc}") from None
            assert tuple(node.shape) == want, f"%{nid} {node.op}: shape {node.shape} != broadcast {want}"
        if node.op == "attend":
            assert graph.node(ops[-1]).op == "v", f"%{nid} attend: last operand must be v"
        if node.op in LEAVES:
            assert not ops, f"%{nid} {node.op} is a leaf but has operands"
        assert node.dtype in (INT, FLOAT, BOOL, VEC), f"%{nid}: dtype {node.dtype}"


def _fmt_attr(value) -> str:
    if hasattr(value, "describe"):  # analysis results (Structure)
        return value.describe()
    if isinstance(value, TExpr):
        from ..lang.operators import fmt
        return fmt(value)
    return str(value)


def print_graph(graph: Graph) -> str:
    """One line a node: `%id = op(operands) {attrs} : dtype[shape]`, in topological order."""
    lines = [f"graph {graph.name}"]
    lines += [f"  # {line}" for line in graph.signature.describe()]
    for nid in graph.order():
        node = graph.node(nid)
        ops = ", ".join(f"%{o}" for o in graph.operands(nid))
        attrs = ", ".join(f"{k}={_fmt_attr(v)}" for k, v in node.attrs)
        shape = ", ".join(str(s) for s in node.shape)
        lines.append(f"  %{nid} = {node.op}({ops})" + (f" {{{attrs}}}" if attrs else "")
                     + f" : {node.dtype}[{shape}]")
    lines.append(f"  return %{graph.output}")
    return "\n".join(lines)


def to_dot(graph: Graph) -> str:
    """Graphviz text of the IR, built with pydot (render with `dot -Tpng`)."""
    view = nx.MultiDiGraph(name=graph.name)
    for nid in graph.order():
        node = graph.node(nid)
        label = node.op + "".join(f"\\n{k}={_fmt_attr(v)}" for k, v in node.attrs)
        label += "\\n" + node.dtype + "[" + ", ".join(map(str, node.shape)) + "]"
        view.add_node(f"n{nid}", label=f'"{label}"', shape="box", fontname="monospace")
    for src, dst, key in sorted(graph.g.edges(keys=True)):
        view.add_edge(f"n{src}", f"n{dst}", key=key, label=str(key))
    return nx.nx_pydot.to_pydot(view).to_string()
