"""The cache of generated code: keyed, atomic, safe under concurrent compiles, self-healing."""
import multiprocessing
import os

import torch

import attncc
from attncc.runtime.compiled import toolchain

from .conftest import ROOT

SPEC = str(ROOT / "examples" / "alibi.attn")


def _compile_and_run(cache: str) -> tuple[str, float]:
    os.environ["ATTNCC_CACHE_DIR"] = cache
    import attncc as fresh  # a fresh process: nothing compiled yet
    cls = fresh.compile(SPEC)
    module = cls(H=2)
    torch.manual_seed(0)
    q = torch.randn(1, 2, 9, 8)
    return cls.compilation.spec_hash, float(module(q, q, q).sum())


def test_concurrent_compiles_give_one_correct_entry(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.map(_compile_and_run, [str(tmp_path)] * 4)
    assert len(set(results)) == 1
    folders = list(tmp_path.iterdir())
    assert len(folders) == 1
    assert sorted(p.name for p in folders[0].iterdir()) == ["alibi.py", "alibi_triton.py"]


def test_corrupted_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNCC_CACHE_DIR", str(tmp_path))
    attncc.compile(SPEC)
    (folder,) = tmp_path.iterdir()
    good = (folder / "alibi.py").read_text()
    (folder / "alibi.py").write_bytes(b"\xff\x00 garbage")
    (folder / "alibi_triton.py").write_text(good[: len(good) // 3])
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        (result,) = pool.map(_compile_and_run, [str(tmp_path)])
    assert (folder / "alibi.py").read_text() == good
    assert result[0] == attncc.compile(SPEC).compilation.spec_hash


def test_key_names_the_toolchain():
    assert torch.__version__ in toolchain() and "triton" in toolchain()
