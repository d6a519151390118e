"""The cache of generated code: keyed, atomic, safe under concurrent compiles, self-healing."""
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sympy
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


def _code_folders(cache) -> list:
    """The folders of generated code (the analysis results lie beside them, in `analysis`)."""
    return [p for p in cache.iterdir() if p.name != "analysis"]


def test_concurrent_compiles_give_one_correct_entry(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.map(_compile_and_run, [str(tmp_path)] * 4)
    assert len(set(results)) == 1
    folders = _code_folders(tmp_path)
    assert len(folders) == 1
    assert sorted(p.name for p in folders[0].iterdir()) == ["alibi.py", "alibi_triton.py"]
    assert len(list((tmp_path / "analysis").iterdir())) == 1  # one spec, one record of its analysis


def test_corrupted_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNCC_CACHE_DIR", str(tmp_path))
    attncc.compile(SPEC)
    (folder,) = _code_folders(tmp_path)
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


CHILD = """
import json, sys
import attncc
from attncc.analysis.session import STATS
cls = attncc.compile(sys.argv[1])
print(json.dumps({"proved": STATS["proved"], "reused": STATS["reused"], "hash": cls.SPEC_HASH,
                  "log": cls.compilation.log, "module": cls.compilation.module_source}))
"""


def _compile_in_a_fresh_process(cache, spec: str) -> dict:
    env = {**os.environ, "ATTNCC_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", CHILD, spec], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_second_process_reuses_the_analysis(tmp_path):
    """Retention's mask, modulation and decay are proven once: the next process reads the results
    (no proof runs) and generates the same module with the same notes."""
    spec = str(ROOT / "examples" / "retention.attn")
    first = _compile_in_a_fresh_process(tmp_path, spec)
    second = _compile_in_a_fresh_process(tmp_path, spec)
    assert first["proved"] >= 3 and first["reused"] == 0
    assert second["proved"] == 0 and second["reused"] == first["proved"]
    assert (second["hash"], second["log"], second["module"]) == (first["hash"], first["log"], first["module"])


def _stored_analysis(cache) -> Path:
    (path,) = (cache / "analysis").iterdir()
    return path


def test_damaged_analysis_records_are_proven_again(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNCC_CACHE_DIR", str(tmp_path))
    spec = ROOT / "examples" / "retention.attn"
    want = attncc.compile(spec).compilation.module_source
    path = _stored_analysis(tmp_path)
    good = json.loads(path.read_text())
    for damage in ("{not json", json.dumps({key: {"kind": ["Symbol", "x"]} for key in good}), json.dumps([1, 2])):
        path.write_text(damage)
        assert attncc.build(spec).module_source == want
    # a well-formed record with a wrong claim (a causal mask stored as full) fails its sampled check
    path.write_text(json.dumps({key: {"kind": "full", "lo": "-oo", "hi": "oo", "reason": "tampered"}
                                if key.startswith("mask:") else value for key, value in good.items()}))
    assert attncc.build(spec).module_source == want
    assert json.loads(path.read_text()) == good  # and the record is repaired


def test_stored_bounds_decode_to_the_same_expressions():
    from attncc.analysis.session import sympy_from_json, sympy_to_json
    w, n = sympy.Symbol("w", integer=True, nonnegative=True), sympy.Symbol("N", integer=True, positive=True)
    symbols = {"w": w, "N": n}
    for e in (-w, sympy.Max(-w, -n + 1), sympy.floor(n / 2) - 1, sympy.Rational(3, 2) * w, sympy.oo, -sympy.oo,
              sympy.Integer(0), sympy.Min(w, 5), sympy.ceiling(w / 3)):
        assert sympy_from_json(sympy_to_json(e), symbols) == e
    for bad in (["Symbol", "os"], ["eval", "1"], ["Rational", 1, 0], "i", 1.5, [], {"a": 1}):
        with pytest.raises(ValueError):
            sympy_from_json(bad, symbols)
