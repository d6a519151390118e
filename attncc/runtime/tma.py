"""Whether a launch may read its tiles through tensor descriptors (TMA, the tensor memory accelerator of sm_90).

The tiled kernels take a constexpr USE_TMA: one kernel text, two variants. With it they build a
device-side descriptor per (batch, head) of Q, K and V (`tl.make_tensor_descriptor`) and load the
query tile and the full key / value tiles with `desc.load`, which compiles to bulk tensor copies
(`cp.async.bulk.tensor`); without it, the plain pointer loads. The launcher asks `usable` here:

  the device     CUDA with compute capability 9.x (TMA exists from sm_90; sm_100 has its own paths
                 in Triton and is left on pointers until measured);
  the Triton     one with `tl.make_tensor_descriptor` and `triton.set_allocator` (3.4 on), not
                 interpreting (the interpreter takes the pointer path, whatever the device);
  the tensors    what a descriptor requires: the last dim contiguous, the base and every other
                 stride aligned to 16 bytes (the per-(batch, head) base is the pointer plus multiples
                 of the batch and head strides).

Device-side descriptors are written into a global scratch buffer per program, which Triton allocates
through the allocator set with `triton.set_allocator`; `usable` sets ours (a torch CUDA buffer) when it
answers yes.
"""
from __future__ import annotations

import functools
import os

import torch

TMA_ALIGN = 16  # bytes: the alignment a descriptor needs of its base address and of every outer stride


def usable(*tensors: torch.Tensor) -> bool:
    """Whether a kernel launched on these tensors may load them through tensor descriptors."""
    if not tensors or not all(t.is_cuda for t in tensors) or interpreting():
        return False
    if not device_supports(tensors[0].device.index or 0):
        return False
    if not all(describable(t) for t in tensors):
        return False
    import triton
    triton.set_allocator(_scratch)  # a context variable: set where the launch happens
    return True


def describable(t: torch.Tensor) -> bool:
    """The last dim contiguous, the base and the other strides multiples of 16 bytes and not 0 (an
    expanded gradient's broadcast dims keep the pointer loads)."""
    size = t.element_size()
    return t.stride(-1) == 1 and t.data_ptr() % TMA_ALIGN == 0 and \
        all(s > 0 and s * size % TMA_ALIGN == 0 for s in t.stride()[:-1])


@functools.cache
def device_supports(index: int) -> bool:
    """CUDA device `index` is an sm_90 and the installed Triton compiles device-side descriptors."""
    import triton
    import triton.language as tl
    if not (hasattr(tl, "make_tensor_descriptor") and hasattr(triton, "set_allocator")):
        return False
    return torch.cuda.get_device_capability(index)[0] == 9


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (knobs from Triton 3.4, the environment before)."""
    import triton
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _scratch(size: int, alignment: int, stream) -> torch.Tensor:
    """Triton's global scratch (the kernels' descriptors), from torch's caching allocator."""
    return torch.empty(size, dtype=torch.int8, device="cuda")
