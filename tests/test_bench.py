"""The benchmark harness on the CPU: baselines compute what the spec means, the CLI runs end to end."""
from __future__ import annotations

import json

import pytest
import torch

import attncc
from attncc.tools import baselines as bl
from attncc.tools.benchmark import BenchConfig, Runner, bench_inputs, count_pairs, instantiate, reference_mask
from attncc.cli import main

from .conftest import ROOT

# small sizes so that short sequences still cross blocks, windows and documents
SMALL = {"window": 5, "chunk": 8, "block": 4, "stride": 3}
B, H, N = 2, 3, 50


def _setup(name: str, n: int = N, d: int = 8, doc_len: int = 7):
    path = ROOT / "examples" / f"{name}.attn"
    if not path.exists():  # gla: examples/gla.attn lands with the per-dimension gates (issue 14)
        pytest.skip(f"examples/{name}.attn is not in this checkout")
    cls = attncc.compile(path, backend="torch")
    m = instantiate(cls, heads=H, tokens=n, dim=d, **{k: v for k, v in SMALL.items() if k in cls.SIZES}).eval()
    with torch.no_grad():  # tables away from their initial values (ripple's start at zero: no modulation)
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    return cls, m, bench_inputs(cls, B, n, doc_len, "cpu", heads=H, dim=d)


def _qkv(n=N, d=8, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, d, generator=gen, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("name", sorted(n for n, f in bl.FAMILIES.items() if f.mask))
def test_mask_mods_are_the_reference_masks(name):
    """Each hand-written mask_mod, on index grids, is exactly attncc's reference mask (and the pair
    count that TFLOP/s uses agrees with both)."""
    _, m, inputs = _setup(name)
    mod = bl.FAMILIES[name].mask(m, inputs)
    ours = bl.grid_mask(mod, B, H, N, N, "cpu").expand(B, H, N, N)
    ref = reference_mask(m, inputs, B, H, N, N, "cpu").expand(B, H, N, N)
    assert torch.equal(ours, ref)
    assert 0 < int(ref.sum()) < B * H * N * N
    assert count_pairs(m, inputs, B, H, N, N, "cpu") == int(ref.sum())


@pytest.mark.parametrize("name", sorted(bl.FAMILIES))
def test_naive_baselines_match_the_reference(name):
    """naive (mask_mod, score_mod, feature map, modulation, normalization) in float64 == m.reference."""
    _, m, inputs = _setup(name, n=40 if name != "rpe_performer" else 24)
    q, k, v = _qkv(n=40 if name != "rpe_performer" else 24)
    out = bl.naive(bl.FAMILIES[name], m, inputs, q, k, v)
    torch.testing.assert_close(out, m.reference(q, k, v, **inputs), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["toeplitz_linear", "rpe_performer"])
def test_fft_baseline_matches_the_reference(name):
    _, m, inputs = _setup(name, n=33)
    q, k, v = _qkv(n=33, dtype=torch.float32)
    out = bl.fft_naive(bl.FAMILIES[name], m, q, k, v)
    ref = m.reference(q, k, v)
    assert ((out.double() - ref).abs().max() / ref.abs().max()).item() < 1e-4


@pytest.mark.parametrize("name", ["causal", "alibi", "document", "hypercube"])
def test_flex_with_the_mods_matches_the_reference(name):
    """FlexAttention (eager on the CPU) with the family's mods and BlockMask computes the spec."""
    _, m, inputs = _setup(name)
    q, k, v = _qkv(dtype=torch.float32)
    fn, make_mask = bl.flex(bl.FAMILIES[name], m, inputs, q, k, v, compiled=False)
    ref = m.reference(q, k, v, **inputs)
    assert ((fn().double() - ref).abs().max() / ref.abs().max()).item() < 1e-5
    assert make_mask is not None


def test_bench_cli_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", str(ROOT / "examples" / "causal.attn"), str(ROOT / "examples" / "retention.attn"),
            "--device", "cpu", "--dims", "16", "--lengths", "48", "--batch", "1", "--heads", "2",
            "--min-run-time", "0.002", "--baselines", "sdpa,fla,naive", "-o", str(out)]
    assert main(args) == 0
    rows = json.loads(out.read_text())["results"]
    by = {(r["spec"], r["impl"]): r for r in rows}
    for key in [("causal", "attncc"), ("causal", "sdpa"), ("causal", "naive"), ("retention", "naive")]:
        assert by[key]["ms"] > 0, by[key]
    assert by[("causal", "naive")]["rel_diff"] < 1e-5 and by[("retention", "naive")]["rel_diff"] < 1e-5
    assert by[("causal", "attncc")]["pairs"] == 2 * 48 * 49 // 2
    assert "fla" in {i for _, i in by}  # reported (timed, or skipped with the reason), never dropped
    table = out.with_suffix(".md").read_text()
    assert "| causal | 16 | 48 | attncc | fwd |" in table


def test_dry_run_and_budget(capsys):
    assert main(["bench", str(ROOT / "examples" / "linear_elu_causal.attn"), str(ROOT / "examples" / "alibi.attn"),
                 str(ROOT / "examples" / "ripple.attn") + "@rings",
                 "--device", "cpu", "--dims", "64", "--lengths", "1024", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "ripple@rings d=64 N=1024 (rings): attncc, naive" in lines
    assert "linear_elu_causal d=64 N=1024 (linear_chunked): attncc, fla, naive" in lines
    assert "alibi d=64 N=1024 (tiled): attncc, flex, naive" in lines
    cfg = BenchConfig(device="cpu", dims=(8,), lengths=(16,), budget_s=1e-9)
    rows = Runner(cfg, log=lambda msg: None).run([ROOT / "examples" / "causal.attn"])
    assert [r["note"] for r in rows] == ["not run: time budget spent"]


def test_suite_targets_are_read_off_the_rows(monkeypatch):
    """ratio = baseline ms / attncc ms against each target; a missing measurement is never a pass."""
    import subprocess
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import suite

    def row(spec, impl, ms, n=16384, lowering="tiled", per_token=None):
        return {"spec": spec, "impl": impl, "d": 64, "N": n, "mode": "fwd", "ms": ms, "lowering": lowering,
                "bytes_per_token": per_token}
    rows = [row("causal", "attncc", 5.0), row("causal", "flex", 5.6), row("causal", "sdpa", 4.9),
            row("hypercube", "attncc", 1.0, lowering="block_sparse", per_token=100.0),
            row("hypercube", "flex", 3.5), row("hypercube", "attncc", 0.3, n=4096, lowering="block_sparse",
                                                per_token=300.0)]
    found = {(t["target"], t["spec"], t["N"]): t for t in suite.targets(rows)}
    assert found[(">= 95% of compiled Flex", "causal", 16384)]["met"] is True
    assert found[("faster than SDPA flash", "causal", 16384)]["met"] is False
    assert found[(">= 3.0x compiled Flex + BlockMask", "hypercube", 16384)]["ratio"] == 3.5
    assert found[(">= 3.0x compiled Flex + BlockMask", "hypercube", 4096)]["met"] is None  # Flex not measured
    assert found[("memory linear in N: bytes/token at N=16384 over N=4096", "hypercube", 16384)]["met"] is True
    assert "MISSED" in suite.targets_markdown(suite.targets(rows))
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_suite.sh")]).returncode == 0
