"""Autotuning of the generated Triton kernels, with the best launch configuration cached on disk.

A generated launcher wraps its kernel launches in `launch(**config)` and calls
`autotune.best(spec_hash, kind, q, sizes, launch)` for the configuration to use. A kind is a
lowering's name (its forward's `autotune_configs`) or that name + ":backward" (its backward's
`backward_autotune_configs`); a candidate with `max_row_bytes` is one only for head rows of up to
that many bytes (the padded head dim, sizes D and E, times the element size of the rows the kernel
holds: q's, or 4 where its feature maps keep rows in fp32): wider rows make it spill registers or
overflow shared memory (docs/compile_gate.md); one with `half_only` is one only
for fp16 / bf16 inputs (fp32 dots run on FMA units, which need far smaller tiles); one with `plain_rows`
only for kernels that hold their rows as loaded (no feature map: `row_itemsize` not given); one with
`plain_pairs` only for kernels that gather no table per (query, key) pair (`pair_lookups` false).

  - off CUDA (Triton's interpreter) or with ATTNCC_AUTOTUNE=0: the fixed default of `kind`;
  - on CUDA: the configuration cached under the key (spec hash, which names the attncc version;
    kind; sizes bucketed to powers of two; dtype; GPU name; triton and torch versions). On a miss
    every candidate of `kind` is timed once (median of 3 calls after a compiling one, on the caller's
    own tensors; a candidate that fails to compile or launch, e.g. out of shared memory, counts as
    infinitely slow); the fastest is written to `cache_dir()/autotune/<digest>.json` and kept in
    memory, so neither a second call nor a second process tunes again.

Cache files are written atomically (temporary file, then os.replace), so concurrent tuners leave one
complete entry; a file that does not parse, names another key, or holds a configuration that is not
a candidate of its kind (corrupted, truncated, edited) is ignored, retuned and rewritten.
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from ..plan import registry
from .cache import cache_dir, write_atomic


BACKWARD = ":backward"  # the suffix of a backward kernel kind


def _declared(kind: str) -> tuple[tuple, dict | None]:
    """(CUDA candidates, interpreter configuration) that the lowering of `kind` declares for it."""
    lowering = registry.get(kind.removesuffix(BACKWARD))
    if kind.endswith(BACKWARD):
        return lowering.backward_autotune_configs, lowering.backward_interpreter_config
    return lowering.autotune_configs, lowering.interpreter_config


FILTERS = ("max_row_bytes", "half_only", "plain_rows", "plain_pairs")  # keys of a candidate that choose where it applies, not launch keywords


def configs(kind: str, row_bytes: int | None = None, half: bool = True, mapped: bool = False,
            pairs: bool = False) -> list[dict]:
    """CUDA launch candidates of a kernel kind, its default first (attncc/lowerings/): those for head
    rows of `row_bytes` bytes (every one when None) of half-precision inputs (or not), whose rows go
    through a feature map in the kernel (mapped) or not, which gathers a table per pair (pairs) or
    not, as launch keywords."""
    return [{k: v for k, v in c.items() if k not in FILTERS} for c in _declared(kind)[0]
            if (row_bytes is None or row_bytes <= c.get("max_row_bytes", row_bytes))
            and (half or not c.get("half_only")) and not (mapped and c.get("plain_rows"))
            and not (pairs and c.get("plain_pairs"))]


def interpreter_config(kind: str) -> dict:
    """The fixed launch configuration of `kind` under Triton's interpreter (warps and stages mean nothing there)."""
    return dict(_declared(kind)[1])


def row_bytes(sizes: dict, q, itemsize: int | None = None) -> int | None:
    """Bytes of the widest head row a launch holds: the larger padded head dim its sizes name (D, E)
    times the element size of the rows in the kernel (`itemsize`, by default q's: a kernel whose
    feature maps keep rows in fp32 holds 4 bytes an element whatever its inputs); None if they name none."""
    dims = [sizes[n] for n in ("D", "E") if n in sizes]
    return max(dims) * (itemsize or q.element_size()) if dims else None


def candidates(kind: str, q, sizes: dict, row_itemsize: int | None = None, pair_lookups: bool = False) -> list[dict]:
    """The CUDA candidates of `kind` for a launch on q with these sizes (rows of `row_itemsize` bytes
    an element in the kernel, given where feature maps keep them in fp32; q's by default; pair_lookups: the
    kernel gathers a table per pair), its default first."""
    return configs(kind, row_bytes(sizes, q, row_itemsize), q.element_size() <= 2, mapped=row_itemsize is not None,
                   pairs=pair_lookups)


def on_gpu(q) -> bool:
    """Whether a launcher takes its CUDA launch configuration for q: q is on CUDA, or the process's
    tuner records the CUDA launches on the CPU (attncc.tools.gpu_compile)."""
    return bool(q.is_cuda) or TUNER.records_gpu_launches


def sparse_tile_limit(q, v) -> int | None:
    """The largest block-sparse tile edge for these inputs (None: no limit beyond the runtime's). fp32
    dots run on FMA units with their operands in registers: the layout's 64 x 64 tiles spilled 2.4-5.8 KB
    (block_diagonal) and overflowed sm_80's shared memory at d = 128, so fp32 inputs on the GPU take the
    edge 16 beyond 128-byte rows (32 x 32 spilled 16 B on sm_90 at d = 64; docs/compile_gate.md)."""
    if not on_gpu(q) or q.element_size() < 4:
        return None
    return 32 if max(q.shape[-1], v.shape[-1]) * q.element_size() <= 128 else 16


def bucket(n: int) -> int:
    """The power of two >= n (>= 1): one tuning serves every length in (n/2, n]."""
    return 1 << max(0, int(n) - 1).bit_length()


def _cuda_time(fn: Callable[[], None], repeats: int = 3) -> float:
    """Median ms of `repeats` calls after one untimed call (which compiles): enough to rank candidates
    at a fraction of do_bench's cost (it runs 5 calls only to estimate how many to run)."""
    import torch
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _device_environment(device) -> dict:
    import torch
    import triton
    return {"gpu": torch.cuda.get_device_name(device), "triton": triton.__version__, "torch": torch.__version__}


class Tuner:
    """Chooses and caches launch configurations. `timer(fn) -> ms` and `environment(device) -> dict`
    (GPU name, triton version) can be injected, which is how the cache is tested without a GPU."""

    records_gpu_launches = False  # see on_gpu

    def __init__(self, directory: Path | None = None, timer: Callable | None = None,
                 environment: Callable | None = None):
        self._directory = Path(directory) if directory is not None else None
        self.timer = timer or _cuda_time
        self.environment = environment or _device_environment
        self.memory: dict[str, dict] = {}
        self.tunings = 0  # candidate sets timed by this tuner (each one a cache miss)
        self.last: dict | None = None  # the last key and configuration chosen (for reports)

    @property
    def directory(self) -> Path:
        return self._directory or cache_dir() / "autotune"

    def key(self, spec_hash: str, kind: str, sizes: dict, dtype, device) -> dict:
        return {"spec": spec_hash, "kind": kind, "sizes": {n: bucket(v) for n, v in sizes.items()},
                "dtype": str(dtype).removeprefix("torch."), **self.environment(device)}

    def best(self, spec_hash: str, kind: str, q, sizes: dict, launch: Callable[..., None],
             row_itemsize: int | None = None, pair_lookups: bool = False) -> dict:
        """The configuration to launch `kind` with for these inputs (tuned once per key on CUDA);
        row_itemsize: bytes an element of the rows the kernel holds, when not q's (fp32 feature rows);
        pair_lookups: the kernel gathers a table per (query, key) pair."""
        offered = candidates(kind, q, sizes, row_itemsize, pair_lookups)
        if not q.is_cuda or os.environ.get("ATTNCC_AUTOTUNE", "1") == "0":
            return interpreter_config(kind) if not q.is_cuda else offered[0]
        key = self.key(spec_hash, kind, sizes, q.dtype, q.device)
        config = self.lookup_or_tune(key, offered, launch)
        self.last = {"key": key, "config": config}
        return dict(config)

    def lookup_or_tune(self, key: dict, configs: list[dict], launch: Callable[..., None]) -> dict:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        if digest in self.memory:
            return self.memory[digest]
        path = self.directory / f"{digest}.json"
        config = _read_entry(path, key, configs)
        if config is None:
            self.tunings += 1
            timings = [self._time(launch, c) for c in configs]
            fastest = min(range(len(configs)), key=timings.__getitem__)
            if timings[fastest] == float("inf"):  # nothing ran: let the default launch raise the real error
                return configs[0]
            config = configs[fastest]
            entry = {"key": key, "config": config,
                     "timings_ms": [{"config": c, "ms": t if t != float("inf") else None}
                                    for c, t in zip(configs, timings)]}
            write_atomic(path, json.dumps(entry, indent=1, sort_keys=True) + "\n")
        self.memory[digest] = config
        return config

    def _time(self, launch: Callable[..., None], config: dict) -> float:
        try:
            return float(self.timer(lambda: launch(**config)))
        except Exception:  # noqa: BLE001  (a candidate that does not compile or fit is skipped)
            return float("inf")


def _read_entry(path: Path, key: dict, configs: list[dict]) -> dict | None:
    """The cached configuration, or None if the file is missing or not a valid entry for `key`."""
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("key") != key or entry.get("config") not in configs:
        return None
    return entry["config"]


TUNER = Tuner()


@contextmanager
def tuning_with(tuner: Tuner):
    """Inside the block, launchers ask `tuner` (the compile gate's recorder, tests) instead of TUNER."""
    global TUNER
    saved, TUNER = TUNER, tuner
    try:
        yield tuner
    finally:
        TUNER = saved


def best(spec_hash: str, kind: str, q, sizes: dict, launch: Callable[..., None],
         row_itemsize: int | None = None, pair_lookups: bool = False) -> dict:
    """The process-wide tuner's choice (see Tuner.best)."""
    return TUNER.best(spec_hash, kind, q, sizes, launch, row_itemsize, pair_lookups)
