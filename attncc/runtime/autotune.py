"""Autotuning of the generated Triton kernels, with the best launch configuration cached on disk.

A generated launcher wraps its kernel launches in `launch(**config)` and calls
`autotune.best(spec_hash, kind, q, sizes, launch)` for the configuration to use:

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
from pathlib import Path
from typing import Callable

from ..plan import registry
from .cache import cache_dir, write_atomic


def configs(kind: str) -> list[dict]:
    """CUDA launch candidates of a kernel kind (a lowering's name), its default first (attncc/lowerings/)."""
    return list(registry.get(kind).autotune_configs)


def interpreter_config(kind: str) -> dict:
    """The fixed launch configuration of `kind` under Triton's interpreter (warps and stages mean nothing there)."""
    return dict(registry.get(kind).interpreter_config)


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

    def best(self, spec_hash: str, kind: str, q, sizes: dict, launch: Callable[..., None]) -> dict:
        """The configuration to launch `kind` with for these inputs (tuned once per key on CUDA)."""
        if not q.is_cuda or os.environ.get("ATTNCC_AUTOTUNE", "1") == "0":
            return interpreter_config(kind) if not q.is_cuda else configs(kind)[0]
        key = self.key(spec_hash, kind, sizes, q.dtype, q.device)
        config = self.lookup_or_tune(key, configs(kind), launch)
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


def best(spec_hash: str, kind: str, q, sizes: dict, launch: Callable[..., None]) -> dict:
    """The process-wide tuner's choice (see Tuner.best)."""
    return TUNER.best(spec_hash, kind, q, sizes, launch)
