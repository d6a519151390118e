"""The Python surface: compile a spec to an nn.Module class, run the dense reference."""
from __future__ import annotations

import hashlib
import os
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from . import lowerings  # noqa: F401  (each module registers its lowering)
from .version import __version__
from .frontend.ast import Spec, format_spec
from .frontend.check import CheckedSpec, check
from .frontend.compose import ComposedSpec, check_composed, is_composed
from .emit.combine import composed_module
from .runtime.composed import COMPOSED_ATTRIBUTES
from .emit.module import alternate_header, header, module_class, triton_entry
from .emit.dispatch import emit_torch, emit_triton
from .emit.triton import triton_header
from .ir.graph import Graph
from .ir.signature import Signature
from .ir.lower import lower, size_symbols
from .frontend.parse import parse
from .passes import PassContext, run_pipeline
from .runtime.cache import analysis_path, load_analysis, load_module, store_analysis
from .runtime.compiled import RESERVED_ATTRIBUTES, RESERVED_KEYWORDS
from .runtime.memory import configured_budget, parse_budget
from .analysis.session import check_budget, default_budget
from .plan.select import DESIGN_SIZES, MACHINE, Plan, select
from .lang.source import AttnccError, Source


@dataclass
class Composition:
    """A composed spec compiled: one Compilation per map, and the module that combines them."""

    source: Source
    ast: Spec
    checked: ComposedSpec
    maps: dict  # map name -> Compilation
    module_source: str = ""
    spec_hash: str = ""
    sizes: dict = field(default_factory=dict)  # the design sizes asked for (the recipe's)
    lowering: str | None = None  # the lowering asked for, every map's
    analysis_budget: float | None = None

    def parts(self) -> dict:
        """Each map's Compilation, by map name."""
        return dict(self.maps)


@dataclass
class Compilation:
    """Every stage of one compile, for inspection."""

    source: Source
    ast: Spec
    checked: CheckedSpec
    ir: Graph
    optimized: Graph
    plan: Plan
    log: list = field(default_factory=list)
    torch_source: str = ""
    triton_source: str = ""
    module_source: str = ""
    triton_description: str = ""  # what the Triton backend runs, its backward included (Module.TRITON_LOWERING)
    spec_hash: str = ""
    analysis_budget: float | None = None  # seconds the analyses ran under (None: not built here)
    # the other lowerings of the dispatch table: name -> (module source, Triton kernels source)
    alternates: dict = field(default_factory=dict)
    map_name: str = ""  # a map of a composed spec: its name there (see Composition)

    def parts(self) -> dict:
        """The compilations that make up this one: itself (a Composition has one per map)."""
        return {"": self}


def read_source(spec: str | Path) -> Source:
    """A path to a spec file (a .attn name, or any file that exists), or spec text itself (it holds `{`)."""
    if isinstance(spec, str) and "{" not in spec and (spec.strip().endswith(".attn") or os.path.exists(spec)):
        spec = Path(spec)
    if isinstance(spec, Path):
        path = spec
        try:
            return Source(path.read_text(encoding="utf-8"), str(path))
        except FileNotFoundError:
            raise AttnccError(f"{path}: no such spec file") from None
        except IsADirectoryError:
            raise AttnccError(f"{path}: is a directory, not a spec file") from None
        except (UnicodeDecodeError, OSError) as exc:
            raise AttnccError(f"{path}: cannot read spec: {exc}") from None
    if not isinstance(spec, str):
        raise AttnccError(f"expected spec text or a path, got {type(spec).__name__}")
    return Source(spec, "<spec>")


def build(spec: str | Path | Source, sizes: dict | None = None, lowering: str | None = None,
          analysis_budget: float | None = None, memory_budget: int | str | None = None) -> Compilation:
    """Run the whole pipeline up to generated source (nothing is imported or executed).

    analysis_budget: seconds of symbolic analysis (default ATTNCC_ANALYSIS_BUDGET, else 20); what is
    not proven by then is treated as general. Analysis results are cached beside the generated code.
    memory_budget: bytes (or "64GB") a lowering must fit in to be chosen at a length; by default
    $ATTNCC_MEMORY_BUDGET, else the reference machine's memory (attncc.plan.cost.MACHINE)."""
    src = spec if isinstance(spec, Source) else read_source(spec)
    tree = parse(src)
    budget = default_budget() if analysis_budget is None else check_budget(analysis_budget)
    if is_composed(tree):
        return build_composed(src, tree, sizes, lowering, budget, memory_budget)
    checked = check(src, tree, RESERVED_ATTRIBUTES, RESERVED_KEYWORDS)
    return build_checked(src, tree, checked, sizes, lowering, budget, memory_budget)


def build_checked(src: Source, tree: Spec, checked: CheckedSpec, sizes: dict | None, lowering: str | None,
                  budget: float, memory_budget: int | str | None) -> Compilation:
    """The pipeline after checking: lower, analyse, select and emit."""
    ir = lower(checked)
    optimized, ctx = _analyse(ir, format_spec(tree), budget)
    plan = select(optimized, {**checked.sizes, **_design_sizes(sizes, ir.signature)}, lowering,
                  compile_budget(memory_budget))
    return _emit(Compilation(src, tree, checked, ir, optimized, plan, ctx.log, analysis_budget=budget))


def _analyse(ir: Graph, spec_text: str, budget: float) -> tuple[Graph, PassContext]:
    """The pass pipeline on a copy of the IR, reusing the analysis results stored for this spec and
    storing those it proves. Stored results that fail their sampled checks (a damaged cache entry)
    are dropped, and the spec is analysed again."""
    stored = analysis_path(spec_text, budget)
    memo = load_analysis(stored)
    try:
        optimized, ctx = _run_passes(ir, budget, memo)
    except AttnccError:
        if not memo:
            raise
        optimized, ctx = _run_passes(ir, budget, {})
    if ctx.memo_added:
        store_analysis(stored, ctx.memo)
    return optimized, ctx


def _run_passes(ir: Graph, budget: float, memo: dict) -> tuple[Graph, PassContext]:
    optimized = ir.copy()
    ctx = PassContext(size_symbols(ir.signature), budget=budget, memo=memo)
    run_pipeline(optimized, ctx)
    return optimized, ctx


def relower(comp: Compilation, lowering: str) -> Compilation:
    """The same analysed spec with another of its lowerings: selection and emission only."""
    return _emit(replace(comp, plan=select(comp.optimized, comp.plan.sizes, lowering, comp.plan.budget)))


def _emit(comp: Compilation) -> Compilation:
    graph, plan = comp.optimized, comp.plan
    comp.spec_hash = "sha256:" + hashlib.sha256(
        f"{__version__}\n{format_spec(comp.ast)}\n{plan.lowering}\n{plan.dispatch}".encode()).hexdigest()[:16]
    comp.torch_source = emit_torch(graph, plan)
    kernels, comp.triton_description = emit_triton(graph, plan)
    comp.triton_source = triton_header(graph, comp.spec_hash, __version__) + kernels
    comp.module_source = (header(graph, plan, comp.spec_hash, __version__) + _sections(graph.name, comp.torch_source)
                          + "\n\n" + module_class(graph, plan, comp.spec_hash, comp.triton_description))
    comp.alternates = {name: _alternate(comp, replace(plan, lowering=name)) for name in plan.lowerings[1:]}
    return comp


def _sections(stem: str, torch_source: str) -> str:
    """The torch section, then the Triton entry of a module file named `<stem>.py`."""
    return ("\n\n# " + "-" * 70 + " torch backend\n" + torch_source + "\n\n# " + "-" * 70 + " triton backend\n"
            + triton_entry(stem))


def _alternate(comp: Compilation, plan: Plan) -> tuple[str, str]:
    """(module source, Triton kernels source) of another lowering of the dispatch table."""
    graph = comp.optimized
    kernels, description = emit_triton(graph, plan)
    module = alternate_header(graph, plan, comp.spec_hash, __version__, description) + _sections(
        f"{graph.name}_{plan.lowering}", emit_torch(graph, plan))
    return module, triton_header(graph, comp.spec_hash, __version__) + kernels


def compile_budget(memory_budget: int | str | None) -> float:
    """The memory a lowering must fit at compile time: the argument, else $ATTNCC_MEMORY_BUDGET,
    else the reference machine's (deterministic: the generated code does not depend on this host)."""
    if memory_budget is not None:
        return parse_budget(memory_budget, "memory_budget")
    configured = configured_budget()
    return MACHINE["memory_bytes"] if configured is None else configured


def _design_sizes(sizes: dict | None, signature: Signature) -> dict:
    """The sizes the cost model chooses for: run-time sizes (B, H, Nq, N, D, E) and declared ones."""
    sizes = dict(sizes or {})
    for name, value in sizes.items():
        if name not in DESIGN_SIZES and name not in signature.sizes:
            raise AttnccError(f"sizes: unknown size `{name}`; use {', '.join([*DESIGN_SIZES, *signature.sizes])}")
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name in signature.sizes else 1):
            raise AttnccError(f"sizes: `{name}` must be a positive integer, got {value!r}")
    randoms = signature.random_features
    if randoms:  # kernels see rows of random features: the cost model's D is their width m
        sizes["D"] = randoms[0].out_dim
    return sizes


def generated_files(comp: Compilation) -> dict[str, str]:
    """File name -> source of everything generated for a spec."""
    name = comp.checked.name
    if isinstance(comp, Composition):  # the combination, then every map's files (named <spec>_<map>...)
        return {f"{name}.py": comp.module_source,
                **{n: text for c in comp.maps.values() for n, text in generated_files(c).items()}}
    files = {f"{name}.py": comp.module_source, f"{name}_triton.py": comp.triton_source}
    for lowering, (module, kernels) in comp.alternates.items():
        files[f"{name}_{lowering}.py"], files[f"{name}_{lowering}_triton.py"] = module, kernels
    return files


def compile(spec: str | Path | Compilation, backend: str = "auto", sizes: dict | None = None,
            lowering: str | None = None, analysis_budget: float | None = None,
            memory_budget: int | str | None = None):
    """Compile a spec (path, text, or a Compilation from `build`) to an nn.Module class; instantiate
    it with sizes / backend. analysis_budget: seconds of symbolic analysis (see `build`). Each call
    runs the lowering its key length's dispatch entry names (`lowering=` pins one); memory_budget
    (bytes, or "64GB") is what a lowering must fit to be chosen (see `build`), and the budget the
    module's calls are checked against (attncc.runtime.memory).

    >>> Attn = attncc.compile("examples/causal.attn")
    >>> out = Attn()(q, k, v)            # q, k, v: [batch, heads, tokens, dim]
    """
    comp = spec if isinstance(spec, (Compilation, Composition)) else build(spec, sizes, lowering, analysis_budget,
                                                                            memory_budget)
    if isinstance(comp, Composition):
        return compile_composed(comp, backend, memory_budget)
    return _compile_class(comp, backend, memory_budget, compile_recipe(comp, backend, memory_budget))


def _compile_class(comp, backend: str, memory_budget, recipe: dict, extra: dict | None = None):
    """The class of a Compilation or Composition: its generated module loaded, the recipe attached."""
    files = {f"{comp.checked.name}.py": comp.module_source} if isinstance(comp, Composition) else generated_files(comp)
    module = load_module(comp.checked.name, files)
    base = module.Module
    cls = type(comp.checked.name, (base,), {"checked": comp.checked, "compilation": comp,
                                            "__module__": module.__name__, "REBUILD": (rebuild, recipe),
                                            "__init__": _init_with_backend(base, backend),
                                            "memory_budget": None if memory_budget is None else
                                            parse_budget(memory_budget, "memory_budget"), **(extra or {})})
    COMPILED_CLASSES[_recipe_key(recipe)] = cls
    return cls


# The classes compiled in this process by recipe, so that deepcopy and pickling within one process
# give modules of the same class and do not recompile (weak: a class nobody uses is not kept).
COMPILED_CLASSES: "weakref.WeakValueDictionary[str, type]" = weakref.WeakValueDictionary()
RECIPE_FORMAT = 1


def compile_recipe(comp: Compilation, backend: str, memory_budget: int | str | None = None) -> dict:
    """What a pickled compiled module carries to rebuild its class: the spec text and the choices
    that shaped it (plain values, so any later attncc can read it and say what differs)."""
    known = set(DESIGN_SIZES) | set(comp.checked.sizes)
    return {"format": RECIPE_FORMAT, "attncc": __version__, "name": comp.checked.name,
            "text": comp.source.text, "filename": comp.source.filename, "backend": backend,
            "sizes": {n: v for n, v in comp.plan.sizes.items() if n in known},
            # a lowering that runs at every length is pinned (forcing it gives the same table); a
            # dispatch table is chosen again from the same sizes
            "lowering": comp.plan.lowering if len(comp.plan.dispatch) == 1 else None,
            "spec_hash": comp.spec_hash, "analysis_budget": comp.analysis_budget, "memory_budget": memory_budget}


def _recipe_key(recipe: dict) -> str:
    return repr(sorted(recipe.items()))


def rebuild(recipe: dict):
    """Unpickling a compiled module: its class recompiled from the recipe (see compile_recipe), as
    an instance whose state pickle restores next. The spec must compile to the hash it had when it
    was saved; another attncc version may lower it differently, so that is an error, not a guess."""
    if recipe.get("format") != RECIPE_FORMAT:
        raise AttnccError(f"cannot load a compiled attention pickled by attncc {recipe.get('attncc', '?')} "
                          f"(recipe format {recipe.get('format')!r}; this attncc {__version__} reads {RECIPE_FORMAT})")
    cls = COMPILED_CLASSES.get(_recipe_key(recipe))
    if cls is None and "map" in recipe:  # a map of a composed spec: made with the composed class
        cls = type(rebuild(recipe["composed"])).MAPS[recipe["map"]]
    if cls is None:
        cls = compile(Source(recipe["text"], recipe["filename"]), recipe["backend"], recipe["sizes"],
                      recipe["lowering"], recipe.get("analysis_budget"), recipe.get("memory_budget"))
    if cls.SPEC_HASH != recipe["spec_hash"]:
        raise AttnccError(
            f"cannot load the pickled attention `{recipe['name']}`: attncc {recipe['attncc']} compiled it to "
            f"{recipe['spec_hash']}, this attncc {__version__} compiles its spec to {cls.SPEC_HASH}; "
            f"load it with attncc {recipe['attncc']}, or save its state_dict and load that into a module "
            "compiled by this version")
    return cls.__new__(cls)


def _init_with_backend(base, default_backend: str):
    def __init__(self, backend: str = default_backend, **sizes):
        base.__init__(self, backend=backend, **sizes)
    return __init__


def reference(spec: str | Path, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              params: dict | None = None, **inputs) -> torch.Tensor:
    """The dense float64 result of a spec: the oracle every backend is tested against."""
    cls = compile(spec, backend="reference")
    module = cls(**{n: s for n, s in (("H", q.shape[1]), ("D", q.shape[3]), ("E", v.shape[3]))
                    if n in cls.NEEDS})
    if params:
        with torch.no_grad():
            for name, value in params.items():
                module.get_parameter(name).copy_(torch.as_tensor(value))  # `map.table` for a map's own
    return module.reference(q, k, v, **inputs)


# ---------------------------------------------------------------------------- composed specs
def build_composed(src: Source, tree: Spec, sizes: dict | None, lowering: str | None, budget: float,
                   memory_budget: int | str | None) -> Composition:
    """A composed spec (attncc/frontend/compose.py): every map through the whole pipeline as its own
    spec (`<spec>_<map>`), then the module that combines their outputs (attncc/emit/combine.py)."""
    checked = check_composed(src, tree, COMPOSED_ATTRIBUTES, RESERVED_KEYWORDS)
    sizes = dict(sizes or {})
    known = set(DESIGN_SIZES) | {n for m in checked.maps.values() for n in m.sizes}
    unknown = sorted(set(sizes) - known)
    if unknown:
        raise AttnccError(f"sizes: unknown size `{unknown[0]}`; use {', '.join(sorted(known))}")
    maps = {}
    for name, spec in checked.maps.items():
        own = {n: v for n, v in sizes.items() if n in DESIGN_SIZES or n in spec.sizes}
        maps[name] = replace(build_checked(src, checked.map_asts[name], spec, own, lowering, budget, memory_budget),
                             map_name=name)
    return _composed(Composition(src, tree, checked, maps, sizes=sizes, lowering=lowering, analysis_budget=budget))


def relower_map(comp: Composition, name: str, lowering: str) -> Composition:
    """The same composition with one map under another of its lowerings (selection and emission only)."""
    return _composed(replace(comp, maps={**comp.maps, name: replace(relower(comp.maps[name], lowering), map_name=name)}))


def _composed(comp: Composition) -> Composition:
    """The composition's hash (of its spec and its maps' hashes) and its generated module."""
    checked = comp.checked
    comp.spec_hash = "sha256:" + hashlib.sha256("\n".join(
        [__version__, format_spec(comp.ast), *(c.spec_hash for c in comp.maps.values())]).encode()).hexdigest()[:16]
    comp.module_source = composed_module(checked.name, comp.spec_hash, __version__, checked.output,
                                         checked.coefficients, {n: c.plan.lowering for n, c in comp.maps.items()})
    return comp


def compile_composed(comp: Composition, backend: str, memory_budget: int | str | None):
    """The composed module class: each map compiled (its class reads the shared tables it is passed),
    then the generated combination's class holding them (attncc/runtime/composed.py)."""
    recipe = {"format": RECIPE_FORMAT, "attncc": __version__, "name": comp.checked.name, "text": comp.source.text,
              "filename": comp.source.filename, "backend": backend, "sizes": comp.sizes, "lowering": comp.lowering,
              "spec_hash": comp.spec_hash, "analysis_budget": comp.analysis_budget, "memory_budget": memory_budget}
    shared = comp.checked.shared
    classes = {}
    for name, map_comp in comp.maps.items():
        map_recipe = {**compile_recipe(map_comp, backend, memory_budget), "map": name, "composed": recipe}
        classes[name] = _compile_class(map_comp, backend, memory_budget, map_recipe, {"SHARED": shared})
    first = next(iter(classes.values()))
    union = lambda attr: {n: v for c in classes.values() for n, v in getattr(c, attr).items()}  # noqa: E731
    return _compile_class(comp, backend, memory_budget, recipe, {
        "MAPS": classes, "SHARED": shared,
        "LOWERING": ", ".join(f"{n}: {c.LOWERING}" for n, c in classes.items()),
        "TRITON_LOWERING": "; ".join(f"{n}: {c.TRITON_LOWERING}" for n, c in classes.items()),
        "PARAMS": {n: first.PARAMS[n] for n in shared},
        "SIZES": union("SIZES"), "INPUTS": union("INPUTS"), "GRAPHS": union("GRAPHS"),
        "NEEDS": tuple(sorted({n for c in classes.values() for n in c.NEEDS}))})
