"""What every compiled module shares: parameters, backend choice, loading (the checks of its sizes and
of each call's tensors and inputs, and the call's Context: attncc/runtime/context.py).

A generated module file defines `class Module(CompiledAttention)` with its tables (SIZES, PARAMS,
INPUTS, DISPATCH, MEMORY) beside its lowering's `forward_torch` / `forward_triton`; the other
lowerings its DISPATCH table runs live in sibling files (`<spec>_<lowering>.py`). This base class
does everything else: it picks each call's lowering by the key length, checks the call's memory
against the budget (attncc.runtime.memory), and runs that lowering's forward.
"""
from __future__ import annotations

import inspect
import math
import pickle
import sys
from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

from ..analysis.blocks import TileLists, split_tiles
from ..lang.source import AttnccError, ShapeError
from ..lang.features import draw_projection, random_features, tensor_power_features
from ..lang.graph_kernels import dense_kernel
from ..frontend.approx import RANDOM
from ..lang.approx_math import lara_noise, ra_noise
from ..plan import registry
from .backends import auto_description, backends_to_prepare, get_backend, resolve
from .cache import import_sibling  # generated modules import it from here
from .context import (  # InputSpec, ParamSpec: generated modules import them from here
    Context, InputSpec, ParamSpec, call_context, checked_sizes, init_table, sizes_text)
from .memory import check_fits, element_factor

LAYOUT_CACHE = 16  # block-sparse layouts kept per module (one per length and sizes)
MAX_TILE = 128  # largest Triton tile edge for block-sparse kernels




class CompiledAttention(nn.Module):
    SPEC_NAME = "attention"
    SPEC_HASH = ""
    LOWERING = "tiled"
    SIZES: dict = {}
    DERIVED: dict = {}  # sizes declared from other sizes: recomputed after overrides
    DIVISORS: tuple = ()  # divisors made of sizes: must not become 0 through overrides
    PARAMS: dict = {}
    INPUTS: dict = {}
    NEEDS: tuple = ()
    GRAPHS: dict = {}  # name -> (kernel, adjacency input, options): inputs computed from inputs
    RANDOM_FEATURES: dict = {}  # name -> (map, options): projections held in the `random_features` buffers
    PREPARED_ROWS = False  # rows of inputs, slices or several dot terms: `prepare_rows` forms q', k' (passes/rows.py)
    TENSOR_POWERS = False  # a polynomial kernel: rows become tensor-power features (tensor_power_terms)
    POOL = False  # `pool k, v = ...`: the generated `pool_kv` replaces k, v before any backend (attncc/rt/pool.py)
    APPROX = None  # (method, options) of a declared approximation computed by its own algorithm (attncc/rt/approx.py)
    TRITON_LOWERING = ""
    DISPATCH: tuple = ()  # ((lowering, up to key length N or None), ...): the lowering of each call
    MEMORY: dict = {}  # lowering -> sizes -> (working, kept for the backward) fp32 bytes of a torch call
    memory_budget: int | None = None  # bytes a call may hold (attncc.runtime.memory); None: env / device
    checked = None  # the CheckedSpec, attached by attncc.compile (for .reference)
    # (function, recipe) that makes this class again in another process, attached by attncc.compile:
    # the class lives in a generated module that a fresh process does not have, so pickles carry
    # the spec text instead and the function (stored by name) recompiles it.
    REBUILD: tuple | None = None
    # learned tables this module reads but does not own: a composed spec's shared tables, registered
    # once on the composed module (attncc/runtime/composed.py), which passes them to each call (`tables`)
    SHARED: tuple = ()

    def __init__(self, backend: str = "auto", check_bounds: bool = False, **sizes):
        super().__init__()
        if backend != "auto":
            get_backend(backend)  # an unknown name fails here, not at the first call
        self.backend = backend
        self.check_bounds = check_bounds  # every call first checks that no table lookup clamps (dense: slow)
        self.last_backend: str | None = None
        self.last_lowering: str | None = None
        self._layouts: OrderedDict = OrderedDict()  # block-sparse layouts by lengths and sizes, LRU
        self.sizes, self.fixed, shapes = checked_sizes(type(self), sizes)
        check_fits(f"{self.SPEC_NAME}: learned " + ", ".join(f"table `{n}` {s}" for n, s in shapes.items()),
                   4 * sum(math.prod(s) for s in shapes.values()), torch.device("cpu"), self.memory_budget,
                   sizes_text({**self.sizes, **self.fixed}))
        for name, p in self.PARAMS.items():
            if name in self.SHARED:
                continue
            shape = shapes[name]
            try:
                table = init_table(shape, p.init, p.args)
            except RuntimeError as exc:  # e.g. out of memory for a huge size
                raise AttnccError(f"{self.SPEC_NAME}: cannot create table `{name}` of shape {shape}: {exc}") from None
            self.register_parameter(name, nn.Parameter(table))
        for name, _ in self.DISPATCH:  # imported now: torch.compile cannot trace an import (graph break)
            self.forward_module(name)
        for candidate in backends_to_prepare(backend):
            candidate.prepare(self)
        self.random_features = nn.Module()
        for name, (_, opts) in self.RANDOM_FEATURES.items():
            self.random_features.register_buffer(name, draw_projection(
                opts["features"], self.fixed["D"], opts["seed"], 0, bool(opts["orthogonal"])))
            self.random_features.register_buffer(f"{name}_draws", torch.zeros((), dtype=torch.int64))
        if self.APPROX and self.APPROX[0] in RANDOM:
            self.register_buffer("approx_draws", torch.zeros((), dtype=torch.int64))

    def triton_kernels(self, lowering: str | None = None):
        """The generated Triton kernels of a lowering of this module (LOWERING's by default): the
        `_triton` file beside its module file (imported once)."""
        return import_sibling(self.forward_module(lowering or self.LOWERING).__file__, "_triton")

    # ------------------------------------------------------------------ dispatch
    @classmethod
    def lowering_at(cls, N: int) -> str:
        """The lowering a call with N key tokens runs (DISPATCH: fixed at compile time)."""
        return next((name for name, upto in cls.DISPATCH if upto is None or N <= upto), cls.LOWERING)

    @classmethod
    def forward_module(cls, lowering: str):
        """The generated module holding a lowering's forward_torch / forward_triton: this class's own
        module for LOWERING, the sibling `<spec>_<lowering>.py` for the other DISPATCH entries."""
        main = sys.modules[cls.__module__]
        return main if lowering == cls.LOWERING else import_sibling(main.__file__, f"_{lowering}")

    def forward_torch(self, q, k, v, ctx):
        """The torch forward of the call's lowering (ctx.lowering)."""
        return self.forward_module(ctx.lowering or self.LOWERING).forward_torch(self, q, k, v, ctx)

    def forward_triton(self, q, k, v, ctx):
        """The Triton forward of the call's lowering (ctx.lowering)."""
        return self.forward_module(ctx.lowering or self.LOWERING).forward_triton(self, q, k, v, ctx)

    def check_memory(self, q, k, v, ctx: Context) -> None:
        """Raise a located AttnccError, before any work, when the call's torch forward would hold more
        than the memory budget: MEMORY's estimate of its lowering at its sizes, with what autograd
        keeps when it records (a learned table or an input needs a gradient). Eager calls only: under
        torch.compile the check (host queries, Python arithmetic on sizes) would break the graph, and the
        compiled graph's first run is an eager-shaped call of the same sizes anyway."""
        estimate = self.MEMORY.get(ctx.lowering)
        if estimate is None or torch.compiler.is_compiling():
            return
        sizes = {**self.sizes, "B": q.shape[0], "N": ctx.N, "Nq": ctx.Nq, "H": ctx.H, "D": ctx.D, "E": ctx.E,
                 "Hkv": ctx.Hkv}
        working, saved = estimate(sizes)
        recording = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *ctx.params.values()))
        need = (working + (saved if recording else 0)) * element_factor(ctx.dtype)
        what = f"{self.SPEC_NAME}: lowering `{ctx.lowering}`" + (" (with autograd recording)" if recording else "")
        check_fits(what, need, q.device, self.memory_budget, sizes_text(sizes))

    # ------------------------------------------------------------------ random features
    def projections(self) -> dict:
        """The current random-feature projection [m, D] of each random map, by name."""
        return {name: getattr(self.random_features, name) for name in self.RANDOM_FEATURES}

    def redraw_features(self) -> None:
        """A fresh draw for every random map: draw t of seed s is the same on every device."""
        for name, (_, opts) in self.RANDOM_FEATURES.items():
            draws = getattr(self.random_features, f"{name}_draws")
            draws += 1
            w = draw_projection(opts["features"], self.fixed["D"], opts["seed"], int(draws), bool(opts["orthogonal"]))
            getattr(self.random_features, name).copy_(w)

    def featurize(self, q, k):
        """(phi(q), phi(k)) through the spec's random map (the spec allows exactly one); in training,
        maps declared with redraw=1 draw new features first (Performer's redraw per step)."""
        (name, (kind, opts)), = self.RANDOM_FEATURES.items()
        if self.training and opts["redraw"]:
            # wrapped at call time: torch.compiler.disable imports dynamo, which imports triton, and the
            # CLI must set TRITON_INTERPRET before triton is first imported
            torch.compiler.disable(self.redraw_features, reason="a seeded CPU generator draws the features: "
                                   "compile with fullgraph=False, or redraw=0")()
        w = getattr(self.random_features, name)
        return random_features(kind, q, w).to(q.dtype), random_features(kind, k, w).to(k.dtype)

    def approx_noise(self, q, k, advance: bool):
        """The random draw of a sampling approximation for this call (None for the others): RA samples
        in every mode; LARA samples around its proposal means in training and uses the means in eval.
        `advance` (a forward call in training with redraw=1) moves to the next draw first."""
        if not self.APPROX or self.APPROX[0] not in RANDOM:
            return None
        method, opts = self.APPROX
        if advance and self.training and opts["redraw"]:
            self.approx_draws += 1
        draw = int(self.approx_draws)
        if method == "ra":
            return ra_noise(q, k, samples=opts["samples"], seed=opts["seed"], draw=draw)
        return lara_noise(q, k, landmarks=opts["landmarks"], seed=opts["seed"], draw=draw) if self.training else None

    # ------------------------------------------------------------------ calling
    def params_dict(self) -> dict:
        """The learned tables this module owns, by name (SHARED ones are passed to each call)."""
        return {name: getattr(self, name) for name in self.PARAMS if name not in self.SHARED}

    def call_context(self, q, k, v, inputs: dict, tables: dict | None = None) -> Context:
        """The checked Context of a call; `tables`: learned tables passed in (SHARED), beside the own."""
        return call_context(self.SPEC_NAME, q, k, v, inputs, declared=self.INPUTS, sizes=self.sizes, fixed=self.fixed,
                            params={**self.params_dict(), **(tables or {})})
    def resolve_backend(self, q: torch.Tensor) -> str:
        """The name of the backend a call with q runs on (attncc/runtime/backends.py)."""
        return resolve(self.backend, q).name

    def forward(self, q, k, v, **inputs):
        return self.forward_with(q, k, v, inputs)

    def forward_with(self, q, k, v, inputs: dict, tables: dict | None = None):
        """forward(q, k, v, **inputs) with the learned tables `tables` passed in (SHARED ones)."""
        ctx = self.call_context(q, k, v, inputs, tables)
        if self.check_bounds:
            problems = self._clamped(ctx, q.shape[0])
            if problems:
                raise ShapeError(f"{self.SPEC_NAME}: {problems[0]} (check_bounds=True); clamp the index in the "
                                 "spec, e.g. `clamp(x, 0, n - 1)`, where reading the edge entry is meant")
        backend = resolve(self.backend, q)
        self.last_backend = backend.name
        ctx.lowering = self.last_lowering = self.lowering_at(ctx.N)
        if q.shape[2] == 0 or k.shape[2] == 0:  # nothing to attend with or to: zeros, in every backend
            return v.new_zeros(*q.shape[:3], v.shape[-1])
        if backend.checks_memory:
            self.check_memory(q, k, v, ctx)
        ctx.noise = self.approx_noise(q, k, advance=True)
        if not backend.raw_inputs:
            q, k, v = self.prepared(q, k, v, ctx)
        return backend.run(self, q, k, v, ctx)

    def prepared(self, q, k, v, ctx: Context):
        """What every lowering's forward reads: q, k as the spec's prepared rows, k, v pooled (ContextPool), graph kernels formed as
        tables where the lowering reads G[i, j], rows of q and k through their random features."""
        if self.PREPARED_ROWS:
            q, k = self.prepare_rows(q, k, ctx)
        if self.POOL:
            k, v = self.pool_kv(k, v, ctx)
        if registry.get(ctx.lowering or self.LOWERING).forms_graph_tables:
            ctx.inputs.update(self.graph_tables(ctx.inputs, ctx.dtype))
        if self.RANDOM_FEATURES:
            q, k = self.featurize(q, k)
        if self.TENSOR_POWERS:
            q, k = tensor_power_features(q, k, self.tensor_power_terms(ctx))
        return q, k, v

    def _cached(self, key: tuple, compute: Callable):
        """An LRU of LAYOUT_CACHE entries: decoding with a growing N must not keep every length."""
        if key in self._layouts:
            self._layouts.move_to_end(key)
        else:
            self._layouts[key] = compute()
            while len(self._layouts) > LAYOUT_CACHE:
                self._layouts.popitem(last=False)
        return self._layouts[key]

    def cached_layout(self, ctx: Context, block_layout: Callable, device) -> tuple[int, torch.Tensor]:
        """(b, bool layout over blocks of b tokens) for these lengths and sizes: computed once, then cached."""
        def compute():
            block, layout = block_layout(ctx)
            if block < 1:
                raise AttnccError(f"{self.SPEC_NAME}: block size must be >= 1, got {block}")
            return int(block), layout.to(device=device, dtype=torch.bool).contiguous()
        return self._cached(("blocks", ctx.Nq, ctx.N, tuple(sorted(self.sizes.items())), str(device)), compute)

    def cached_tiles(self, ctx: Context, block_layout: Callable, device, exact: bool = False,
                     max_tile: int | None = None) -> TileLists:
        """The layout's tiles for a kernel (analysis.blocks.split_tiles): square tiles of a power-of-two
        edge in [16, max_tile or MAX_TILE] aligned with the blocks, as CSR lists of full and partial key
        tiles per query tile; `exact`: the layout is the whole mask. Cached like the layout. A block size
        that is not a power of two visits every 64-tile, all partial."""
        edge = max_tile or MAX_TILE

        def compute():
            block, layout = self.cached_layout(ctx, block_layout, device)
            return split_tiles(block, layout, ctx.Nq, ctx.N, edge, exact)
        return self._cached(("tiles", exact, edge, ctx.Nq, ctx.N, tuple(sorted(self.sizes.items())), str(device)),
                            compute)

    def reference(self, q, k, v, **inputs) -> torch.Tensor:
        """The dense float64 meaning of the spec with this module's tables: for a declared
        approximation, its own formulas with this module's current random draw (see `target`)."""
        return self._dense_call(self.checked, q, k, v, inputs)

    def target(self, q, k, v, **inputs) -> torch.Tensor:
        """The exact attention a declared approximation approximates (softmax), dense float64; for a
        spec without `approx`, the same as `reference`."""
        return self._dense_call(self.checked.target or self.checked, q, k, v, inputs)

    def reference_with(self, q, k, v, inputs: dict, tables: dict | None = None, target: bool = False):
        """reference (or target) of a call with the learned tables `tables` passed in (SHARED ones)."""
        return self._dense_call(self.checked.target or self.checked if target else self.checked, q, k, v, inputs,
                                tables)

    def _dense_call(self, spec, q, k, v, inputs: dict, tables: dict | None = None) -> torch.Tensor:
        ctx = self.call_context(q, k, v, inputs, tables)
        if q.shape[2] == 0 or k.shape[2] == 0:
            return torch.zeros(*q.shape[:3], v.shape[-1], dtype=torch.float64, device=q.device)
        ctx.noise = self.approx_noise(q, k, advance=False)
        return self.dense(q, k, v, ctx, spec)

    def dense(self, q, k, v, ctx: Context, spec=None) -> torch.Tensor:
        from ..oracle.dense import dense_attention
        inputs = {**ctx.inputs, **self.graph_tables(ctx.inputs, torch.float64)}
        return dense_attention(spec or self.checked, q, k, v, ctx.params, inputs, self.sizes, self.projections(),
                               ctx.noise)

    def clamped_lookups(self, q, k, v, **inputs) -> list[str]:
        """Where this call's table lookups leave their tables (the language clamps such an index): one
        line per lookup index, with the first (b, h, i, j) at which it does; [] when none does. Dense
        over [B, H, Nq, N]: for checking, not for every call (see check_bounds)."""
        return self.clamped_with(q, k, v, inputs)

    def clamped_with(self, q, k, v, inputs: dict, tables: dict | None = None) -> list[str]:
        """clamped_lookups with the learned tables `tables` passed in (SHARED ones)."""
        return self._clamped(self.call_context(q, k, v, inputs, tables), q.shape[0])

    def _clamped(self, ctx: Context, batch: int) -> list[str]:
        from ..oracle.bounds import clamped_lookups
        inputs = {**ctx.inputs, **self.graph_tables(ctx.inputs, torch.float64)}
        with torch.no_grad():
            return clamped_lookups(self.checked, ctx.params, inputs, {**self.sizes, "D": ctx.D, "E": ctx.E, "Hkv": ctx.Hkv},
                                   (batch, ctx.H, ctx.Nq, ctx.N))

    def tap(self, q, k, v, rows=None, **inputs) -> torch.Tensor:
        """The attention probabilities P[b, h, i, j] of this call, with out = P v: softmax's
        probabilities, D^-1 (M o phi(Q) phi(K)^T) for `normalize rows`, W itself for `normalize none`,
        the matrix a declared approximation applies (MRA's, LARA's, RA's); random features and
        sampling approximations use the current draw, the one the last forward used.

        Dense: [B, H, Nq, N], or [B, H, len(rows), N] for `rows`, a 1-d sample of query indices.
        Differentiable in q, k and the learned tables; computed at the input's precision (float32
        for half inputs) and returned in q's dtype."""
        return self.tap_with(q, k, v, inputs, None, rows)

    def tap_with(self, q, k, v, inputs: dict, tables: dict | None = None, rows=None) -> torch.Tensor:
        """tap with the learned tables `tables` passed in (SHARED ones)."""
        from ..oracle.dense import dense_probabilities
        ctx = self.call_context(q, k, v, inputs, tables)
        if rows is not None:
            rows = torch.as_tensor(rows, device=q.device)
            if rows.dim() != 1 or rows.is_floating_point() or rows.dtype == torch.bool:
                raise ShapeError(f"{self.SPEC_NAME}: tap rows must be a 1-d tensor of query indices, got "
                                 f"{rows.dtype} of shape {tuple(rows.shape)}")
            if len(rows) and not (0 <= int(rows.min()) and int(rows.max()) < ctx.Nq):
                raise ShapeError(f"{self.SPEC_NAME}: tap rows must lie in [0, {ctx.Nq}), got "
                                 f"{int(rows.min())}..{int(rows.max())}")
        n_rows = ctx.Nq if rows is None else len(rows)
        if n_rows == 0 or ctx.N == 0:
            return q.new_zeros(q.shape[0], ctx.H, n_rows, ctx.N)
        if self.checked.ista is not None:
            raise AttnccError(f"{self.SPEC_NAME}: `normalize ista` has no attention matrix to tap: its output is "
                              "not P v (the solver is not linear in v)")
        inputs = {**ctx.inputs, **self.graph_tables(ctx.inputs, ctx.dtype)}
        probabilities = lambda keys: dense_probabilities(  # noqa: E731
            self.checked, q, keys, ctx.params, inputs, self.sizes, ctx.E, self.projections(),
            self.approx_noise(q, k, advance=False), rows, ctx.dtype)
        if self.checked.pool is not None:  # ContextPool: out = P (M v) = (P M) v
            from ..oracle.pool import tap_through_pool
            return tap_through_pool(self.checked.pool, k.to(ctx.dtype), ctx.params, probabilities).to(q.dtype)
        return probabilities(k).to(q.dtype)

    def graph_tables(self, inputs: dict, dtype: torch.dtype) -> dict:
        """Each graph kernel G of the spec formed densely from its adjacency input, by name."""
        return {name: dense_kernel(kind, inputs[adj].double(), opts).to(dtype)
                for name, (kind, adj, opts) in self.GRAPHS.items()}

    def __reduce__(self):
        """Pickling (torch.save, copy.deepcopy, multiprocessing spawn): see reduce_by_recipe."""
        return reduce_by_recipe(self)

    def extra_repr(self) -> str:
        chosen = auto_description() if self.backend == "auto" else self.backend
        sizes = ", ".join(f"{k}={v}" for k, v in {**self.sizes, **self.fixed}.items())
        last = f", last_run={self.last_backend}" if self.last_backend else ""
        lowering = self.LOWERING if len(self.DISPATCH) < 2 else "/".join(name for name, _ in self.DISPATCH) + " by N"
        return (f"spec={self.SPEC_NAME}, lowering={lowering}, backend={self.backend} ({chosen}){last}"
                + (f", {sizes}" if sizes else ""))


def reduce_by_recipe(module: nn.Module) -> tuple:
    """module.__reduce__ of a compiled (or composed) module: the recipe its class's REBUILD holds and
    the instance's state; unpickling recompiles the spec (checking its hash) and restores the state.
    Its class lives in a generated module that a fresh process does not have."""
    if type(module).REBUILD is None:
        raise pickle.PicklingError(f"{type(module).__qualname__}: only modules of classes made by "
                                   "attncc.compile can be pickled")
    rebuild, recipe = type(module).REBUILD
    return rebuild, (recipe,), module.__getstate__()


# Names a learned table may not take: it becomes an attribute of the module.
RESERVED_ATTRIBUTES = (frozenset(dir(CompiledAttention)) | frozenset(vars(nn.Module()))
                       | {"backend", "last_backend", "last_lowering", "sizes", "fixed", "compilation", "_layouts",
                          "random_features", "approx_draws"})


def keyword_names(*functions: Callable) -> frozenset[str]:
    """The parameters of `functions` that a caller can pass by keyword (not positional-only, not ** or *)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(p.name for fn in functions for p in inspect.signature(fn).parameters.values() if p.kind in kinds)


# Names a size or an input may not take: sizes are passed by keyword to the constructor, inputs to the
# calls, beside the parameters those already have (`self` included: nn.Module.__call__ binds it too).
RESERVED_KEYWORDS = keyword_names(CompiledAttention.__init__, CompiledAttention.forward, CompiledAttention.tap,
                                  CompiledAttention.reference, CompiledAttention.target)


__all__ = ["CompiledAttention", "Context", "ParamSpec", "InputSpec", "import_sibling", "reduce_by_recipe"]
