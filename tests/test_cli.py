"""The attncc command line."""
import ast as pyast
import os
import subprocess
import sys

import pytest

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
    assert main(["inspect", SPEC, "--lowering", "fft"]) == 1
    assert "does not apply" in capsys.readouterr().err


def test_importing_attncc_leaves_triton_unimported():
    """`attncc check` on the CPU sets TRITON_INTERPRET after `import attncc` (the console script imports
    the package first): Triton must not have been imported by then, or its kernels run compiled."""
    code = "import sys, attncc, attncc.cli; print('triton' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"
