"""`attncc fuzz`: random masks and biases, or a user's family of specs, against the dense reference.

A family is a spec with holes `??`: each hole in `mask(i, j)` is filled with a random boolean
expression, each other hole with a random numeric one (over i, j, h and the spec's sizes). A spec
without holes is fuzzed over random shapes and inputs. Hypothesis drives the search and shrinks a
failure to a minimal spec, which is written to a file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from .api import compile as compile_spec
from .checking import compare, make_module, random_inputs
from .source import SpecError
from .testing import attention_shapes, bias_expressions, mask_expressions

HOLE = "??"
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


def _hole_kinds(family: str) -> list[str]:
    """'mask' or 'bias' for each hole, by the definition it stands in."""
    kinds, start = [], 0
    while (pos := family.find(HOLE, start)) >= 0:
        defs = _DEF.findall(family[:pos])
        kinds.append("mask" if defs and defs[-1] == "mask" else "bias")
        start = pos + len(HOLE)
    return kinds


def family_strategy(family: str):
    sizes = tuple(_SIZE.findall(family))
    holes = [mask_expressions(sizes) if k == "mask" else bias_expressions(sizes) for k in _hole_kinds(family)]

    def fill(values):
        text = family
        for v in values:
            text = text.replace(HOLE, f"({v})", 1)
        return text
    return st.tuples(*holes).map(fill)


def fuzz(families: list[str], examples: int, backends: list[tuple[str, torch.dtype]], seed: int = 0,
         progress=None) -> FuzzReport:
    report = FuzzReport()

    def check(spec: str, shape) -> None:
        report.examples += 1
        if progress is not None:
            progress(report.examples)
        try:
            cls = compile_spec(spec)
        except SpecError:  # a random expression the language rejects (e.g. a constant overflow)
            report.rejected += 1
            return
        except Exception as exc:  # noqa: BLE001  a compiler crash is a finding: shrink it
            report.failure, report.error = spec, f"compile: {type(exc).__name__}: {exc}"
            raise
        report.lowerings[cls.LOWERING] = report.lowerings.get(cls.LOWERING, 0) + 1
        b, h, nq, nk, d, e = shape
        module = make_module(cls, h, d, e, seed=seed)
        q, k, v, inputs = random_inputs(cls, b, h, nq, nk, d, e, generator=torch.Generator().manual_seed(seed))
        for backend, dtype in backends:
            try:
                result = compare(module, q, k, v, inputs, backend, dtype)
            except Exception as exc:  # noqa: BLE001  (a crash is a finding, not the end of the run)
                report.failure, report.error = spec, f"{backend} {dtype}: {type(exc).__name__}: {exc}"
                raise
            if not result.ok:
                report.failure = spec
                report.error = (f"{backend} {dtype} at Nq={nq}, N={nk}: error {result.error:.3e} > "
                                f"tolerance {result.tolerance:.0e}")
                raise AssertionError(report.error)

    specs = st.one_of(*[family_strategy(f) if HOLE in f else st.just(f) for f in families])
    run = settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                   phases=[Phase.generate, Phase.shrink])(given(specs, attention_shapes(max_tokens=70))(check))
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
