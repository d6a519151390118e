"""How the torch backend differentiates each lowering: the `torch backward:` line of `attncc inspect`.

The torch backend is plain autograd through its skeleton (attncc.rt); each lowering
says how in its registry record (Lowering.torch_backward, attncc/lowerings/). The Triton backend's
backward is described by attncc.emit.triton_backward.backward_line. Gradients reach q, k, v, every
learned table and every float input (tests/test_gradients.py holds them to the float64 reference's
autograd).
"""
from __future__ import annotations

from . import registry


def torch_backward_line(lowering: str) -> str:
    """How the torch backend's gradient of a lowering is computed (for `inspect`)."""
    return "torch autograd " + registry.get(lowering).torch_backward
