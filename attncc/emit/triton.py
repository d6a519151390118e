"""Emit the Triton backend (placeholder until the kernels land)."""
from __future__ import annotations


def emit_triton(spec, plan, graph):
    src = ("def forward_triton(self, q, k, v, ctx):\n"
           "    raise NotImplementedError('triton backend not generated yet')\n")
    return src, ""
