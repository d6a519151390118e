"""Assemble the generated Python modules: the main one (header, torch section, Triton entry, Module
class with its dispatch table) and, for each other lowering the dispatch table runs, a sibling
`<spec>_<lowering>.py` holding that lowering's torch section and Triton entry."""
from __future__ import annotations

import sympy

from ..ir.graph import D, Graph, attention_node
from ..lang.expr import TExpr
from ..plan.cost import size_code
from ..plan.select import Plan
from .exprs import TorchExpr, key, literal
from .let import LetScope
from .prepared import prepare_rows_method
from .writer import CodeWriter


class _ShapeExpr(TorchExpr):
    """Table shapes are functions of a dict `s` of sizes (declared and H, D, E, N, Nq)."""

    def node(self, t: TExpr, args: list[str]) -> str:
        if t.op in ("size", "rsize"):
            return f"s[{key(t.value)}]"
        if t.op == "const":
            return literal(t)
        return super().node(t, args)


def header(graph: Graph, plan: Plan, spec_hash: str, version: str) -> str:
    flops, nbytes = plan.chosen.at(plan.sizes)
    sizes = ", ".join(f"{k}={v}" for k, v in plan.sizes.items())
    return f'''"""attncc generated module (attncc {version}); do not edit, regenerate from the spec.

spec:      {graph.name}
hash:      {spec_hash}
lowering:  {plan.lowering}: {plan.chosen.note}
cost:      {flops:.3e} flops, {nbytes:.3e} bytes at {sizes}
dispatch:  {dispatch_line(plan)}
mask:      {plan.mask.describe()}
glossary:  q [B, H, Nq, D], k [B, Hkv, N, D], v [B, Hkv, N, E] (Hkv dividing H: grouped-query attention);
           i query token, j key token, h head, hk = h // ctx.group its key/value head;
           ctx.sizes declared sizes, ctx.params learned tables, ctx.inputs call-time inputs,
           ctx.N / ctx.Nq / ctx.H / ctx.Hkv / ctx.D / ctx.E run-time sizes, ctx.scale = D ** -0.5.
"""
import math
import sys

import torch

from attncc import rt
from attncc.rt import approx as ax
from attncc.runtime.compiled import CompiledAttention, InputSpec, ParamSpec, import_sibling
'''


class _ShapeFunctions:
    """Shapes, derived sizes and divisors as functions of the sizes `s`: a lambda when the expressions
    print shallowly, else a function before the class whose let-bound temporaries keep every line
    shallow (a 500-term shape would nest past what Python parses)."""

    def __init__(self):
        self.helpers = CodeWriter()

    def __call__(self, label: str, exprs: list[TExpr], tuple_of: bool) -> str:
        """A function of `s` computing exprs (a tuple of them, or the one); `label` names a helper."""
        body = CodeWriter()
        body.level = 1
        scope = LetScope(_ShapeExpr())
        scope.bind(body, exprs)
        code = "".join(f"{scope(t)}, " for t in exprs) if tuple_of else scope(exprs[0])
        code = f"({code})" if tuple_of else code
        if not body.lines:
            return f"lambda s: {code}"
        name = f"_sizes_{label}"
        self.helpers.line(f"def {name}(s):")
        self.helpers.lines.extend(body.lines)
        self.helpers.line(f"    return {code}")
        self.helpers.line()
        self.helpers.line()
        return name


def dispatch_line(plan: Plan) -> str:
    return "; ".join(f"{name} {'beyond' if upto is None else 'up to N = ' + str(upto)}" if len(plan.dispatch) > 1
                     else f"{name} at every length" for name, upto in plan.dispatch)


def alternate_header(graph: Graph, plan: Plan, spec_hash: str, version: str, triton_lowering: str) -> str:
    """A sibling module's docstring and imports: one more lowering of the main module's dispatch table."""
    c = plan.chosen
    return f'''"""attncc generated module (attncc {version}) of spec {graph.name} ({spec_hash}): its `{plan.lowering}`
lowering, which {graph.name}.py runs for the key lengths its DISPATCH table gives this lowering
({dispatch_line(plan)}). Do not edit, regenerate from the spec.

lowering:  {plan.lowering}: {c.note}
triton:    {triton_lowering}
"""
import math
import sys

import torch

from attncc import rt
from attncc.rt import approx as ax
from attncc.runtime.compiled import import_sibling
'''


def memory_table(w: CodeWriter, plan: Plan, fixed: dict) -> None:
    """MEMORY: each dispatched lowering's (working, kept for the backward) fp32 bytes as a function of
    the call's sizes `s` (the cost model's estimate, checked before a torch call runs)."""
    w.line("# bytes a torch call allocates beyond q, k, v (fp32; float64 doubles it): (working, kept for the")
    w.line("# backward when autograd records), by lowering; checked against the memory budget before the call")
    with w.block("MEMORY = {"):
        for name in plan.lowerings:
            c = plan.candidate(name)
            working, saved = (sympy.sympify(e).subs(fixed) for e in (c.working, c.saved or 0))
            w.line(f"{key(name)}: lambda s: ({size_code(working)}, {size_code(saved)}),")
    w.line("}")


def module_class(graph: Graph, plan: Plan, spec_hash: str, triton_lowering: str) -> str:
    w = CodeWriter()
    shapes = _ShapeFunctions()
    sig, att = graph.signature, attention_node(graph)
    needs = {e.value for p in sig.params.values() for d in p.shape for e in d.walk() if e.op == "rsize"}
    randoms = sig.random_features
    needs = sorted(needs | ({"D"} if randoms else set()))  # a projection is [features, D]
    with w.block("class Module(CompiledAttention):"):
        w.line(f'"""{graph.name}: compiled attention (lowering: {plan.lowering})."""')
        w.line()
        w.line(f"SPEC_NAME = {key(graph.name)}")
        w.line(f"SPEC_HASH = {spec_hash!r}")
        w.line(f"LOWERING = {plan.lowering!r}  # at the design sizes")
        w.line(f"TRITON_LOWERING = {triton_lowering!r}")
        w.line("# the lowering a call runs, by its key length N: the first entry whose bound N is within")
        w.line(f"# (None: every longer); others than {plan.lowering} live in {graph.name}_<lowering>.py beside this file")
        entries = [f"({key(name)}, {upto})" for name, upto in plan.dispatch]
        w.line(f"DISPATCH = ({', '.join(entries)}{',' if len(entries) == 1 else ''})")
        w.line("SIZES = {" + ", ".join(f"{key(n)}: {int(v)}" for n, v in sig.sizes.items()) + "}")
        w.line("DERIVED = {" + ", ".join(f"{key(n)}: {shapes(f'size_{n}', [t], False)}"
                                        for n, t in sig.derived.items()) + "}")
        w.line("DIVISORS = (" + "".join(f"{shapes(f'divisor_{n}', [t], False)}, "
                                        for n, t in enumerate(sig.divisors)) + ")")
        w.line(f"NEEDS = ({''.join(f'{key(n)}, ' for n in needs)})")
        w.line("GRAPHS = {" + ", ".join(f"{key(g.name)}: ({key(g.kind)}, {key(g.adjacency)}, {g.options!r})"
                                        for g in sig.graphs.values()) + "}")
        approx = att.attr("approx")  # favor is kernelized by then: no approximation computes the node
        w.line(f"APPROX = {(approx.method, approx.options)!r}" if approx else "APPROX = None")
        w.line("RANDOM_FEATURES = {" + ", ".join(f"{key(phi.name)}: ({key(phi.fn)}, {phi.options!r})"
                                                 for phi in randoms) + "}")
        with w.block("PARAMS = {"):
            for p in sig.params.values():
                args = "{" + ", ".join(f"{key(k)}: {literal_number(v)}" for k, v in p.init_args) + "}"
                w.line(f"{key(p.name)}: ParamSpec({shapes(f'table_{p.name}', list(p.shape), True)}, {p.init!r}, {args}),")
        w.line("}")
        with w.block("INPUTS = {"):
            for i in sig.call_inputs:
                w.line(f"{key(i.name)}: InputSpec({shapes(f'input_{i.name}', list(i.dims), True)}, {i.dtype!r}),")
        w.line("}")
        memory_table(w, plan, {D: randoms[0].out_dim} if randoms else {})  # kernels see rows of m features
        w.line()
        if att.attr("prepared_rows") is not None:
            prepare_rows_method(w, att.attr("prepared_rows"), sig.inputs, graph.name)
        if att.attr("tensor_powers") is not None:
            tensor_power_terms(w, att.attr("tensor_powers"))
        if att.attr("pool") is not None:
            w.line("POOL = True")
            w.line("pool_kv = pool_kv")
    return (shapes.helpers.text() if shapes.helpers.lines else "") + w.text()


def tensor_power_terms(w: CodeWriter, terms) -> None:
    """The polynomial kernel's coefficients (passes/polynomial.py), read by CompiledAttention.prepared."""
    w.line("TENSOR_POWERS = True")
    with w.block("def tensor_power_terms(self, ctx):"):
        w.line('"""((n, c_n), ...): the weight is sum_n c_n dot(q, k)^n, computed as T_c(q) . T(k)."""')
        printer = TorchExpr()
        w.line("return (" + "".join(f"({n}, {printer(c)}), " for n, c in terms) + ")")
    w.line()


def triton_entry(stem: str) -> str:
    """A module's Triton entry: the kernels file beside it (`<stem>_triton.py`, stem the module file's
    name) is imported on first use only."""
    return (f"def forward_triton(self, q, k, v, ctx):\n"
            f"    \"\"\"Triton kernels: {stem}_triton.py beside this file, imported on the first call.\"\"\"\n"
            f"    return import_sibling(__file__, \"_triton\").forward_triton(self, q, k, v, ctx, sys.modules[__name__])\n")


def literal_number(v) -> str:
    return literal(TExpr("const", (), v, "bool" if isinstance(v, bool) else "int" if isinstance(v, int) else "float"))
