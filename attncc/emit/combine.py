"""The generated module of a composed spec: its combination of the maps' outputs and its class.

    out[b, h, i, :] = sum over maps m of c_m(h, b, i) * out_m[b, h, i, :]

Each map is a compiled attention of its own (`<spec>_<map>.py`, with its lowering, kernels and
dispatch table); this file holds only the coefficients, printed by the torch expression printer
(floats at the computation's precision, `ctx.dtype`), and the class that ties the maps together
(attncc/runtime/composed.py).
"""
from __future__ import annotations

from ..lang.expr import TExpr
from .exprs import TorchExpr, brief, key
from .let import LetScope
from .writer import CodeWriter


def composed_module(name: str, spec_hash: str, version: str, output: str, coefficients: dict[str, TExpr],
                    lowerings: dict[str, str]) -> str:
    """The source of `<name>.py`; `lowerings`: map -> the lowering its module runs at the design sizes."""
    maps = "\n".join(f"           {m}: {name}_{m}.py, lowering {low}" for m, low in lowerings.items())
    w = CodeWriter()
    w.line(f'"""attncc generated module (attncc {version}); do not edit, regenerate from the spec.')
    w.line()
    w.line(f"spec:      {name} (composed of {len(coefficients)} attention maps)")
    w.line(f"hash:      {spec_hash}")
    w.line(f"output:    {output}")
    w.line(f"maps:\n{maps}")
    w.line("glossary:  outs[m] [B, H, Nq, E] the output of map m; h head [1, H, 1, 1], i query token")
    w.line("           [1, 1, Nq, 1]; ctx.params the shared learned tables, ctx.inputs call-time inputs.")
    w.line('"""')
    w.line("import torch")
    w.line()
    w.line("from attncc import rt")
    w.line("from attncc.runtime.composed import ComposedAttention")
    w.line()
    w.line()
    with w.block("def combine(outs, ctx, device):"):
        w.line(f'"""output = {brief_text(output)}: the sum of coefficient * map over the maps."""')
        w.line("h = torch.arange(ctx.H, dtype=torch.int32, device=device).view(1, ctx.H, 1, 1)")
        w.line("i = torch.arange(ctx.Nq, dtype=torch.int32, device=device).view(1, 1, -1, 1)")
        scope = LetScope(TorchExpr())
        scope.bind(w, list(coefficients.values()))
        terms = []
        for m, c in coefficients.items():
            w.line(f"c_{m} = {scope(c)}  # {brief(c, 200)}")
            terms.append(f"c_{m} * outs[{key(m)}]")
        w.line(f"return {' + '.join(terms)}")
    w.line()
    w.line()
    with w.block("class Module(ComposedAttention):"):
        w.line(f'"""{name}: {len(coefficients)} compiled attention maps and their combination."""')
        w.line()
        w.line(f"SPEC_NAME = {key(name)}")
        w.line(f"SPEC_HASH = {spec_hash!r}")
        w.line(f"OUTPUT = {output!r}")
        w.line(f"MAP_NAMES = ({''.join(f'{key(m)}, ' for m in coefficients)})")
        w.line("combine = staticmethod(combine)")
    return w.text()


def brief_text(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + " ..."
