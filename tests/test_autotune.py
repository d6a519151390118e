"""The autotune cache without a GPU: an injected timer and environment stand in for do_bench and CUDA."""
from __future__ import annotations

import json
import multiprocessing
from types import SimpleNamespace

import pytest
import torch

from attncc.plan import registry
from attncc.runtime import autotune
from attncc.runtime.autotune import Tuner, bucket

# launch candidates by kernel kind (the lowerings with Triton kernels declare them) for bf16 rows of d = 64
CONFIGS = {lw.name: autotune.configs(lw.name, 128) for lw in registry.all() if lw.autotune_configs}
INTERPRETER = {lw.name: lw.interpreter_config for lw in registry.all() if lw.autotune_configs}

SIZES = dict(BH=64, Nq=3000, N=3000, D=64, E=64)
FAST = CONFIGS["tiled"][3]


def fake_timer(calls: list):
    """ms per configuration: FAST is the fastest; BLOCK_N=32 does not compile (raises)."""
    def timer(fn):
        fn()
        config = calls[-1]
        if config.get("BLOCK_N") == 32:
            raise RuntimeError("out of resources: shared memory")
        return 1.0 if config == FAST else 2.0 + config.get("num_warps", 0) * 0.01
    return timer


def make(directory, gpu="NVIDIA H100 80GB HBM3", triton="3.6.0"):
    calls: list = []
    tuner = Tuner(directory, timer=fake_timer(calls), environment=lambda device: {"gpu": gpu, "triton": triton})
    return tuner, calls


def cuda_like(dtype=torch.bfloat16):
    return SimpleNamespace(is_cuda=True, dtype=dtype, device="cuda:0", element_size=lambda: dtype.itemsize)


def launch_into(calls):
    return lambda **config: calls.append(config)


def test_tunes_once_then_a_fresh_tuner_reads_the_cache(tmp_path):
    tuner, calls = make(tmp_path)
    assert tuner.best("sha256:abc", "tiled", cuda_like(), SIZES, launch_into(calls)) == FAST
    assert tuner.tunings == 1 and calls == CONFIGS["tiled"]  # every candidate timed once
    assert tuner.best("sha256:abc", "tiled", cuda_like(), {**SIZES, "N": 4096, "Nq": 4096}, launch_into(calls)) == FAST
    assert tuner.tunings == 1 and len(calls) == len(CONFIGS["tiled"])  # same bucket: from memory
    (entry,) = tmp_path.glob("*.json")
    data = json.loads(entry.read_text())
    assert data["config"] == FAST and data["key"]["sizes"]["N"] == 4096 and data["key"]["gpu"] == "NVIDIA H100 80GB HBM3"
    failed = [t for t in data["timings_ms"] if t["ms"] is None]
    assert failed and all(t["config"]["BLOCK_N"] == 32 for t in failed)

    second, calls2 = make(tmp_path)  # a second process: nothing timed, nothing launched
    assert second.best("sha256:abc", "tiled", cuda_like(), SIZES, launch_into(calls2)) == FAST
    assert second.tunings == 0 and calls2 == []


@pytest.mark.parametrize("damage", ["", "{not json", '{"key": {}, "config": {}}', "garbage\x00\xff", "edited"])
def test_a_corrupted_entry_is_retuned_and_rewritten(tmp_path, damage):
    tuner, calls = make(tmp_path)
    tuner.best("sha256:abc", "tiled", cuda_like(), SIZES, launch_into(calls))
    (entry,) = tmp_path.glob("*.json")
    if damage == "edited":  # a configuration that is no candidate (hand-edited, or from another version)
        data = json.loads(entry.read_text())
        data["config"] = {"BLOCK_M": 7}
        entry.write_text(json.dumps(data))
    else:
        entry.write_bytes(damage.encode("utf-8", "surrogateescape") if damage else b"")
    again, calls2 = make(tmp_path)
    assert again.best("sha256:abc", "tiled", cuda_like(), SIZES, launch_into(calls2)) == FAST
    assert again.tunings == 1 and json.loads(entry.read_text())["config"] == FAST
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]  # no temporary file left behind


def test_key_changes_with_dtype_gpu_triton_spec_and_size(tmp_path):
    base, _ = make(tmp_path)
    key = base.key("sha256:abc", "tiled", SIZES, torch.bfloat16, "cuda")
    variants = [make(tmp_path, gpu="NVIDIA H200")[0].key("sha256:abc", "tiled", SIZES, torch.bfloat16, "cuda"),
                make(tmp_path, triton="3.9.0")[0].key("sha256:abc", "tiled", SIZES, torch.bfloat16, "cuda"),
                base.key("sha256:abc", "tiled", SIZES, torch.float16, "cuda"),
                base.key("sha256:def", "tiled", SIZES, torch.bfloat16, "cuda"),
                base.key("sha256:abc", "tiled", {**SIZES, "N": 5000}, torch.bfloat16, "cuda")]
    assert all(v != key for v in variants) and len({json.dumps(v, sort_keys=True) for v in variants}) == 5
    assert [bucket(n) for n in (0, 1, 2, 3, 1000, 1024, 1025, 65536)] == [1, 1, 2, 4, 1024, 1024, 2048, 65536]


def test_interpreter_and_disabled_tuning_use_the_default(tmp_path, monkeypatch):
    tuner, calls = make(tmp_path)
    cpu = torch.zeros(1)
    for kind in CONFIGS:
        assert tuner.best("sha256:abc", kind, cpu, SIZES, launch_into(calls)) == INTERPRETER[kind]
    monkeypatch.setenv("ATTNCC_AUTOTUNE", "0")
    assert tuner.best("sha256:abc", "linear", cuda_like(), SIZES, launch_into(calls)) == CONFIGS["linear"][0]
    assert calls == [] and tuner.tunings == 0 and not list(tmp_path.iterdir())


def test_nothing_cached_when_no_candidate_runs(tmp_path):
    tuner = Tuner(tmp_path, timer=lambda fn: 1 / 0, environment=lambda device: {"gpu": "g", "triton": "t"})
    assert tuner.best("sha256:abc", "block_sparse", cuda_like(), SIZES, lambda **c: None) == CONFIGS["block_sparse"][0]
    assert not list(tmp_path.iterdir())


def _tune_in_process(directory: str, queue) -> None:
    tuner, calls = make(directory)
    queue.put((tuner.best("sha256:abc", "linear", cuda_like(), SIZES, launch_into(calls)), tuner.tunings))


def test_concurrent_processes_leave_one_valid_entry(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_tune_in_process, args=(str(tmp_path), queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    best = min(CONFIGS["linear"], key=lambda c: 2.0 + c["num_warps"] * 0.01)
    assert all(config == best for config, _ in results)
    (entry,) = tmp_path.glob("*")
    assert json.loads(entry.read_text())["config"] == best
    fresh, calls = make(tmp_path)
    assert fresh.best("sha256:abc", "linear", cuda_like(), SIZES, launch_into(calls)) == best and calls == []


def test_generated_launchers_ask_autotune(tmp_path):
    """The emitted Triton launchers pass their kind and sizes to autotune.best (default config off CUDA)."""
    import attncc
    from .conftest import ROOT
    seen = []
    original = autotune.TUNER.best
    try:
        autotune.TUNER.best = lambda *args: seen.append(args[1]) or original(*args)
        for name in ("causal", "hypercube", "linear_elu", "retention"):
            cls = attncc.compile(ROOT / "examples" / f"{name}.attn", backend="triton")
            q = torch.randn(1, 2, 20, 16)
            out = cls()(q, q, q)
            torch.testing.assert_close(out.double(), cls().reference(q, q, q), rtol=1e-4, atol=1e-4)
    finally:
        autotune.TUNER.best = original
    assert seen == ["tiled", "block_sparse", "linear", "linear_chunked"]


@pytest.mark.gpu
def test_tuning_on_cuda_is_cached_for_the_next_process(tmp_path, monkeypatch):
    import attncc
    from .conftest import ROOT
    cls = attncc.compile(ROOT / "examples" / "causal.attn", backend="triton")
    q, k, v = (torch.randn(2, 4, 1000, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for tunings in (1, 0):  # a fresh tuner on the same folder is what a second process sees
        tuner = Tuner(tmp_path)
        monkeypatch.setattr(autotune, "TUNER", tuner)
        out = cls()(q, k, v)
        ref = cls().reference(q, k, v)
        assert ((out.double() - ref).abs().max() / ref.abs().max()).item() < 2e-2
        assert tuner.tunings == tunings and tuner.last["config"] in CONFIGS["tiled"]
    assert len(list(tmp_path.glob("*.json"))) == 1
