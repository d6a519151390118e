"""The wheel carries the one grammar (grammar/ at the top of the repository) and the Pygments entry point."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

from .markdown_blocks import ROOT

PROJECT_FILES = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "attncc", "grammar"]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """A source distribution built from a copy of the project (a build leaves build/ and egg-info behind)."""
    pytest.importorskip("setuptools", minversion="64")  # build_py.editable_mode (setup.py)
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("sdist")
    for name in PROJECT_FILES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    build = f"from setuptools import build_meta; build_meta.build_sdist({str(out)!r})"
    subprocess.run([sys.executable, "-c", build], cwd=source, check=True, capture_output=True, timeout=300)
    return next(out.glob("attncc-*.tar.gz"))


@pytest.fixture(scope="module")
def wheel(sdist, tmp_path_factory):
    """The wheel pip builds from the sdist (what `pip install attncc-*.tar.gz` installs)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(sdist), "-w", str(out), "--no-deps",
                    "--no-build-isolation", "-q"], check=True, capture_output=True, timeout=300)
    return next(out.glob("attncc-*.whl"))


def test_the_sdist_carries_the_grammar(sdist):
    names = {name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name}
    assert {"grammar/attn.lark", "grammar/attn.tmLanguage.json", "setup.py"} <= names


def test_the_wheel_holds_the_grammar_once_and_registers_the_lexer(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if n.endswith(".lark")] == ["attncc/grammar/attn.lark"]
    assert "attncc/grammar/attn.tmLanguage.json" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "attn = attncc.tools.highlight:AttnLexer" in entry_points
    packaged = zipfile.ZipFile(wheel).read("attncc/grammar/attn.lark").decode()
    assert packaged == (ROOT / "grammar" / "attn.lark").read_text(encoding="utf-8")


def test_an_installed_wheel_parses_with_its_packaged_grammar(wheel, tmp_path):
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)  # what `pip install` lays out, without touching the venv
    code = ("import attncc; from attncc.frontend.parse import grammar_path; "
            "from attncc.tools.highlight import AttnLexer; "
            f"print(grammar_path()); attncc.build(open({str(ROOT / 'examples' / 'causal.attn')!r}).read()); "
            "print(len(list(AttnLexer().get_tokens('mask(i, j) = j <= i'))))")
    env = {**os.environ, "PYTHONPATH": str(target)}  # run outside the checkout, which `-c` would put first
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == str(target / "attncc" / "grammar" / "attn.lark")
