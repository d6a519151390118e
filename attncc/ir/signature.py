"""The interface of the module a graph compiles to: what it is called with and what it holds.

The graph's nodes say what is computed; `Signature` says with what: declared sizes (folded, and those
derived from others, recomputed when a size is overridden), the size expressions that must stay
non-zero, learned tables (shape, initializer), call-time inputs (dims, dtype), the graph kernels
computed from an adjacency input, and the declared feature maps (a random map owns a projection
buffer). Passes' sampled cross-checks draw their tables and inputs from it; emitters write the
module class from it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..lang.expr import TExpr
from ..lang.operators import fmt


@dataclass(frozen=True)
class Signature:
    name: str
    sizes: dict[str, int] = field(default_factory=dict)  # declared sizes, folded to numbers
    derived: dict[str, TExpr] = field(default_factory=dict)  # sizes defined from other sizes
    divisors: tuple[TExpr, ...] = ()  # size expressions a division by which must stay defined
    params: dict[str, Any] = field(default_factory=dict)  # name -> ParamInfo(shape, init, init_args)
    inputs: dict[str, Any] = field(default_factory=dict)  # name -> InputInfo(dims, dtype)
    graphs: dict[str, Any] = field(default_factory=dict)  # name -> GraphInfo(kind, adjacency, options)
    features: dict[str, Any] = field(default_factory=dict)  # name -> FeatureInfo(fn, options, random)

    @property
    def random_features(self) -> list:
        """The declared random-feature maps: each has a seeded projection buffer in the module."""
        return [phi for phi in self.features.values() if phi.random]

    @property
    def call_inputs(self) -> list:
        """Inputs passed at call time (a graph kernel is computed from its adjacency input instead)."""
        return [i for i in self.inputs.values() if i.name not in self.graphs]

    def describe(self) -> list[str]:
        """One line per entry, for print_graph (sizes always, the rest when present)."""
        lines = [f"sizes: {self.sizes}"]
        lines += [f"derived {n} = {fmt(t)}" for n, t in self.derived.items()]
        lines += [f"divisor {fmt(t)}" for t in self.divisors]
        lines += [f"param {p.name}[{', '.join(fmt(d) for d in p.shape)}] = {p.init}{_args(p.init_args)}"
                  for p in self.params.values()]
        lines += [f"input {i.name}[{', '.join(fmt(d) for d in i.dims)}] : {i.dtype}" for i in self.call_inputs]
        lines += [f"graph {g.describe()}" for g in self.graphs.values()]
        lines += [f"feature {phi.name} = {phi.fn}{_args(phi.kwargs)}" for phi in self.random_features]
        return lines


def _args(pairs) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in pairs) + ")"
