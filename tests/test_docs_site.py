"""The documentation: the site builds strictly, every spec in it compiles, every self-contained
Python block runs (blocks marked `<!-- fragment: why -->` are only lexed, see markdown_blocks)."""
from __future__ import annotations

import doctest
import os
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

import attncc

from .markdown_blocks import ROOT, code_blocks

SPEC_BLOCKS = code_blocks("attn")
PYTHON_BLOCKS = [b for b in code_blocks("python") if not b.fragment]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="the docs site needs the test extra: pip install -e '.[test]'")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                             "-d", str(out)], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def test_the_site_builds_strictly_with_an_api_reference(site):
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for documented in ("attncc.api.compile", "attncc.nn.layers.AttentionLayer", "attncc.tools.testing.mask_expressions"):
        assert f'id="{documented}"' in api, documented


def test_attn_blocks_are_highlighted_by_the_attncc_lexer(site):
    if not entry_points(group="pygments.lexers", name="attn"):
        pytest.skip("the installed metadata predates the `attn` lexer entry point: pip install -e .")
    index = (site / "index.html").read_text(encoding="utf-8")
    assert '<span class="k">attention</span>' in index and '<span class="nb">softmax</span>' in index


@pytest.mark.parametrize("block", SPEC_BLOCKS, ids=lambda b: b.where)
def test_every_spec_in_the_docs_compiles(block):
    assert not block.fragment, "spec blocks are whole specs; a fragment belongs in a ```text block"
    attncc.build(block.text)


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.where)
def test_every_self_contained_python_block_runs(block, monkeypatch):
    monkeypatch.chdir(ROOT)  # blocks name specs as examples/NAME.attn
    if block.text.lstrip().startswith(">>>"):
        test = doctest.DocTestParser().get_doctest(block.text, {"attncc": attncc}, block.where, str(block.path), block.line)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        runner.run(test)
        assert runner.summarize(verbose=False).failed == 0
    else:
        try:
            exec(compile(block.text, block.where, "exec"), {"__name__": "__docs__"})
        except ModuleNotFoundError as exc:  # a block about an optional package (transformers, ...)
            if exc.name.split(".")[0] == "attncc":
                raise
            pytest.skip(f"{block.where} needs {exc.name}, which is not installed (the `test` extra has it)")


def test_blocks_were_found():
    assert len(SPEC_BLOCKS) >= 20 and len(PYTHON_BLOCKS) >= 5
