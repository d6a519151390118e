"""`attncc fuzz`: random masks and biases, or a user's family of specs, against the dense reference.

A family is a spec with holes: each `??` in `mask(i, j)` is filled with a random boolean
expression, each other `??` with a random numeric one (over i, j, h and the spec's sizes), each
`??fn` with a random float expression of the math functions and conversions (over i, j, h, b);
`??grid(w)` and `??ring(w)` are filled with functions of the 2-D offset, or of one ring distance
(Chebyshev or Manhattan), of i and j on a grid of `w` columns (a size or a number). A spec without
holes is fuzzed over random shapes and inputs. Every lowering the spec admits is run, not only the
one the cost model picks, so that a wrong structure proof shows even at sizes where the
quadratic lowering is cheaper. Hypothesis drives the search and shrinks a failure to a minimal
spec, which is written to a file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from ..api import compile as compile_spec
from ..api import relower, relower_map
from .compare import GQA_BACKENDS, compare, make_module, random_inputs
from ..lang.source import SpecError
from .testing import (attention_shapes, bias_expressions, function_expressions, gate_expressions, grid_expressions,
                      mask_expressions, ring_expressions)

HOLE = "??"
_HOLES = re.compile(r"\?\?(?:(grid|ring|gate)\(\s*([A-Za-z_][A-Za-z0-9_]*|[0-9]+)\s*\)|(fn)\b)?")
DEFAULT_FAMILIES = ["""attention fuzz {
    size w = 5
    score(i, j) = dot(q[i], k[j]) * scale + ??
    mask(i, j) = ??
}""", """attention fuzz_kernel {
    size w = 5
    feature phi = elu1
    weight(i, j) = dot(phi(q[i]), phi(k[j])) * (??)
    mask(i, j) = ??
    normalize none
}""", """attention fuzz_grid {
    size w = 4
    feature phi = elu1
    param t[7, 7] = normal(std=0.3)
    weight(i, j) = dot(phi(q[i]), phi(k[j])) * exp(t[i // w - j // w + 3, i % w - j % w + 3]) * (??grid(w))
    mask(i, j) = ??grid(w)
    normalize none
}""", """attention fuzz_ring {
    size w = 4
    feature phi = elu1
    weight(i, j) = dot(phi(q[i]), phi(k[j])) * (??ring(w))
    normalize none
}""", """attention fuzz_functions {
    size w = 5
    param t[H, 8] = normal(std=0.5)
    let d = i - j
    score(i, j) = dot(q[i], k[j]) * scale + ??fn + t[h, clamp(abs(d) // 2, 0, 7)] + 0.1 * sin(d * 0.3)
    mask(i, j) = ??
}"""]
_SIZE = re.compile(r"\bsize\s+([A-Za-z_][A-Za-z0-9_]*)")
_DEF = re.compile(r"\b(score|weight|mask|bias)\s*\(")


@dataclass
class FuzzReport:
    examples: int = 0
    rejected: int = 0
    failure: str | None = None
    error: str = ""
    lowerings: dict = field(default_factory=dict)
    compiled: dict = field(default_factory=dict)  # family index -> specs of it that compiled
    first_rejection: dict = field(default_factory=dict)  # family index -> the checker's first error on it

    def untested(self) -> dict[int, str]:
        """Family index -> the checker's first error, for each family none of whose specs compiled
        (a typo in a family rejects every spec filled from it: nothing of it was tested)."""
        return {n: error for n, error in sorted(self.first_rejection.items()) if not self.compiled.get(n)}


def _holes(family: str) -> list[tuple[str, str | None, bool]]:
    """(kind, argument, boolean) of each hole: kind '' for `??`, 'grid', 'ring' (argument: the grid width),
    'gate' (argument: the gate input) or 'fn'; boolean inside `mask(i, j)`."""
    holes = []
    for m in _HOLES.finditer(family):
        defs = _DEF.findall(family[:m.start()])
        holes.append((m.group(1) or m.group(3) or "", m.group(2), bool(defs) and defs[-1] == "mask"))
    return holes


def family_strategy(family: str):
    sizes = tuple(_SIZE.findall(family))
    holes = []
    for kind, width, boolean in _holes(family):
        if kind == "grid":
            holes.append(grid_expressions(width, boolean))
        elif kind == "ring":
            holes.append(ring_expressions(width, boolean))
        elif kind == "gate":
            holes.append(gate_expressions(width))
        elif kind == "fn":
            holes.append(function_expressions(sizes))
        else:
            holes.append(mask_expressions(sizes) if boolean else bias_expressions(sizes))

    def fill(values):
        it = iter(values)
        return _HOLES.sub(lambda _: f"({next(it)})", family)
    return st.tuples(*holes).map(fill)


def _every_lowering(spec: str) -> list:
    """The spec compiled with the cost model's lowering, then with each other lowering it admits."""
    chosen = compile_spec(spec)
    comp = chosen.compilation
    if getattr(chosen, "MAPS", None):  # a composed spec: each map under each of its lowerings, the others as chosen
        return [chosen] + [compile_spec(relower_map(comp, name, c.name)) for name, part in comp.maps.items()
                           for c in part.plan.candidates if c.name != part.plan.lowering]
    others = [c.name for c in comp.plan.candidates if c.name != chosen.LOWERING]
    return [chosen] + [compile_spec(relower(comp, name)) for name in others]  # analysed once


def fuzz(families: list[str], examples: int, backends: list[tuple[str, torch.dtype]], seed: int = 0,
         progress=None, max_tokens: int = 70) -> FuzzReport:
    """Run `examples` specs of the families (shapes of up to `max_tokens` queries and keys) through every
    lowering they admit and every (backend, dtype) against the reference; the report holds the
    shrunk failure, if any."""
    report = FuzzReport()

    def check(member: tuple[int, str], shape, grouping: int) -> None:
        family, spec = member
        report.examples += 1
        if progress is not None:
            progress(report.examples)
        try:
            classes = _every_lowering(spec)
        except SpecError as exc:  # a random expression the language rejects (e.g. a constant overflow)
            report.rejected += 1
            report.first_rejection.setdefault(family, str(exc))
            return
        except Exception as exc:  # noqa: BLE001  a compiler crash is a finding: shrink it
            report.failure, report.error = spec, f"compile: {type(exc).__name__}: {exc}"
            raise
        report.compiled[family] = report.compiled.get(family, 0) + 1
        b, h, nq, nk, d, e = shape
        divisors = [n for n in range(1, h + 1) if h % n == 0]  # key/value heads (grouped-query attention)
        for cls in classes:
            report.lowerings[cls.LOWERING] = report.lowerings.get(cls.LOWERING, 0) + 1  # composed: "a1: tiled, a2: ..."
            nk = nq if cls.GRAPHS else nk  # a graph kernel relates the same tokens
            for backend, dtype in backends:
                hkv = divisors[grouping % len(divisors)] if backend in GQA_BACKENDS else h
                module = make_module(cls, h, d, e, seed=seed, kv_heads=hkv)
                q, k, v, inputs = random_inputs(cls, b, h, nq, nk, d, e, generator=torch.Generator().manual_seed(seed),
                                                kv_heads=hkv)
                where = f"{backend} {dtype}, lowering {cls.LOWERING}" + (f", Hkv = {hkv}" if hkv != h else "")
                try:
                    result = compare(module, q, k, v, inputs, backend, dtype)
                except Exception as exc:  # noqa: BLE001  (a crash is a finding, not the end of the run)
                    report.failure, report.error = spec, f"{where}: {type(exc).__name__}: {exc}"
                    raise
                if not result.ok:
                    report.failure = spec
                    report.error = (f"{where} at Nq={nq}, N={nk}: error {result.error:.3e} > "
                                    f"tolerance {result.tolerance:.0e}")
                    raise AssertionError(report.error)

    specs = st.one_of(*[(family_strategy(f) if HOLE in f else st.just(f)).map(lambda spec, n=n: (n, spec))
                        for n, f in enumerate(families)])
    run = settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                   phases=[Phase.generate, Phase.shrink])(given(specs, attention_shapes(max_tokens=max_tokens), st.integers(0, 7))(check))
    run = hypothesis_seed(seed)(run)  # the same seed gives the same specs
    try:
        run()
    except Exception:  # noqa: BLE001  hypothesis re-raises the shrunk failure; the report holds it
        if report.failure is None:
            raise
    return report


def write_failure(report: FuzzReport, path: Path) -> None:
    comment = "\n".join(f"# {line}" for line in report.error.splitlines())
    path.write_text(f"# minimal failing spec found by attncc fuzz\n{comment}\n{report.failure}\n")
