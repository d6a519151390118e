"""The backends a compiled module runs on: one `Backend` record each, registered once.

`Module(backend=NAME)` names one; `backend="auto"` takes the first registered backend marked `auto`
that is available for the call's tensors (Triton on CUDA, torch elsewhere). CompiledAttention.forward
prepares the call (its context, ContextPool's pooling, graph tables, random features) and hands it
to the backend's `run`; a backend with `raw_inputs` (the oracle) gets q, k, v before any of that.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..lang.registry import Registry
from ..lang.source import AttnccError


def cuda_triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def always(device: torch.device) -> bool:
    return True


@dataclass(frozen=True)
class Backend:
    """run(module, q, k, v, ctx) -> out   the forward on prepared inputs (see the module docstring)
    available(device) -> bool            whether it can run on tensors of that device in this process
    auto                                  a candidate of backend="auto", in registration order
    raw_inputs                            run on q, k, v before pooling, graph tables and features
    prepare(module)                       called once at construction when it may run (imports)
    describe                              what `repr(module)` and the docs say of it
    checks_memory                         the module's MEMORY estimate (its torch forward's) is checked
                                          against the budget before the call (attncc.runtime.memory)"""
    name: str
    run: Callable
    describe: str
    available: Callable[[torch.device], bool] = always
    auto: bool = False
    raw_inputs: bool = False
    prepare: Callable | None = None
    checks_memory: bool = False

    def __post_init__(self):
        if self.name == "auto":
            raise AttnccError("`auto` chooses among the backends and cannot name one")


BACKENDS: Registry = Registry("backend")
register_backend = BACKENDS.register
unregister_backend = BACKENDS.unregister
registered_backend = BACKENDS.registered  # a `with` block's worth of registration (tests, experiments)


def backend_names() -> tuple[str, ...]:
    return ("auto", *BACKENDS)


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise AttnccError(f"unknown backend {name!r}; use one of {', '.join(backend_names())}")
    return BACKENDS[name]


def resolve(name: str, q: torch.Tensor) -> Backend:
    """The backend a call runs on: the named one, or auto's first available for q's device."""
    if name != "auto":
        return get_backend(name)
    return next(b for b in BACKENDS.values() if b.auto and b.available(q.device))


def backends_to_prepare(name: str) -> list[Backend]:
    """The backends a module built with backend=`name` may run on here and that want preparing:
    the named one, or auto's candidates available on this process's default device."""
    if name != "auto":
        chosen = [get_backend(name)]
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        chosen = [b for b in BACKENDS.values() if b.auto and b.available(device)]
    return [b for b in chosen if b.prepare is not None]


def auto_description() -> str:
    return ", ".join(f"{b.name} {b.describe}" for b in BACKENDS.values() if b.auto)


def prepare_triton(module) -> None:
    for name, _ in module.DISPATCH:  # imported now: torch.compile cannot trace an import (graph break)
        module.triton_kernels(name)


register_backend(Backend(
    "triton", lambda m, q, k, v, ctx: m.forward_triton(q, k, v, ctx), "on CUDA",
    available=lambda device: device.type == "cuda" and cuda_triton_available(), auto=True, prepare=prepare_triton))
register_backend(Backend(
    "torch", lambda m, q, k, v, ctx: m.forward_torch(q, k, v, ctx), "elsewhere", auto=True, checks_memory=True))
register_backend(Backend(
    "reference", lambda m, q, k, v, ctx: m.dense(q, k, v, ctx).to(v.dtype),
    "the dense float64 oracle, cast to v's dtype", raw_inputs=True))
