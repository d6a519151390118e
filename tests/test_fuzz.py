"""attncc fuzz: families with holes, shrinking to a minimal failing spec, the CLI."""
import torch

from attncc import fuzzing
from attncc.checking import Result
from attncc.cli import main
from attncc.fuzzing import DEFAULT_FAMILIES, family_strategy, fuzz

from .conftest import ROOT


def test_holes_are_filled_by_kind():
    for family in DEFAULT_FAMILIES:
        spec = family_strategy(family).example()
        assert "??" not in spec and spec.startswith("attention fuzz")


def test_default_families_pass_every_backend():
    """Every lowering of each family, the grid and ring ones included, at up to 40 tokens (the ring
    kernels do O(N rings m e) work, slow in Triton's interpreter)."""
    report = fuzz(DEFAULT_FAMILIES, 30, [("torch", torch.float32), ("triton", torch.float32)], max_tokens=40)
    assert report.failure is None and report.examples >= 30, report.error
    assert {"fft2", "rings"} <= set(report.lowerings), report.lowerings


def test_same_seed_same_specs(monkeypatch):
    seen = []
    real = fuzzing.compile_spec

    def recording(spec):
        if isinstance(spec, str):  # other lowerings reuse the first compilation
            seen.append(spec)
        return real(spec)
    monkeypatch.setattr(fuzzing, "compile_spec", recording)
    for _ in range(2):
        fuzz(DEFAULT_FAMILIES, 5, [("torch", torch.float32)], seed=7)
    assert seen[:len(seen) // 2] == seen[len(seen) // 2:]


def test_a_failure_is_shrunk_and_written(monkeypatch, tmp_path):
    real = fuzzing.compare

    def broken_modulo(module, q, k, v, inputs, backend, dtype, device="cpu"):
        result = real(module, q, k, v, inputs, backend, dtype, device)
        if "%" in module.compilation.source.text:  # pretend every spec using % is miscompiled
            return Result(backend, dtype, (), 1.0, result.tolerance)
        return result

    monkeypatch.setattr(fuzzing, "compare", broken_modulo)
    report = fuzz(["attention f { mask(i, j) = ?? }"], 200, [("torch", torch.float32)])
    assert report.failure is not None and "%" in report.failure
    assert len(report.failure) < 60  # shrunk to a small mask around one `%`
    fuzzing.write_failure(report, tmp_path / "min.attn")
    assert "minimal failing spec" in (tmp_path / "min.attn").read_text()


def test_cli_fuzz_on_a_family_and_on_plain_specs(tmp_path, capsys):
    family = tmp_path / "family.attn"
    family.write_text("attention fam {\n size b = 8\n mask(i, j) = ?? and i // b >= j // b\n}\n")
    assert main(["fuzz", str(family), str(ROOT / "examples" / "hypercube.attn"), "--examples", "12"]) == 0
    assert "every backend matches the reference" in capsys.readouterr().out
