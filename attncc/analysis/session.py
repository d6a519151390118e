"""One spec's analysis session: a time budget for the symbolic proofs, and a memo of their results.

Budget. Sympy may take a long time on an expression it cannot settle (hundreds of `or`s, deep
floors and mods), and analysis only ever proves more structure, so a spec whose analysis runs past
its budget is compiled as if nothing further were proven: `general`, no rewrite, with a note in
the plan. The analyses call `checkpoint()` between sympy steps; once the budget is spent every
later checkpoint fails at once, so the proofs that remain conclude "no claim" without work. A
single sympy call is not interrupted: the analyses keep each one small (see structure._in_d).

Memo. A proof's result depends only on the expression it is given (the spec's sizes are symbols),
so `memoized` proofs are recorded as JSON in the session's memo, which the driver loads from and
stores into the cache beside the generated code: a second process compiling the same spec reads
the results instead of proving them again. The sampled cross-checks still run on every result, so
a corrupted memo cannot turn into a wrong claim without a sampled counterexample being looked for.
"""
from __future__ import annotations

import functools
import hashlib
import os
import time
from collections import Counter
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable

import sympy

from ..lang.expr import TExpr, fold
from ..lang.source import AttnccError

BUDGET_ENV = "ATTNCC_ANALYSIS_BUDGET"
DEFAULT_BUDGET_S = 20.0

# Proofs run and proofs read from a memo in this process (evidence for tests and benchmarks).
STATS: Counter = Counter()


class BudgetSpent(Exception):
    """The analysis budget ran out: the proof in progress makes no claim."""


def default_budget() -> float:
    """Seconds of symbolic analysis per spec: ATTNCC_ANALYSIS_BUDGET, else DEFAULT_BUDGET_S."""
    text = os.environ.get(BUDGET_ENV)
    if text is None or not text.strip():
        return DEFAULT_BUDGET_S
    return check_budget(text, f"{BUDGET_ENV}={text!r}")


def check_budget(value, what: str = "analysis_budget") -> float:
    """A budget in seconds: a finite number >= 0 (0 proves nothing: every structure is general)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if isinstance(value, bool) or not 0 <= seconds < float("inf"):
        raise AttnccError(f"{what}: the analysis budget must be a number of seconds >= 0, got {value!r}; "
                          f"e.g. {BUDGET_ENV}=60 or attncc.compile(spec, analysis_budget=60)")
    return seconds


@dataclass
class Session:
    budget_s: float
    memo: dict = field(default_factory=dict)  # memo key -> JSON value
    started: float = field(default_factory=time.monotonic)
    spent: bool = False  # the budget ran out (here, or in the process that filled the memo)
    added: int = 0  # results proven in this session (the memo needs storing)

    def check(self) -> None:
        if self.spent or time.monotonic() - self.started > self.budget_s:
            self.spent = True
            raise BudgetSpent(self.budget_note())

    def budget_note(self, what: str = "") -> str:
        return (f"analysis budget of {self.budget_s:g} s spent: {what + ' ' if what else ''}treated as general; "
                f"set {BUDGET_ENV}=<seconds> or compile(..., analysis_budget=<seconds>) to analyse further")


_SESSION: ContextVar[Session | None] = ContextVar("attncc_analysis_session", default=None)
SPENT_KEY = "budget spent"


@contextmanager
def session(budget_s: float, memo: dict | None = None):
    """Analyse under a budget, with a memo of earlier results (filled in place)."""
    s = Session(budget_s, memo if memo is not None else {})
    s.spent = bool(s.memo.get(SPENT_KEY))
    token = _SESSION.set(s)
    try:
        yield s
    finally:
        _SESSION.reset(token)
        if s.spent and not s.memo.get(SPENT_KEY):
            s.memo[SPENT_KEY] = True
            s.added += 1


def checkpoint() -> None:
    """Raise BudgetSpent if this session's budget has run out (no session: no budget)."""
    s = _SESSION.get()
    if s is not None:
        s.check()


def budget_note() -> str:
    s = _SESSION.get()
    return s.budget_note() if s is not None else ""


def expr_digest(t: TExpr | None) -> str | None:
    """A digest of an expression's content, the same in every process (Python's str hash is not)."""
    if t is None:
        return None

    def node(e: TExpr, args: list[str]) -> str:
        text = f"{e.op}|{e.value!r}|{e.type}|{','.join(args)}"
        return hashlib.sha256(text.encode()).hexdigest()[:24]
    return fold(t, node)


def memoized(name: str, key: Callable[..., str], encode: Callable, decode: Callable):
    """A proof whose result is read from the session's memo when there, recorded there when not.

    key(*args) names the input (an expression digest; None: not recorded), encode(result) -> JSON
    or None (not recordable: proven again next time), decode(json, *args) -> result."""
    def wrap(prove):
        @functools.wraps(prove)
        def run(*args):
            s = _SESSION.get()
            k = key(*args) if s is not None else None
            if k is None:  # no session, or nothing worth recording (no expression)
                return prove(*args)
            k = f"{name}:{k}"
            if k in s.memo:
                try:
                    result = decode(s.memo[k], *args)
                except (KeyError, IndexError, TypeError, ValueError):  # a damaged entry: prove again
                    pass
                else:
                    STATS["reused"] += 1
                    return result
            STATS["proved"] += 1
            result = prove(*args)
            value = encode(result)
            if value is not None:
                s.memo[k] = value
                s.added += 1
            return result
        return run
    return wrap


def stored_bool(value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"not a stored truth value: {value!r}")
    return value


# ---------------------------------------------------------------------- sympy <-> JSON
# The sympy classes a proven bound is made of. Decoding builds only these (no eval of stored text),
# so a memo read from disk can produce nothing but an expression over the spec's size symbols.
_CLASSES = {cls.__name__: cls for cls in (sympy.Add, sympy.Mul, sympy.Pow, sympy.floor, sympy.ceiling,
                                          sympy.Max, sympy.Min, sympy.Mod, sympy.Abs)}


class NotEncodable(ValueError):
    pass


def sympy_to_json(e):
    """A sympy expression over integers, rationals, size symbols and _CLASSES as nested lists."""
    e = sympy.sympify(e)
    if e is sympy.oo or e is -sympy.oo:
        return "oo" if e is sympy.oo else "-oo"
    if e.is_Integer:
        return int(e)
    if e.is_Rational:
        return ["Rational", int(e.p), int(e.q)]
    if e.is_Symbol:
        return ["Symbol", e.name]
    if type(e).__name__ in _CLASSES and _CLASSES[type(e).__name__] is type(e):
        return [type(e).__name__, *map(sympy_to_json, e.args)]
    raise NotEncodable(f"no JSON form for {type(e).__name__}")


def sympy_from_json(value, symbols: dict):
    if value == "oo" or value == "-oo":
        return sympy.oo if value == "oo" else -sympy.oo
    if isinstance(value, int) and not isinstance(value, bool):
        return sympy.Integer(value)
    if not isinstance(value, list) or not value or not isinstance(value[0], str):
        raise ValueError(f"not a stored expression: {value!r}")
    head, args = value[0], value[1:]
    if head == "Rational" and len(args) == 2 and all(type(a) is int for a in args) and args[1] != 0:
        return sympy.Rational(*args)
    if head == "Symbol" and len(args) == 1 and args[0] in symbols:
        return symbols[args[0]]
    if head in _CLASSES:
        return _CLASSES[head](*(sympy_from_json(a, symbols) for a in args))
    raise ValueError(f"not a stored expression: {value!r}")


__all__ = ["BudgetSpent", "STATS", "Session", "budget_note", "check_budget", "checkpoint", "default_budget",
           "expr_digest", "memoized", "session", "stored_bool", "sympy_from_json", "sympy_to_json", "NotEncodable"]
