"""AST -> CheckedSpec: names, arities, types and roles, every error collected before raising.

The checked spec is the dense meaning of the attention, per head h:
  softmax:     W[i,j] = mask(i,j) * exp(score(i,j) + bias(i,j))     out_i = sum_j W[i,j] v_j / sum_j W[i,j]
  rows / none: W[i,j] = mask(i,j) * weight(i,j)                     out_i = sum_j W[i,j] v_j / (sum_j W[i,j] + eps)  (rows)
Defaults: score = dot(q[i], k[j]) * scale; weight = dot(phi(q[i]), phi(k[j])) for the single declared feature phi.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from . import ast
from .approx import APPROXIMATIONS, CHOICES, COUNTS, FLAGS, PLAIN_ONLY, POSITIVE
from ..lang.evaluate import Env, evaluate
from ..lang.favor import FAVOR, favor_weight, is_plain_dot_scale, split_logits
from ..lang.expr import BOOL, FLOAT, INT, RUNTIME_SIZES, VEC, TExpr
from ..lang.features import ALL_MAPS, RANDOM_MAPS
from ..lang.graph_kernels import GRAPH_KERNELS
from ..lang.operators import FUNCTIONS, fmt
from .mechanisms import IstaInfo, MechanismChecks
from ..lang.normalizers import NORMALIZERS, Normalizer, default_normalizer
from ..lang.pool import PoolInfo
from ..lang.source import DiagnosticBag, Source, Span, did_you_mean
from ..lang.standard import DEFAULT_LOGITS
from .records import InputInfo, KeywordOptions, ParamInfo
from .typecheck import ExprTyper

INITIALIZERS = {"zeros": {}, "ones": {}, "alibi": {}, "normal": {"std": 0.02, "mean": 0.0},
                "uniform": {"low": -0.1, "high": 0.1}}
INPUT_DTYPES = ("int", "float", "bool")
RESERVED = {"q", "k", "v", "i", "j", "h", "hk", "scale", "dot", "true", "false", *RUNTIME_SIZES, *FUNCTIONS}




@dataclass(frozen=True)
class GraphInfo(KeywordOptions):
    """An input computed from another: a graph kernel of an adjacency input (see graphs.py)."""
    name: str
    kind: str
    adjacency: str
    kwargs: tuple[tuple[str, float], ...]

    def describe(self) -> str:
        return f"{self.name} = {self.kind}(" + ", ".join([self.adjacency, *(f"{k}={v}" for k, v in self.kwargs)]) + ")"


@dataclass(frozen=True)
class ApproxInfo(KeywordOptions):
    """`approx METHOD(...)`: its method and every option, defaults filled in (see approx.py)."""
    method: str
    kwargs: tuple[tuple[str, object], ...]

    def __str__(self) -> str:
        return f"{self.method}(" + ", ".join(f"{k}={v}" for k, v in self.kwargs) + ")"

    def favor_map(self) -> FeatureInfo:
        """approx favor(...): the random feature map `favor` it draws, with the same options."""
        return FeatureInfo(FAVOR, FAVOR, self.kwargs)


@dataclass(frozen=True)
class FeatureInfo(KeywordOptions):
    name: str
    fn: str
    kwargs: tuple[tuple[str, float], ...]

    @property
    def random(self) -> bool:
        """A random-feature map: it has a projection buffer and is referred to by its declared name."""
        return self.fn in RANDOM_MAPS

    @property
    def out_dim(self) -> int:
        return RANDOM_MAPS[self.fn].out_dim(int(self.options["features"])) if self.random else 0


@dataclass
class CheckedSpec:
    name: str
    source: Source
    sizes: dict[str, int]
    params: dict[str, ParamInfo]
    inputs: dict[str, InputInfo]
    features: dict[str, FeatureInfo]
    normalize: str
    eps: float
    logits: TExpr | None  # softmax: score + bias
    weight: TExpr | None  # kernelized
    mask: TExpr | None
    spans: dict[str, Span] = field(default_factory=dict)
    derived: dict[str, TExpr] = field(default_factory=dict)
    divisors: tuple[TExpr, ...] = ()
    graphs: dict[str, GraphInfo] = field(default_factory=dict)
    ista: IstaInfo | None = None  # `normalize ista(...)`: the unrolled sparse-reconstruction solver
    pool: PoolInfo | None = None  # `pool k, v = context(...)`: ContextPool before the attention
    approx: ApproxInfo | None = None  # a declared approximation computes this attention
    target: CheckedSpec | None = None  # with `approx`: the exact attention it approximates
    sink: TExpr | None = None  # `normalize softmax(sink = ...)`: a logit per query row in every denominator

    @property
    def kind(self) -> str:
        return "softmax" if NORMALIZERS[self.normalize].online_softmax else "kernel"


def favor_kernelized(spec: CheckedSpec) -> CheckedSpec:
    """The meaning of `approx favor`: softmax(dot(q, k) * scale + b) under the mask, with exp(q.k s)
    replaced by favor(q).favor(k): rows-normalized weights dot(favor(q), favor(k)) * exp(b), eps 0.
    Any other spec is returned as it is. (The pass kernelize_favor makes the same rewrite of the IR.)"""
    if spec.approx is None or spec.approx.method != FAVOR:
        return spec
    return replace(spec, features={FAVOR: spec.approx.favor_map()}, normalize="rows", eps=0.0, logits=None,
                   weight=favor_weight(split_logits(spec.logits)), approx=None)


class _Checker(ExprTyper, MechanismChecks):
    def __init__(self, src: Source, spec: ast.Spec, reserved_attributes: frozenset[str],
                 reserved_keywords: frozenset[str]):
        self.src, self.spec = src, spec
        self.reserved_attributes, self.reserved_keywords = reserved_attributes, reserved_keywords
        self.bag = DiagnosticBag(src)
        self.sizes: dict[str, int] = {}
        self.derived: dict[str, TExpr] = {}  # sizes defined from other sizes, recomputed on override
        self.divisors: list[TExpr] = []  # divisors made of sizes: must stay non-zero under overrides
        self.params: dict[str, ParamInfo] = {}
        self.inputs: dict[str, InputInfo] = {}
        self.features: dict[str, FeatureInfo] = {}
        self.graphs: dict[str, GraphInfo] = {}
        self.defs: dict[str, ast.Def] = {}
        self.normalize: ast.Normalize | None = None
        self.pool: PoolInfo | None = None
        self.index_names: tuple[str, str] = ("i", "j")
        self.role = ""
        self.let_decls: dict[str, ast.LetDecl] = {}  # in declaration order
        self.lets: dict[str, TExpr | None] = {}  # typed so far (None: its body has an error, reported)

    # ---------------------------------------------------------------- declarations
    def run(self) -> CheckedSpec:
        self.declare()
        return self._finish()

    def declare(self) -> None:
        """Every statement's handler, in order: declarations recorded, definitions kept for _finish."""
        declared: dict[str, Span] = {}
        for s in self.spec.stmts:
            name = getattr(s, "name", None)
            if name is not None:
                if name in declared:
                    self.bag.error(f"`{name}` is declared twice", s.name_span, "each name is declared once")
                    continue
                if name in RESERVED or name in ALL_MAPS:  # maps may be registered after import
                    self.bag.error(f"`{name}` is a built-in name and cannot be declared", s.name_span,
                                   "choose another name")
                    continue
                declared[name] = s.name_span
            handler = getattr(self, "_" + type(s).__name__)
            handler(s)

    def typed_coefficient(self, e: ast.Expr) -> TExpr | None:
        """A coefficient of a composed spec's `output` (attncc/frontend/compose.py), typed where masks
        and biases are (i, j, h, b, sizes, tables, inputs, lets; no `dot`)."""
        self.index_names = ("i", "j")
        return self._expr(e, "index")

    def _OutputDecl(self, s: ast.OutputDecl):
        self.bag.error("`output` combines attention maps, but this spec defines none", s.span,
                       "declare the maps with `map NAME { ... }`, or drop `output`")

    def _MapDecl(self, s: ast.MapDecl):  # attncc.build sends specs with maps to compose.check_composed
        self.bag.error("a spec with maps is checked map by map", s.name_span,
                       "check it with attncc.frontend.compose.check_composed (attncc.build does)")

    def _keyword_clash(self, s, kind: str) -> bool:
        """Sizes are passed to the constructor by name, inputs to each call: a name the module's own
        signatures use (`self`, `backend`, `rows`) could not be passed."""
        if s.name not in self.reserved_keywords:
            return False
        self.bag.error(f"`{s.name}` is a keyword argument of the compiled nn.Module and cannot name {kind}",
                       s.name_span, f"choose another name, e.g. `{s.name}_{kind.split()[-1]}`")
        return True

    def _SizeDecl(self, s: ast.SizeDecl):
        if self._keyword_clash(s, "a size"):
            return
        t = self._expr(s.value, ctx="size")
        if t is None:
            return
        if t.type != INT:
            self.bag.error(f"a size must be an integer, got {t.type}", s.value.span)
            return
        value = self._known_int(t, s.value.span, "size")
        if value is None:
            return
        if value < 0:
            self.bag.error(f"a size must be >= 0, got {value}", s.value.span)
            return
        self.sizes[s.name] = value
        if t.op != "const":
            self.derived[s.name] = t

    def _ParamDecl(self, s: ast.ParamDecl):
        if s.name in self.reserved_attributes:  # tables become attributes of the module (state_dict keys)
            self.bag.error(f"`{s.name}` is an attribute of the compiled nn.Module and cannot name a table",
                           s.name_span, f"choose another name, e.g. `{s.name.strip('_')}_table`")
            return
        shape = tuple(self._shape_expr(d, allow_tokens=False) for d in s.shape)
        init, args = "zeros", ()
        if s.init is not None:
            init, args = self._initializer(s.init)
        if all(d is not None for d in shape):
            self.params[s.name] = ParamInfo(s.name, shape, init, args, s.span)

    def _InputDecl(self, s: ast.InputDecl):
        if self._keyword_clash(s, "an input"):
            return
        dims = tuple(self._shape_expr(d, allow_tokens=True) for d in s.dims)
        dtype = s.dtype or "float"
        if dtype not in INPUT_DTYPES:
            self.bag.error(f"unknown input type `{dtype}`", s.dtype_span,
                           did_you_mean(dtype, INPUT_DTYPES) or "use int, float or bool")
            dtype = "float"
        if s.source is not None:
            if not self._graph(s, dims, dtype):
                return
        if all(d is not None for d in dims):
            self.inputs[s.name] = InputInfo(s.name, dims, dtype, s.span)

    def _graph(self, s: ast.InputDecl, dims, dtype: str) -> bool:
        """`input G[N, N] = KERNEL(adj, ...)`: a graph kernel of a declared [N, N] input."""
        src = s.source
        if not isinstance(src, ast.Call) or src.fn not in GRAPH_KERNELS:
            name = src.fn if isinstance(src, ast.Call) else ast.format_expr(src)
            self.bag.error(f"`{name}` is not a graph kernel", src.span,
                           did_you_mean(name, GRAPH_KERNELS) or f"use one of {', '.join(GRAPH_KERNELS)}, "
                           "e.g. `input G[N, N] = diffusion(adj, t=0.5)`")
            return False
        square = lambda ds: [fmt(d) if d is not None else "?" for d in ds] == ["N", "N"]
        if not square(dims) or (s.dtype is not None and dtype != "float"):
            self.bag.error("a graph kernel is a float input of shape [N, N]", s.name_span,
                           f"declare `input {s.name}[N, N] = {src.fn}(...)`")
            return False
        if len(src.args) != 1 or not isinstance(src.args[0], ast.Name):
            self.bag.error(f"`{src.fn}` takes the adjacency input as its one positional argument", src.span,
                           f"write `{src.fn}(adj, ...)` with `input adj[N, N]` declared above")
            return False
        adj = self.inputs.get(src.args[0].id)
        if adj is None or not square(adj.dims) or src.args[0].id in self.graphs:
            self.bag.error(f"`{src.args[0].id}` is not an adjacency input declared above", src.args[0].span,
                           f"declare `input {src.args[0].id}[N, N]` (float or bool) before `{s.name}`")
            return False
        opts = self._options((), src.kwargs, GRAPH_KERNELS[src.fn], f"graph kernel `{src.fn}`", src.fn_span)
        if opts is None:
            return False
        steps = dict(opts).get("steps")
        if steps is not None and (steps != int(steps) or not 0 <= steps <= 64):
            self.bag.error(f"`steps` must be a whole number in 0 .. 64, got {steps}", src.span)
            return False
        self.graphs[s.name] = GraphInfo(s.name, src.fn, adj.name, opts)
        return True

    def _FeatureDecl(self, s: ast.FeatureDecl):
        fmap = ALL_MAPS.get(s.fn)
        if fmap is None:
            self.bag.error(f"unknown feature map `{s.fn}`", s.fn_span,
                           did_you_mean(s.fn, ALL_MAPS) or f"known maps: {', '.join(sorted(ALL_MAPS))}")
            return
        kwargs = self._options(s.args, s.kwargs, fmap.kwargs, f"feature map `{s.fn}`", s.fn_span)
        if kwargs is None:
            return
        if s.fn in RANDOM_MAPS:
            opts = dict(kwargs)
            rules = {"features": (1, 1 << 16, "a whole number of random features in 1 .. 65536"),
                     "seed": (0, (1 << 31) - 1, "a whole number in 0 .. 2^31 - 1"),
                     "orthogonal": (0, 1, "0 (independent draws) or 1 (orthogonal blocks)"),
                     "redraw": (0, 1, "0 (fixed features) or 1 (a fresh draw at every training step)")}
            for name, (lo, hi, hint) in rules.items():
                value = opts[name]
                if value != int(value) or not lo <= value <= hi:
                    span = next((kw.span for kw in s.kwargs if kw.name == name), s.fn_span)
                    self.bag.error(f"`{name}` of `{s.fn}` must be {hint}, got {value}", span)
                    return
            kwargs = tuple((k, int(v)) for k, v in kwargs)
        self.features[s.name] = FeatureInfo(s.name, s.fn, kwargs)

    def _Def(self, s: ast.Def):
        if s.kind in self.defs:
            self.bag.error(f"`{s.kind}` is defined twice", s.kind_span, "combine the two with `and` or `+`")
            return
        a, b = s.params
        if a == b:
            self.bag.error("the two index names must differ", s.params_span, f"write `{s.kind}(i, j)`")
            return
        self.defs[s.kind] = s

    def _Normalize(self, s: ast.Normalize):
        if self.normalize is not None:
            self.bag.error("`normalize` is given twice", s.kind_span)
            return
        if s.kind not in NORMALIZERS:
            self.bag.error(f"unknown normalization `{s.kind}`", s.kind_span,
                           did_you_mean(s.kind, NORMALIZERS) or f"use {', '.join(NORMALIZERS)}")
            return
        self.normalize = s

    def _options(self, args, kwargs, allowed: dict, what: str, span: Span, row_options: tuple[str, ...] = ()):
        """The options as (name, value) pairs: constant numbers, or (row_options) the unchecked expression."""
        if args:
            self.bag.error(f"{what} takes keyword arguments only", args[0].span,
                           f"write {', '.join(f'{k}=...' for k in allowed) or 'no arguments'}")
            return None
        out = dict(allowed)
        for kw in kwargs:
            if kw.name not in allowed:
                self.bag.error(f"{what} has no argument `{kw.name}`", kw.span,
                               did_you_mean(kw.name, allowed) or (f"its arguments: {', '.join(allowed)}"
                                                                  if allowed else "it takes no arguments"))
                return None
            value = kw.value if kw.name in row_options else self._const_number(kw.value, f"argument `{kw.name}`")
            if value is None:
                return None
            out[kw.name] = value
        return tuple(out.items())

    def _initializer(self, e: ast.Expr):
        if isinstance(e, (ast.Num, ast.Unary)):
            value = self._const_number(e, "an initial value")
            return ("constant", (("value", value),)) if value is not None else ("zeros", ())
        name, span, args, kwargs = None, e.span, (), ()
        if isinstance(e, ast.Name):
            name = e.id
        elif isinstance(e, ast.Call):
            name, span, args, kwargs = e.fn, e.fn_span, e.args, e.kwargs
        if name not in INITIALIZERS:
            self.bag.error(f"unknown initializer `{name or ast.format_expr(e)}`", span,
                           did_you_mean(name or "", INITIALIZERS) or
                           f"use a number or one of {', '.join(INITIALIZERS)}")
            return "zeros", ()
        opts = self._options(args, kwargs, INITIALIZERS[name], f"initializer `{name}`", span)
        return name, opts or ()

    # ---------------------------------------------------------------- constants and shapes
    def _const_number(self, e: ast.Expr, what: str):
        t = self._expr(e, ctx="const")
        if t is None:
            return None
        if t.op != "const" or t.type == BOOL:
            self.bag.error(f"{what} must be a constant number", e.span)
            return None
        return t.value

    def _const_int(self, e: ast.Expr, what: str):
        value = self._const_number(e, what)
        if value is not None and not isinstance(value, int):
            self.bag.error(f"{what} must be an integer", e.span)
            return None
        return value

    def _known_int(self, t: TExpr, span: Span, what: str) -> int | None:
        """The value of a size or dimension over the declared sizes, as the constructor computes it
        (exactly, in 64 bits: not wrapped to 32, which would fold 65536 * 65536 to 0); None when it
        cannot be evaluated. A value beyond int32, the ints of kernels and of the spec's expressions, is
        an error, and returned (declared, later uses of the size resolve instead of cascading)."""
        try:
            value = int(evaluate(t, Env(sizes=self.sizes, int_dtype=torch.int64)).item())
        except (ArithmeticError, RuntimeError):
            self.bag.error(f"this {what} cannot be evaluated", span)
            return None
        if not -2**31 <= value < 2**31:
            self.bag.error(f"this {what} is {value}, beyond the 32-bit ints of the language and its kernels", span,
                           f"a {what} must lie in -2^31 .. 2^31 - 1")
        return value

    def _shape_expr(self, e: ast.Expr, allow_tokens: bool):
        t = self._expr(e, ctx="shape_tokens" if allow_tokens else "shape")
        if t is not None and t.type != INT:
            self.bag.error("a dimension must be an integer expression", e.span)
            return None
        if t is not None and not t.uses("rsize"):  # known now: check it (run-time sizes are checked at construction)
            value = self._known_int(t, e.span, "dimension")
            if value is None:
                return None
            if value < 1:
                self.bag.error(f"a dimension must be at least 1, got {value}", e.span)
                return None
        return t

    # ---------------------------------------------------------------- roles
    def _normalizer(self) -> tuple[Normalizer, tuple | None]:
        """The normalizer record and its checked options (its defaults when `normalize` is left out)."""
        if self.normalize is None or self.normalize.kind not in NORMALIZERS:
            norm = default_normalizer("weight" in self.defs or bool(self.features))
            return norm, tuple(norm.options.items())
        norm = NORMALIZERS[self.normalize.kind]
        return norm, self._options(self.normalize.args, self.normalize.kwargs, norm.options,
                                   f"normalize {norm.name}", self.normalize.kind_span, norm.row_options)

    def _check_roles(self, norm: Normalizer) -> None:
        """`score` and `bias` for normalizers written with scores (softmax), `weight` for the others."""
        for kind in ("weight",) if norm.takes_score else ("score", "bias"):
            if kind in self.defs:
                good = "score" if norm.takes_score else "weight"
                self.bag.error(f"`{kind}` is for {'kernelized' if norm.takes_score else 'softmax'} attention, "
                               f"but this spec normalizes with `{norm.name}`", self.defs[kind].kind_span,
                               f"use `{good}(i, j)`" + ("" if norm.takes_score else " or `normalize softmax`"))

    def _finish(self) -> CheckedSpec:
        norm, opts = self._normalizer()
        eps = dict(opts or ()).get("eps", 0.0)
        self._type_lets()
        exprs: dict[str, TExpr | None] = {}
        for kind, d in self.defs.items():
            self.index_names = d.params
            ctx = {"score": "score", "weight": "weight"}.get(kind, "index")
            exprs[kind] = self._expr(d.body, ctx)
        self._check_roles(norm)
        mask = exprs.get("mask")
        if mask is not None and mask.type != BOOL:
            self.bag.error(f"a mask must be a condition, got {mask.type}", self.defs["mask"].body.span,
                           "compare it, e.g. `j <= i`")
        for kind in ("score", "weight", "bias"):
            x = exprs.get(kind)
            if x is not None and x.type not in (INT, FLOAT):
                self.bag.error(f"`{kind}` must be a number, got {x.type}", self.defs[kind].body.span)
            if kind in ("score", "weight") and x is not None and not x.uses("dot"):
                self.bag.error(f"`{kind}` does not use `dot(...)` of q and k", self.defs[kind].body.span,
                               "write e.g. `dot(q[i], k[j]) * scale`")
        logits = weight = None
        if norm.takes_score:
            logits = exprs.get("score") if "score" in self.defs else DEFAULT_LOGITS
            if exprs.get("bias") is not None and logits is not None:
                logits = TExpr("add", (logits, exprs["bias"]), None, FLOAT)
            for x in self.features.values():
                if logits is not None and not logits.uses("feature"):
                    self.bag.error(f"feature `{x.name}` is declared but softmax attention does not use it",
                                   self.spec.name_span, "use it in `score`, or drop it")
        else:
            weight = exprs.get("weight")
            if "weight" not in self.defs:
                if len(self.features) == 1:
                    (phi,) = self.features.values()
                    fn = phi.name if phi.random else phi.fn
                    row = lambda op: TExpr("feature", (TExpr(op, (), op[0], VEC),), fn, VEC)
                    weight = TExpr("dot", (row("qrow"), row("krow")), None, FLOAT)
                else:
                    self.bag.error(f"`normalize {norm.name}` needs `weight(i, j)`", self.spec.name_span,
                                   "e.g. `weight(i, j) = dot(phi(q[i]), phi(k[j]))`")
        self._check_random_features(logits if norm.takes_score else weight)
        kind = "score" if norm.takes_score else "weight"
        if kind in self.defs:
            self._check_dot_terms(logits if norm.takes_score else weight, self.defs[kind].body.span)
        if norm.of_score is not None and logits is not None:  # the weights it means (lang/normalizers.py)
            logits, weight = None, norm.of_score(logits)
        ista = self._check_ista(weight, mask, opts) if not norm.fixed_weights else None
        sink = self._check_sink(dict(opts or ()).get("sink"))
        self.bag.raise_if_any()
        spans = {kind: d.span for kind, d in self.defs.items()}
        spec = CheckedSpec(self.spec.name, self.src, dict(self.sizes), self.params, self.inputs, self.features,
                           norm.name, float(eps), logits, weight, mask, spans, dict(self.derived),
                           tuple(dict.fromkeys(self.divisors)), dict(self.graphs), ista, self.pool, sink=sink)
        return self._approximated(spec) if self.normalize is not None and self.normalize.approx else spec

    # ---------------------------------------------------------------- approximations
    def _approximated(self, spec: CheckedSpec) -> CheckedSpec:
        """The spec computed by its declared approximation (see approx.py); `target` keeps the exact one."""
        a = self.normalize.approx
        if a.method not in APPROXIMATIONS:
            self.bag.error(f"unknown approximation `{a.method}`", a.method_span,
                           did_you_mean(a.method, APPROXIMATIONS) or f"use one of {', '.join(APPROXIMATIONS)}")
        elif not NORMALIZERS[spec.normalize].online_softmax:
            self.bag.error(f"`approx {a.method}` approximates softmax attention, but this spec normalizes "
                           f"with `{spec.normalize}`", a.method_span, "write `normalize softmax approx ...`")
        else:
            info = self._approx_options(a)
            if info is not None and self._approx_applies(spec, info, a):
                self.bag.raise_if_any()
                return replace(spec, approx=info, target=spec)
        self.bag.raise_if_any()
        return spec

    def _approx_options(self, a: ast.Approx) -> ApproxInfo | None:
        allowed = APPROXIMATIONS[a.method]
        if a.args:
            self.bag.error(f"approx {a.method} takes keyword arguments only", a.args[0].span,
                           f"write {', '.join(f'{k}=...' for k in allowed)}")
            return None
        out = dict(allowed)
        for kw in a.kwargs:
            if kw.name not in allowed:
                self.bag.error(f"approx {a.method} has no argument `{kw.name}`", kw.span,
                               did_you_mean(kw.name, allowed) or f"its arguments: {', '.join(allowed)}")
                return None
            choices = CHOICES.get((a.method, kw.name))
            if choices:
                if not isinstance(kw.value, ast.Name) or kw.value.id not in choices:
                    self.bag.error(f"`{kw.name}` of approx {a.method} is one of {', '.join(choices)}", kw.value.span,
                                   f"write `{kw.name} = {choices[0]}`")
                    return None
                out[kw.name] = kw.value.id
                continue
            value = self._const_number(kw.value, f"argument `{kw.name}`")
            if value is None:
                return None
            lowest = 1 if kw.name in POSITIVE else 0 if kw.name in COUNTS | FLAGS else None
            if lowest is not None and (not isinstance(value, int) or value < lowest
                                       or (kw.name in FLAGS and value > 1) or value >= 2**31):
                what = "0 or 1" if kw.name in FLAGS else f"an integer >= {lowest}"
                self.bag.error(f"`{kw.name}` of approx {a.method} must be {what}, got {value}", kw.value.span)
                return None
            out[kw.name] = value
        return ApproxInfo(a.method, tuple(out.items()))

    def _approx_applies(self, spec: CheckedSpec, info: ApproxInfo, a: ast.Approx) -> bool:
        """favor: logits dot(q[i], k[j]) * scale + bias(i, j), any mask; mra, lara, ra: the plain logits."""
        where = self.defs["score"].body.span if "score" in self.defs else a.method_span
        if spec.features:
            self.bag.error(f"approx {info.method} approximates exp(q.k * scale): it takes no feature map",
                           self.spec.name_span, "drop the `feature` declaration")
            return False
        if info.method in PLAIN_ONLY:
            for kind in ("mask", "bias"):
                if kind in self.defs:
                    self.bag.error(f"approx {info.method} approximates unmasked softmax without a bias",
                                   self.defs[kind].kind_span, f"drop `{kind}`, or use `approx favor(...)`, "
                                   "which keeps masks and biases")
                    return False
            if not is_plain_dot_scale(spec.logits):
                self.bag.error(f"approx {info.method} needs the score `dot(q[i], k[j]) * scale`", where,
                               "it approximates softmax(Q K^T / sqrt(D)) and nothing else")
                return False
            return True
        if split_logits(spec.logits) is False:
            self.bag.error("approx favor needs the score `dot(q[i], k[j]) * scale` plus terms without `dot`",
                           where, "FAVOR+ estimates exp(q.k / sqrt(D)); other terms become a modulation exp(bias)")
            return False
        return True

    def _check_random_features(self, scores: TExpr | None) -> None:
        """A random-feature map replaces q and k by their features before any kernel runs, so when
        one is used, every row of q and k in the spec must go through that same map."""
        if scores is None:
            return
        sides = [side for d in scores.walk() if d.op == "dot" for side in d.args]
        used = {s.value for s in sides if s.op == "feature" and s.value in self.features
                and self.features[s.value].random}
        if not used:
            return
        name = sorted(used)[0]
        for d in scores.walk():
            if d.op == "dot" and any(s.op != "feature" or s.value != name for s in d.args):
                self.bag.error(f"random feature map `{name}` must be applied to both rows of every `dot`",
                               d.span or self.spec.name_span,
                               f"write `dot({name}(q[i]), {name}(k[j]))`: q and k are replaced by their "
                               "random features before the kernels run")
                return


def declarations_checker(src: Source, spec: ast.Spec, reserved_attributes: frozenset[str] = frozenset(),
                         reserved_keywords: frozenset[str] = frozenset()) -> _Checker:
    """A checker that has read a spec's declarations and typed its lets, with nothing else checked:
    a composed spec's top level, against which its output's coefficients are typed (`typed_coefficient`).
    Its errors are in `.bag`."""
    checker = _Checker(src, spec, reserved_attributes, reserved_keywords)
    checker.declare()
    checker._type_lets()
    return checker


def check(src: Source, spec: ast.Spec, reserved_attributes: frozenset[str] = frozenset(),
          reserved_keywords: frozenset[str] = frozenset()) -> CheckedSpec:
    """The checked spec; `reserved_attributes` are names a learned table may not take because the module
    class it is compiled into already has them, `reserved_keywords` names a size or an input may not take
    because the module's signatures pass them by keyword (the driver passes the runtime's)."""
    return _Checker(src, spec, reserved_attributes, reserved_keywords).run()
