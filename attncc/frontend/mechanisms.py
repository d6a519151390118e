"""Checking of the named mechanisms' statements (a mixin of the checker in attncc/frontend/check.py):
`pool k, v = context(...)` (ContextPool, attncc/lang/pool.py), `normalize ista(...)` (VARS, attncc/oracle/ista.py)
and `normalize softmax(sink = ...)` (a logit per query row in the softmax denominator)."""
from __future__ import annotations

from dataclasses import dataclass

from . import ast
from ..lang.expr import FLOAT, INT, TExpr
from .records import ParamInfo
from ..lang.pool import BIAS, HEAD, POOLINGS, PoolInfo
from ..lang.source import did_you_mean

@dataclass(frozen=True)
class IstaInfo:
    """VARS: T unrolled ISTA steps of min_z 1/2 |V - Phi z|^2 + lam |z|_1 (see attncc/oracle/ista.py)."""
    steps: int
    lam: float


class MechanismChecks:
    """Uses the checker's bag, spec, params, pool, defs, normalize and _options."""

    def _PoolDecl(self, s: ast.PoolDecl):
        """`pool k, v = context(sigma = S, width = w)`: adds the learned tables pool_head [2, D] and
        pool_bias [2] (attncc/lang/pool.py); 0 < S <= 16, w a whole number >= 0 (0: 1-D positions)."""
        if self.pool is not None:
            self.bag.error("`pool` is given twice", s.span, "pool k and v in one statement: `pool k, v = ...`")
            return
        for name, span in zip(s.targets, s.target_spans):
            if name not in ("k", "v") or s.targets.count(name) > 1:
                self.bag.error(f"`pool` pools the keys `k` and values `v`, not `{name}`" if name not in ("k", "v")
                               else f"`{name}` is pooled twice", span, "write `pool k, v = context(...)`")
                return
        if s.fn not in POOLINGS:
            self.bag.error(f"unknown pooling `{s.fn}`", s.fn_span,
                           did_you_mean(s.fn, POOLINGS) or f"use one of {', '.join(POOLINGS)}")
            return
        opts = self._options(s.args, s.kwargs, POOLINGS[s.fn], f"pooling `{s.fn}`", s.fn_span)
        if opts is None:
            return
        opts = dict(opts)
        span_of = lambda name: next((kw.span for kw in s.kwargs if kw.name == name), s.fn_span)
        if not 0 < opts["sigma"] <= 16:
            self.bag.error(f"`sigma` of `context` must lie in (0, 16], got {opts['sigma']}", span_of("sigma"),
                           "the largest Gaussian support in tokens; pooling is truncated at 4 sigma")
            return
        if opts["width"] != int(opts["width"]) or opts["width"] < 0:
            self.bag.error(f"`width` of `context` must be a whole number >= 0, got {opts['width']}",
                           span_of("width"), "0 for 1-D positions, else the columns of a row-major grid")
            return
        clash = [d for d in self.spec.stmts if getattr(d, "name", None) in (HEAD, BIAS)]
        if clash:
            self.bag.error(f"`{clash[0].name}` is the name of a table that `pool` adds", clash[0].name_span,
                           "choose another name")
            return
        self.pool = PoolInfo(tuple(s.targets), float(opts["sigma"]), int(opts["width"]))
        dim = TExpr("rsize", (), "D", INT)
        self.params[HEAD] = ParamInfo(HEAD, (TExpr("const", (), 2, INT), dim), "normal",
                                      (("std", 0.02), ("mean", 0.0)), s.span)
        self.params[BIAS] = ParamInfo(BIAS, (TExpr("const", (), 2, INT),), "zeros", (), s.span)

    def _check_ista(self, weight: TExpr | None, mask: TExpr | None, opts) -> IstaInfo | None:
        """`normalize ista(steps, lam)`: the weight is exactly dot(phi(q[i]), psi(k[j])) (the dictionary
        is the keys' features, its columns normalized), no mask, 1 <= steps <= 64, lam >= 0."""
        norm = self.normalize
        opts = dict(opts or ())  # None: its arguments were already reported
        span_of = lambda name: next((kw.span for kw in norm.kwargs if kw.name == name), norm.kind_span)
        ok = True
        if opts and (opts["steps"] != int(opts["steps"]) or not 1 <= opts["steps"] <= 64):
            self.bag.error(f"`steps` of `ista` must be a whole number in 1 .. 64, got {opts['steps']}",
                           span_of("steps"), "VARS unrolls T = 5 steps")
            ok = False
        if opts and opts["lam"] < 0:
            self.bag.error(f"`lam` of `ista` must be >= 0, got {opts['lam']}", span_of("lam"),
                           "lam weighs the L1 penalty; 0 gives plain gradient steps")
            ok = False
        if mask is not None:
            self.bag.error("`normalize ista` reconstructs v from the features of every key: it takes no mask",
                           self.defs["mask"].kind_span, "drop the mask, or use `normalize rows` for masked "
                           "kernelized attention")
            ok = False
        plain = weight is not None and weight.op == "dot" and \
            all(side.op == "feature" and side.args[0].op in ("qrow", "krow") for side in weight.args)
        if weight is not None and not plain:
            span = self.defs["weight"].body.span if "weight" in self.defs else self.spec.name_span
            self.bag.error("`normalize ista` needs the weight `dot(phi(q[i]), phi(k[j]))` and nothing else",
                           span, "the dictionary Phi is the keys' features: declare e.g. "
                           "`feature phi = favor(features = 128, seed = 0)`")
            ok = False
        return IstaInfo(int(opts["steps"]), float(opts["lam"])) if ok and opts else None

    def _check_sink(self, e: ast.Expr | None) -> TExpr | None:
        """`normalize softmax(sink = e)`: e typed as a float of the query row. It may read h, i, b, sizes,
        tables and inputs, never the key index j (a sink is one logit per row, shared by no key),
        and no declared approximation computes it."""
        if e is None:
            return None
        self.index_names = ("i", "j")
        t = self._expr(e, "index")
        if t is None:
            return None
        if t.type not in (INT, FLOAT):
            self.bag.error(f"a sink must be a number, got {t.type}", e.span, "write a logit, e.g. `sink = s[h]`")
            return None
        key = next((x for x in t.walk() if x.op == "var" and x.value == "j"), None)
        if key is not None:
            self.bag.error("a sink cannot read the key index `j`", key.span,
                           "a sink is one logit per query row: an expression of h, i and b, e.g. `s[h]` or `s[h, i]`")
            return None
        if self.normalize.approx is not None:
            self.bag.error(f"`approx {self.normalize.approx.method}` does not compute a softmax with a sink",
                           self.normalize.approx.method_span, "drop the sink or the approximation")
            return None
        return t  # an int sink is converted to float where it is evaluated
