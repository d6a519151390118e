"""The attncc command line."""
import ast as pyast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attncc
from attncc.cli import main

from .conftest import ROOT

SPEC = str(ROOT / "examples" / "sliding_window.attn")


def test_compile_writes_module(tmp_path, capsys):
    assert main(["compile", SPEC, "-o", str(tmp_path)]) == 0
    main_source = (tmp_path / "sliding_window.py").read_text()
    kernels = (tmp_path / "sliding_window_triton.py").read_text()
    pyast.parse(main_source)
    pyast.parse(kernels)
    assert "def forward_torch" in main_source and "import triton" not in main_source
    assert "@triton.jit" in kernels
    assert "lowering tiled" in capsys.readouterr().out


@pytest.mark.parametrize("stage", ["ast", "ir", "optimized", "plan"])
@pytest.mark.parametrize("emit", [None, "triton", "torch", "module", "ir", "dot"])
def test_inspect_every_stage(stage, emit, capsys):
    args = ["inspect", SPEC, "--stage", stage] + (["--emit", emit] if emit else [])
    assert main(args) == 0
    out = capsys.readouterr().out
    expected = {"triton": "@triton.jit", "torch": "def forward_torch", "module": "class Module",
                "ir": "graph sliding_window", "dot": "digraph"}.get(emit) or \
        {"ast": "attention sliding_window {", "ir": "= attend(", "optimized": "mask_structure=",
         "plan": "chosen: tiled"}[stage]
    assert expected in out


def test_inspect_plan_explains_the_band(capsys):
    main(["inspect", SPEC])
    out = capsys.readouterr().out
    assert "band -window <= i - j <= window" in out and "backend auto" in out


def test_check_passes_and_prints_a_table(capsys):
    assert main(["check", str(ROOT / "examples" / "linear_elu_causal.attn")]) == 0
    out = capsys.readouterr().out
    assert "all backends match the reference" in out and "triton" in out


def test_forced_lowering_that_does_not_apply(capsys):
    assert main(["inspect", SPEC, "--lowering", "fft"]) == 2
    assert "does not apply" in capsys.readouterr().err


def test_importing_attncc_leaves_triton_unimported():
    """`attncc check` on the CPU sets TRITON_INTERPRET after `import attncc` (the console script imports
    the package first): Triton must not have been imported by then, or its kernels run compiled."""
    code = "import sys, attncc, attncc.cli; print('triton' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"


def _bad_arguments(tmp_path) -> dict[str, list[str]]:
    (tmp_path / "file").write_text("a file, not a folder")
    (tmp_path / "folder").mkdir()
    return {
        "-o is a file": ["compile", SPEC, "-o", str(tmp_path / "file")],
        "-o under /dev/null": ["compile", SPEC, "-o", "/dev/null/out"],
        "-o under a file": ["compile", SPEC, "-o", str(tmp_path / "file" / "deeper")],
        "png under /dev/null": ["inspect", SPEC, "--emit", "mask-png", "-o", "/dev/null/mask.png"],
        "png is a folder": ["inspect", SPEC, "--emit", "mask-png", "-o", str(tmp_path / "folder")],
        "--device tpu": ["check", SPEC, "--device", "tpu"],
        "--seed 2**70": ["check", SPEC, "--seed", "2**70"],
        "--seed huge": ["check", SPEC, "--seed", str(2**70)],
        "--seed negative": ["fuzz", SPEC, "--seed", "-1"],
        "--examples 0": ["fuzz", SPEC, "--examples", "0"],
        "--tokens 0": ["inspect", SPEC, "--emit", "mask-png", "--tokens", "0"],
        "fuzz --out is a folder": ["fuzz", SPEC, "--out", str(tmp_path / "folder")],
        "bench --heads 0": ["bench", SPEC, "--heads", "0", "--dry-run"],
        "SPEC is a folder": ["inspect", str(tmp_path / "folder")],
        "SPEC is missing": ["check", str(tmp_path / "missing.attn")],
        "bench SPEC is a folder": ["bench", f"{tmp_path / 'folder'}@tiled", "--dry-run"],
        "fuzz SPEC is a folder": ["fuzz", str(tmp_path / "folder")],
    }


def test_bad_arguments_are_usage_errors(tmp_path, capsys):
    """Every bad path, option value or device: a one-line error naming it, exit code 2, nothing written."""
    for name, argv in _bad_arguments(tmp_path).items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert "error:" in err and "internal error" not in err and "Traceback" not in err, (name, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"] and not any((tmp_path / "folder").iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_device_cuda_without_a_gpu(capsys):
    for command in (["check", SPEC], ["bench", SPEC, "--dry-run"]):
        assert main([*command, "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_a_spec_file_with_another_suffix_is_read_as_a_file(tmp_path, capsys):
    spec = tmp_path / "window.txt"
    spec.write_text((ROOT / "examples" / "sliding_window.attn").read_text())
    assert main(["inspect", str(spec), "--stage", "ast"]) == 0
    assert "attention sliding_window {" in capsys.readouterr().out
    assert attncc.compile(str(spec)).SPEC_NAME == "sliding_window"


def test_unwritable_output_is_a_usage_error(tmp_path, capsys, monkeypatch):
    """A folder that exists but cannot be written (a read-only mount; simulated: root writes anywhere)."""
    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_text", refuse)
    assert main(["compile", SPEC, "-o", str(tmp_path)]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_unwritable_cache_is_a_one_line_warning(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("ATTNCC_CACHE_DIR", str(tmp_path / "file"))
    assert main(["inspect", SPEC, "--stage", "ast"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("attncc: cannot write the cache") and "set ATTNCC_CACHE_DIR" in err
    assert "RuntimeWarning" not in err and len(err.splitlines()) == 1
