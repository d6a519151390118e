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
    ref = reference_mask(m, inputs, B, H, N, N, "cpu", dim=8).expand(B, H, N, N)
    assert torch.equal(ours, ref)
    assert 0 < int(ref.sum()) < B * H * N * N
    assert count_pairs(m, inputs, B, H, N, N, "cpu", dim=8) == int(ref.sum())


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


# ---------------------------------------------------------------------- issue 14's variants
VARIANTS = ["gqa", "sinks", "mla", "simple_gla", "gla", "based", "diff_transformer", "gated_mix"]


def _variant(name: str):
    path = ROOT / "examples" / f"{name}.attn"
    if not path.exists():
        pytest.skip(f"examples/{name}.attn is not in this checkout")
    return path


def test_bench_inputs_follow_the_declarations():
    """g / G are cumulative log-gates along the token axis (non-increasing, a few % per token); row
    inputs (mla) random normal of the declared shape; every input carries the batch axis."""
    cls = attncc.compile(ROOT / "examples" / "simple_gla.attn", backend="torch")
    g = bench_inputs(cls, 2, 300, 7, "cpu", heads=3, dim=8)["g"]
    assert g.shape == (2, 3, 300) and bool((g.diff(dim=-1) <= 0).all())
    assert -0.2 < float(g[..., -1].mean()) / 300 < -0.01
    cls = attncc.compile(ROOT / "examples" / "mla.attn", backend="torch")
    rows = bench_inputs(cls, 2, 40, 7, "cpu", heads=3, dim=8, dtype=torch.bfloat16)
    assert rows["q_rope"].shape == (2, 3, 40, 16) and rows["k_rope"].shape == (2, 40, 16)
    assert torch.equal(rows["k_rope"], rows["k_rope"].bfloat16().float())  # rounded: baselines see the same
    if (ROOT / "examples" / "gla.attn").exists():
        cls = attncc.compile(ROOT / "examples" / "gla.attn", backend="torch")
        G = bench_inputs(cls, 2, 50, 7, "cpu", heads=3, dim=8)["G"]
        assert G.shape == (2, 3, 50, 8) and bool((G.diff(dim=2) <= 0).all())


@pytest.mark.parametrize("name", ["gqa", "sinks", "mla", "diff_transformer", "gated_mix", "causal"])
def test_variant_baselines_with_grouped_kv(name):
    """k, v with 1 head for q's 3: naive (expanded), SDPA and Flex (enable_gqa, eager on the CPU)
    compute what attncc's reference computes on the same grouped call."""
    _, m, inputs = _setup(name)
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(B, H, N, 8, generator=gen)
    k, v = (torch.randn(B, 1, N, 8, generator=gen) for _ in range(2))
    ref = m.reference(q.double(), k.double(), v.double(), **inputs)
    fam = bl.FAMILIES[name]
    err = lambda out: ((out.double() - ref).abs().max() / ref.abs().max()).item()  # noqa: E731
    assert err(bl.naive(fam, m, inputs, q, k, v)) < 1e-5
    if fam.custom is not None:
        for base in fam.offers:
            try:
                fn, unpack, note = fam.custom(base, m, inputs, q, k, v, False)
            except bl.Unavailable as exc:
                assert (name, base) == ("sinks", "sdpa") and "sink" in str(exc) or "q's heads" in str(exc), exc
                continue
            except ImportError:  # fla is not installed on the CPU machine
                continue
            assert err(unpack(fn())) < 1e-5, (base, note)
        return
    assert err(bl.sdpa(fam, q, k, v, m, inputs)[0]()) < 1e-5
    assert err(bl.flex(fam, m, inputs, q, k, v, compiled=False)[0]()) < 1e-5


def test_fla_calls_follow_fla_conventions(monkeypatch):
    """Our calls of chunk_simple_gla / chunk_gla (layout [B, T, H, K], per-step log-gates, scale), with
    fla's own naive recurrences from the bundled wheel standing in for the Triton kernels (no GPU
    here), equal attncc's reference."""
    import glob
    import sys
    wheels = sorted(glob.glob(str(ROOT / "benchmarks" / "wheels" / "*.whl")))
    monkeypatch.setattr(sys, "path", sys.path + [w for w in wheels if "fla" in w or "einops" in w])
    # fla's modules only: triton and others it imports may not be imported twice (C extensions)
    forget = lambda: [sys.modules.pop(n) for n in list(sys.modules) if n == "fla" or n.startswith("fla.")]  # noqa: E731
    try:
        import fla.ops.gla as gla_ops
        import fla.ops.simple_gla as sgla_ops
        from fla.ops.gla.naive import naive_recurrent_gla
        from fla.ops.simple_gla.naive import naive_recurrent_simple_gla
    except Exception as exc:  # noqa: BLE001  (no triton or no wheel here)
        forget()
        pytest.skip(f"fla from benchmarks/wheels does not import here: {exc}")
    try:
        _check_fla_conventions(monkeypatch, gla_ops, sgla_ops, naive_recurrent_gla, naive_recurrent_simple_gla)
    finally:  # later tests must not find a wheel's fla that cannot run here
        forget()


def _check_fla_conventions(monkeypatch, gla_ops, sgla_ops, naive_recurrent_gla, naive_recurrent_simple_gla):
    monkeypatch.setattr(sgla_ops, "chunk_simple_gla", lambda q, k, v, g, scale: naive_recurrent_simple_gla(
        q, k, v, g, scale=scale))
    def gla(q, k, v, g, scale):
        assert scale == pytest.approx(q.shape[-1] ** -0.5)  # naive_recurrent_gla's fixed scale
        return naive_recurrent_gla(q, k, v, g)
    monkeypatch.setattr(gla_ops, "chunk_gla", gla)
    for name in ("simple_gla", "gla"):
        if not (ROOT / "examples" / f"{name}.attn").exists():
            continue
        _, m, inputs = _setup(name, n=120)
        q, k, v = _qkv(n=120)
        ref = m.reference(q, k, v, **inputs)
        fn, unpack, _ = bl.FAMILIES[name].custom("fla", m, inputs, q.float(), k.float(), v.float(), False)
        assert ((unpack(fn()).double() - ref).abs().max() / ref.abs().max()).item() < 1e-5, name


def test_variants_run_and_the_dry_run_lists_them(capsys, monkeypatch):
    """Every variant through the runner on the CPU (grouped k, v by `:kv=`); the suite's dry run lists
    them after issue 5's specs; gla is reported as not run where its example is missing."""
    specs = [str(ROOT / "examples" / n) + ".attn" for n in ("gqa", "simple_gla", "sinks", "mla")]
    cfg = BenchConfig(device="cpu", batch=1, heads=4, dims=(8,), lengths=(40,), min_run_time=0.002,
                      baselines=("sdpa", "flex", "fla", "naive"), sizes={"window": 8})
    rows = Runner(cfg, log=lambda msg: None).run([specs[0] + ":kv=2", *specs[1:]])
    by = {(r["spec"], r["impl"]): r for r in rows}
    assert by[("gqa:kv=2", "attncc")]["kv_heads"] == 2 and by[("gqa:kv=2", "attncc")]["ms"] > 0
    for key in [("gqa:kv=2", "sdpa"), ("gqa:kv=2", "naive"), ("simple_gla", "naive"), ("sinks", "naive"),
                ("sinks", "flex"), ("mla", "sdpa"), ("mla", "naive")]:
        assert by[key]["rel_diff"] < 1e-5, by[key]
    assert by[("sinks", "sdpa")]["note"].startswith("n/a: SDPA has no sink term")
    assert "fla" in {i for s, i in by if s == "simple_gla"}  # timed, or skipped with the reason
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import suite
    monkeypatch.setattr("sys.argv", ["suite.py", "--device", "cpu", "--dry-run", "--set", "all", "--specs", "causal",
                                     "--lengths", "64", "--dims", "16", "--variant-lengths", "64"])
    assert suite.main() == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("causal d=16 N=64 ")
    for name in suite.VARIANTS:
        stem = name.partition(":")[0]
        if (ROOT / "examples" / f"{stem}.attn").exists():
            assert any(line.startswith(f"{name} d=64 N=64 (") for line in out), name
        else:
            assert f"{name}: not run: examples/{stem}.attn is not in this checkout" in out
    assert any(line.startswith("gqa:kv=4 d=64 N=64 (") and line.endswith("): attncc, sdpa, flex, naive")
               for line in out)
    assert any(line.startswith("sinks d=64 N=64 (") and line.endswith("): attncc, sdpa, flex, naive")
               for line in out)
    assert any(line.startswith("simple_gla d=64 N=64 (linear_gated): attncc, fla, naive") for line in out)


def test_kv_suffix_errors():
    from attncc.tools.benchmark import split_spec
    assert split_spec("x/gqa.attn@tiled:kv=4") == ("x/gqa.attn", "tiled", 4)
    with pytest.raises(ValueError, match="key/value heads"):
        split_spec("gqa.attn:kv=four")
    with pytest.raises(ValueError, match="do not divide"):
        Runner(BenchConfig(device="cpu", heads=4)).kv_heads("gqa.attn:kv=3")
