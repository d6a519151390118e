"""Run every backend of a compiled spec against its dense reference on random inputs.

Used by `attncc check`, by the test-suite and by users (`assert_matches_reference`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..plan import registry

# Tolerances on max |out - ref| / max(1, max |ref|): exact lowerings in fp32, and the input rounding
# of half precisions; a lowering may declare its own per dtype (Lowering.tolerance: FFT's round-off
# grows like eps log N).
TOLERANCE = {torch.float32: 2e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2, torch.float64: 1e-9}
# The backends `check` and `fuzz` also run with k, v of fewer heads than q (grouped-query attention): all.
GQA_BACKENDS = ("torch", "triton")


@dataclass
class Result:
    backend: str
    dtype: torch.dtype
    shape: tuple
    error: float
    tolerance: float
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.error <= self.tolerance


def rows_beyond_input(cls, nq: int, nk: int) -> str | None:
    """Why lengths Nq x N do not fit compiled class `cls`, or None: a row input of N rows read at the
    query index (a gate per dimension, `G[h, i]` beside `G[h, j]`) needs Nq <= N, one of Nq rows read
    at the key index N <= Nq (docs/language.md, `dot`)."""
    if getattr(cls, "MAP_NAMES", ()):  # a composition: each map reads its own rows
        return next((why for why in (rows_beyond_input(cls.MAPS[m], nq, nk) for m in cls.MAP_NAMES) if why), None)
    checked = getattr(getattr(cls, "compilation", None), "checked", None)
    if checked is None:
        return None
    lengths = {"i": nq, "j": nk, "N": nk, "Nq": nq}
    for t in (checked.weight, checked.logits, checked.mask):
        for e in t.walk() if t is not None else ():
            tokens = checked.inputs[e.value].dims[-2].value if e.op == "rowin" else None
            if tokens is not None and lengths[e.args[-1].value] > lengths[tokens]:
                return f"`{e.value}` ({tokens} rows) read at {lengths[e.args[-1].value]} tokens"
    return None


def serving_lengths(cls, nq: int, nk: int) -> tuple[int, int]:
    """(Nq, N) as asked, or both the longer of them where the spec's row inputs cannot serve those
    (rows_beyond_input): the lengths the property tests run a spec at."""
    return (nq, nk) if rows_beyond_input(cls, nq, nk) is None else (max(nq, nk), max(nq, nk))


def random_inputs(cls, batch: int, heads: int, nq: int, nk: int, dim: int, dim_v: int | None = None,
                  generator: torch.Generator | None = None, device="cpu", kv_heads: int | None = None):
    """q, k, v in float64 plus every declared input, random but valid; k and v of `kv_heads` heads
    (grouped-query attention; default: `heads`)."""
    g = generator or torch.Generator().manual_seed(0)
    dim_v = dim_v or dim
    kv_heads = kv_heads or heads
    q = torch.randn(batch, heads, nq, dim, generator=g, dtype=torch.float64)
    k = torch.randn(batch, kv_heads, nk, dim, generator=g, dtype=torch.float64)
    v = torch.randn(batch, kv_heads, nk, dim_v, generator=g, dtype=torch.float64)
    sizes = {**cls.SIZES, "N": nk, "Nq": nq, "H": heads, "D": dim, "E": dim_v, "Hkv": kv_heads}
    inputs = {}
    adjacencies = {adj for _, adj, _ in cls.GRAPHS.values()}
    for name, spec in cls.INPUTS.items():
        shape = (batch, *(int(d) for d in spec.dims(sizes)))
        if name in adjacencies:  # a graph: sparse, symmetric, 0/1
            edges = torch.rand(shape, generator=g) < 0.15
            inputs[name] = (edges | edges.transpose(-1, -2)).to(torch.float32 if spec.dtype == "float" else torch.bool)
        elif spec.dtype == "int":
            inputs[name] = torch.sort(torch.randint(0, 3, shape, generator=g), dim=-1).values
        elif spec.dtype == "bool":
            inputs[name] = torch.rand(shape, generator=g) > 0.5
        else:
            inputs[name] = torch.randn(shape, generator=g)
    return q.to(device), k.to(device), v.to(device), {n: t.to(device) for n, t in inputs.items()}


def parse_sizes(pairs: list[str]) -> dict:
    """Command-line `--size NAME=VALUE` options as {name: int}; ValueError on a malformed one."""
    bad = [s for s in pairs if "=" not in s]
    if bad:
        raise ValueError(f"--size {bad[0]}: expected NAME=VALUE")
    return {name: int(value) for name, value in (s.split("=", 1) for s in pairs)}


def make_module(cls, heads: int, dim: int, dim_v: int, randomize: bool = True, seed: int = 0,
                kv_heads: int | None = None, **sizes):
    fixed = {n: v for n, v in (("H", heads), ("D", dim), ("E", dim_v), ("Hkv", kv_heads or heads)) if n in cls.NEEDS}
    module = cls(**fixed, **sizes)
    if randomize:  # learned tables at their init (often zeros) would test little
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def triton_runnable(device: str) -> tuple[bool, str]:
    if device == "cuda":
        return torch.cuda.is_available(), "no CUDA device"
    return os.environ.get("TRITON_INTERPRET") == "1", "set TRITON_INTERPRET=1 to run Triton on the CPU"


def compare(module, q, k, v, inputs, backend: str, dtype: torch.dtype, device: str = "cpu") -> Result:
    cast = [t.to(device=device, dtype=dtype) for t in (q, k, v)]
    saved, training = module.backend, module.training
    home = next((t.device for t in (*module.parameters(), *module.buffers())), None)
    try:
        module.backend = backend
        module.eval()  # random draws stay fixed: the reference reads this draw
        # a declared approximation selects blocks / draws samples from its inputs: give the
        # reference exactly the (rounded) inputs the backend sees
        with torch.no_grad():
            rounded = [t.to(device=q.device, dtype=torch.float64) for t in cast] if module.APPROX else (q, k, v)
            ref = module.reference(*rounded, **inputs)
            out = module.to(device)(*cast, **{n: t.to(device) for n, t in inputs.items()})
    finally:  # leave the caller's module as it was
        module.backend = saved
        module.train(training)
        if home is not None:
            module.to(home)
    scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
    error = float((out.double().cpu() - ref.cpu()).abs().max()) / scale if ref.numel() else 0.0
    if not torch.isfinite(out).all():
        error = float("inf")
    tol = tolerance(module, k.shape[2], dtype)
    return Result(backend, dtype, tuple(q.shape[2:3]) + tuple(k.shape[2:3]), error, tol)


def tolerance(module, n: int, dtype: torch.dtype) -> float:
    """The tolerance of the lowering a call with n keys runs (a lowering may declare its own per dtype);
    for a composed module, the largest of its maps'."""
    parts = module.map_modules() if hasattr(module, "map_modules") else [module]
    tables = [registry.get(part.lowering_at(n)).tolerance or TOLERANCE for part in parts]
    return max(table.get(dtype, TOLERANCE[dtype]) for table in tables)


def assert_matches_reference(module, q, k, v, backend: str = "torch", dtype=torch.float32, **inputs) -> None:
    """Raise AssertionError if `backend` differs from the dense reference beyond its tolerance."""
    result = compare(module, q, k, v, inputs, backend, dtype, device=q.device.type)
    if not result.ok:
        raise AssertionError(f"{module.SPEC_NAME} [{backend}, {dtype}]: error {result.error:.3e} > "
                             f"tolerance {result.tolerance:.1e}")
