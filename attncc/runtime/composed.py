"""What every composed module shares: its maps, its shared tables, and the calls.

A composed spec (`map` ... `output = ...`, attncc/frontend/compose.py) compiles to one compiled
attention per map, each with its own lowering, kernels and dispatch table, held as child modules
named after the maps, and a generated module (`<spec>.py`, attncc/emit/combine.py) whose
`combine(outs, ctx, device)` sums coefficient * map output. The top-level learned tables are
registered once, here; each map declares them SHARED and this module passes them to every call of
every map (`forward_with(..., tables)`), so state_dict has one entry per shared table, and its
gradient sums what every map and the coefficients contribute.
"""
from __future__ import annotations

import torch
from torch import nn

from ..lang.source import AttnccError, ShapeError, did_you_mean
from ..oracle.combine import dense_combination
from .backends import get_backend
from .compiled import RESERVED_ATTRIBUTES, reduce_by_recipe
from .context import init_table


class ComposedAttention(nn.Module):
    SPEC_NAME = "attention"
    SPEC_HASH = ""
    OUTPUT = ""  # the output as written (canonical text)
    MAP_NAMES: tuple = ()
    # attached by attncc.compile: map name -> its compiled class (a CompiledAttention), the shared
    # tables' names, and the union of the maps' sizes, needs and inputs (what a caller must pass)
    MAPS: dict = {}
    SHARED: tuple = ()
    PARAMS: dict = {}
    SIZES: dict = {}
    NEEDS: tuple = ()
    INPUTS: dict = {}
    GRAPHS: dict = {}
    APPROX = None  # each map's own approximation, if any, lives in its class
    LOWERING = ""  # each map's, as text (`soft: sdpa, lin: linear_chunked`)
    TRITON_LOWERING = ""
    checked = None  # the ComposedSpec
    compilation = None
    memory_budget: int | None = None
    REBUILD: tuple | None = None
    # the generated module's class defines `combine(outs, ctx, device)` (attncc/emit/combine.py)

    def __init__(self, backend: str = "auto", check_bounds: bool = False, **sizes):
        super().__init__()
        if not self.MAPS:
            raise AttnccError(f"{self.SPEC_NAME}: a composed attention's class is made by attncc.compile, which "
                              "attaches its maps; compile the spec rather than importing its generated module")
        if backend != "auto":
            get_backend(backend)
        known = set(self.SIZES) | set(self.NEEDS)
        unknown = sorted(set(sizes) - known)
        if unknown:
            hint = did_you_mean(unknown[0], known)
            raise AttnccError(f"{self.SPEC_NAME}: unknown size `{unknown[0]}`" + (f"; {hint}" if hint else ""))
        missing = [n for n in self.NEEDS if n not in sizes]
        if missing:
            raise AttnccError(f"{self.SPEC_NAME}: its tables are sized by {', '.join(missing)}; pass "
                              + ", ".join(f"{n}=..." for n in missing) + " to the constructor")
        for name in self.MAP_NAMES:
            cls = self.MAPS[name]
            own = {n: v for n, v in sizes.items() if n in cls.SIZES or n in cls.NEEDS}
            self.add_module(name, cls(backend=backend, check_bounds=check_bounds, **own))
        first = self.map_modules()[0]
        for name in self.SHARED:  # one table, shaped and initialised as every map declares it
            spec = self.PARAMS[name]
            shape = tuple(int(d) for d in spec.shape({**first.sizes, **first.fixed}))
            self.register_parameter(name, nn.Parameter(init_table(shape, spec.init, spec.args)))
        self.backend = backend

    # ------------------------------------------------------------------ the maps
    def map_modules(self) -> list:
        """The compiled attention of each map, in the order of the spec."""
        return [getattr(self, name) for name in self.MAP_NAMES]

    @property
    def backend(self) -> str:
        return self.__dict__.get("_backend", "auto")

    @backend.setter
    def backend(self, value: str) -> None:
        """Every map runs on the backend of the composed module."""
        self.__dict__["_backend"] = value
        for m in self.map_modules():
            m.backend = value

    @property
    def sizes(self) -> dict:
        """The declared sizes of every map (the top-level ones are the same in each)."""
        return {n: v for m in self.map_modules() for n, v in m.sizes.items()}

    @property
    def fixed(self) -> dict:
        """The run-time sizes the tables are built for (H, D, E, Hkv: see CompiledAttention)."""
        return {n: v for m in self.map_modules() for n, v in m.fixed.items()}

    @property
    def last_backend(self) -> str | None:
        """The backend the last call ran on (every map runs on the same)."""
        return self.map_modules()[0].last_backend

    def tables(self) -> dict:
        """The shared learned tables, by name."""
        return {name: getattr(self, name) for name in self.SHARED}

    def routed(self, inputs: dict) -> list[tuple]:
        """(map module, the inputs it declares) for each map: a map's own input goes to that map only."""
        unknown = sorted(set(inputs) - set(self.INPUTS))
        if unknown:
            hint = did_you_mean(unknown[0], self.INPUTS)
            raise ShapeError(f"{self.SPEC_NAME}: unexpected input `{unknown[0]}`" + (f"; {hint}" if hint else ""))
        return [(m, {n: t for n, t in inputs.items() if n in m.INPUTS}) for m in self.map_modules()]

    def lowering_at(self, N: int) -> dict:
        """The lowering each map runs for a call with N key tokens."""
        return {name: m.lowering_at(N) for name, m in zip(self.MAP_NAMES, self.map_modules())}

    # ------------------------------------------------------------------ calling
    def forward(self, q, k, v, **inputs):
        tables, routed = self.tables(), self.routed(inputs)
        outs = {name: m.forward_with(q, k, v, own, tables) for name, (m, own) in zip(self.MAP_NAMES, routed)}
        ctx = routed[0][0].call_context(q, k, v, routed[0][1], tables)
        first = outs[self.MAP_NAMES[0]]
        return self.combine(outs, ctx, first.device).to(first.dtype)

    def reference(self, q, k, v, **inputs) -> torch.Tensor:
        """The dense float64 meaning: the output's combination of each map's dense reference."""
        return self._dense(q, k, v, inputs, target=False)

    def target(self, q, k, v, **inputs) -> torch.Tensor:
        """The same combination of each map's exact target (its reference, for a map without `approx`)."""
        return self._dense(q, k, v, inputs, target=True)

    def _dense(self, q, k, v, inputs: dict, target: bool) -> torch.Tensor:
        tables, routed = self.tables(), self.routed(inputs)
        outs = {name: m.reference_with(q, k, v, own, tables, target=target)
                for name, (m, own) in zip(self.MAP_NAMES, routed)}
        ctx = routed[0][0].call_context(q.double(), k.double(), v.double(), routed[0][1], tables)
        rsizes = {"N": ctx.N, "Nq": ctx.Nq, "H": ctx.H, "D": ctx.D, "E": ctx.E}
        return dense_combination(self.checked.coefficients, outs, ctx.sizes, rsizes, ctx.params, ctx.inputs)

    def tap(self, q, k, v, rows=None, **inputs) -> torch.Tensor:
        """The attention matrix of the composition, P = sum over maps of c_m P_m (the coefficients
        do not depend on the key j, so out = P v): for differential attention, P_1 - lambda P_2. Dense
        [B, H, Nq, N] (or len(rows) query rows), differentiable, in q's dtype; see CompiledAttention.tap."""
        tables, routed = self.tables(), self.routed(inputs)
        taps = {name: m.tap_with(q, k, v, own, tables, rows) for name, (m, own) in zip(self.MAP_NAMES, routed)}
        ctx = routed[0][0].call_context(q, k, v, routed[0][1], tables)
        rsizes = {"N": ctx.N, "Nq": ctx.Nq, "H": ctx.H, "D": ctx.D, "E": ctx.E}
        return dense_combination(self.checked.coefficients, taps, ctx.sizes, rsizes, ctx.params, ctx.inputs,
                                 rows).to(q.dtype)

    def clamped_lookups(self, q, k, v, **inputs) -> list[str]:
        """Where each map's table lookups clamp an index on this call (see CompiledAttention)."""
        tables = self.tables()
        return [f"map `{name}`: {line}" for name, (m, own) in zip(self.MAP_NAMES, self.routed(inputs))
                for line in m.clamped_with(q, k, v, own, tables)]

    def __reduce__(self):
        """Pickling: the recipe of the class (attncc.api.compile_recipe) and the instance's state."""
        return reduce_by_recipe(self)

    def extra_repr(self) -> str:
        return f"spec={self.SPEC_NAME}, output={self.OUTPUT}, backend={self.backend}"


# Names a map or a shared table of a composed spec may not take: they are attributes of this module.
COMPOSED_ATTRIBUTES = RESERVED_ATTRIBUTES | frozenset(dir(ComposedAttention)) | {"_backend"}

__all__ = ["ComposedAttention", "COMPOSED_ATTRIBUTES"]
