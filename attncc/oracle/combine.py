"""The dense meaning of a composed spec's output: out = sum over maps m of c_m(h, b, i) * out_m,
each out_m a map's own dense float64 reference, each coefficient evaluated by the language's
interpreter (attncc.lang.evaluate), never by the generated combination."""
from __future__ import annotations

import torch

from ..lang.evaluate import Env, evaluate
from ..lang.expr import TExpr


def dense_combination(coefficients: dict[str, TExpr], outs: dict[str, torch.Tensor], sizes: dict, rsizes: dict,
                      params: dict, inputs: dict, rows: torch.Tensor | None = None) -> torch.Tensor:
    """sum_m c_m * outs[m] in float64; outs[m] is [B, H, Nq, E] (or the probabilities [B, H, Nq, N]:
    the coefficients do not depend on j), the coefficients broadcast over h [1, H, 1, 1], i [1, 1,
    Nq, 1] (the query indices `rows` when given) and b [B, 1, 1, 1]."""
    first = next(iter(outs.values()))
    B, H, Nq = first.shape[:3]
    grid = lambda n: torch.arange(n, dtype=torch.int32, device=first.device)  # noqa: E731
    i = grid(Nq) if rows is None else torch.as_tensor(rows, device=first.device).to(torch.int32)
    env = Env(sizes=sizes, rsizes=rsizes, i=i.view(1, 1, -1, 1), h=grid(H).view(1, H, 1, 1),
              b=grid(B).view(B, 1, 1, 1), params={n: p.double() for n, p in params.items()},
              inputs={n: t.double() if t.is_floating_point() else t for n, t in inputs.items()},
              float_dtype=torch.float64)
    total = torch.zeros_like(first, dtype=torch.float64)
    for name, coefficient in coefficients.items():
        total = total + evaluate(coefficient, env).to(device=first.device, dtype=torch.float64) * outs[name].double()
    return total
