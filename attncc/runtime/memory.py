"""The memory budget: what a call may allocate, checked before the work starts.

A compiled module's MEMORY table gives each lowering's estimate (attncc.plan.cost: the bytes its
torch forward holds at its peak, and what autograd keeps for the backward) as a function of the
call's sizes. Before a torch call runs, the estimate at the call's sizes (doubled for float64, with
the backward's share when autograd records) must fit the budget; learned tables are checked the same
way before they are allocated. The budget, first found wins: the module's `memory_budget` attribute
(or attncc.compile(memory_budget=...)), $ATTNCC_MEMORY_BUDGET, the device's memory (a CUDA device's
total memory; the host's physical memory for the CPU).
"""
from __future__ import annotations

import os
import re

import torch
from rich.filesize import decimal

from ..lang.source import AttnccError

ENV = "ATTNCC_MEMORY_BUDGET"
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_BUDGET = re.compile(r"\s*(\d+(?:\.\d*)?(?:e\d+)?)\s*([kmgt]i?)?b?\s*", re.IGNORECASE)


def parse_budget(value: int | float | str, where: str) -> int:
    """Bytes from a number or a string such as "64GB", "1.5e10", "512MiB" (GB = 10^9, GiB = 2^30)."""
    if isinstance(value, bool):
        raise AttnccError(f"{where}: a memory budget is a number of bytes (or e.g. \"64GB\"), got {value!r}")
    if isinstance(value, (int, float)):
        if not value > 0:
            raise AttnccError(f"{where}: a memory budget must be positive, got {value!r}")
        return int(value)
    match = _BUDGET.fullmatch(str(value))
    if match is None or float(match.group(1)) <= 0:
        raise AttnccError(f"{where}: cannot read {value!r} as a memory budget; give bytes, or e.g. \"64GB\", "
                          "\"512MiB\"")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])


def configured_budget() -> int | None:
    """$ATTNCC_MEMORY_BUDGET in bytes, or None when it is not set."""
    value = os.environ.get(ENV)
    return None if not value else parse_budget(value, f"${ENV}")


def device_memory(device: torch.device) -> int:
    """The memory of the device a call runs on: a CUDA device's total, else the host's physical memory."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def budget(device: torch.device, override: int | None = None) -> tuple[int, str]:
    """(bytes, where that number comes from) for a call on `device`."""
    if override is not None:
        return int(override), "the module's memory_budget"
    configured = configured_budget()
    if configured is not None:
        return configured, f"${ENV}"
    return device_memory(device), f"the memory of {device.type}"


def check_fits(what: str, need: float, device: torch.device, override: int | None, sizes: str) -> None:
    """Raise a located AttnccError when `need` bytes exceed the budget for `device`."""
    limit, source = budget(device, override)
    if need > limit:
        raise AttnccError(
            f"{what} at {sizes} would hold about {decimal(int(need))}, over the memory budget of {decimal(limit)} "
            f"({source}); lower these sizes, or raise the budget: {ENV}=<bytes> (e.g. \"200GB\"), "
            "attncc.compile(..., memory_budget=...) or module.memory_budget = <bytes>")


def element_factor(dtype: torch.dtype) -> float:
    """The estimates count fp32 buffers: float64 calls hold twice as much (half inputs compute in fp32)."""
    return 2.0 if dtype == torch.float64 else 1.0


__all__ = ["ENV", "parse_budget", "configured_budget", "device_memory", "budget", "check_fits", "element_factor"]
