"""attncc fuzz: families with holes, shrinking to a minimal failing spec, the CLI."""
import subprocess
import sys

import torch

from attncc.tools import fuzzing
from attncc.tools.compare import Result
from attncc.cli import main
from attncc.tools.fuzzing import DEFAULT_FAMILIES, family_strategy, fuzz

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


RECORD_SPECS = """
import sys, torch
from attncc.tools import fuzzing
seen, real = [], fuzzing.compile_spec
fuzzing.compile_spec = lambda spec: (seen.append(spec) if isinstance(spec, str) else None) or real(spec)
fuzzing.fuzz(fuzzing.DEFAULT_FAMILIES, 5, [("torch", torch.float32)], seed=7)
sys.stdout.write(repr(seen))
"""


def test_same_seed_same_specs():
    """Two fresh processes: within one, Hypothesis also draws constants found in the modules
    imported so far (the generated ones included), so a second run in the same process may differ."""
    runs = [subprocess.run([sys.executable, "-c", RECORD_SPECS], capture_output=True, text=True, cwd=ROOT,
                           check=True).stdout for _ in range(2)]
    assert runs[0] == runs[1] and "attention fuzz" in runs[0]


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


def test_a_family_the_checker_always_rejects_tests_nothing_and_fails(tmp_path, capsys, monkeypatch):
    """A typo in a family rejects every spec filled from it: that is reported, not "no failure"."""
    family = tmp_path / "typo.attn"
    family.write_text("attention typo {\n    mask(i, j) = ?? and j <== i\n}\n")
    report = fuzz([family.read_text(), "attention fine { mask(i, j) = ?? }"], 6, [("torch", torch.float32)])
    assert list(report.untested()) == [0] and "unexpected `=`" in report.untested()[0]
    monkeypatch.setenv("COLUMNS", "1000")  # rich wraps nothing
    assert main(["fuzz", str(family), "--examples", "3"]) == 1
    out = capsys.readouterr().out
    assert f"nothing tested of {family}: the checker rejected" in out and "j <== i" in out
    assert "every backend matches" not in out
