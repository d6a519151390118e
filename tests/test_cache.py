"""The cache of generated code: keyed, atomic, safe under concurrent compiles, self-healing."""
import importlib.util
import inspect
import json
import linecache
import marshal
import multiprocessing
import os
import pickle
import shutil
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import sympy
import torch

import attncc
from attncc.runtime.cache import cache_dir, toolchain

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


def _plant_pyc(source: Path, form: str, payload: str) -> None:
    """Write `payload` compiled as the bytecode Python's import would take for `source`: a timestamp
    pyc with the source's mtime and size, or a hash-based one (unchecked, or checked with the
    source's own hash) - each one valid for the file as it stands."""
    flags = {"timestamp": 0, "unchecked-hash": 0b01, "checked-hash": 0b11}[form]
    if form == "timestamp":
        stat = source.stat()
        validation = struct.pack("<II", int(stat.st_mtime) & 0xFFFFFFFF, stat.st_size & 0xFFFFFFFF)
    else:
        validation = importlib.util.source_hash(source.read_bytes())
    code = compile(payload, str(source), "exec")
    pyc = Path(importlib.util.cache_from_source(str(source)))
    pyc.parent.mkdir(exist_ok=True)
    pyc.write_bytes(importlib.util.MAGIC_NUMBER + struct.pack("<I", flags) + validation + marshal.dumps(code))


@pytest.mark.parametrize("form", ["timestamp", "unchecked-hash", "checked-hash"])
def test_planted_bytecode_never_runs(tmp_path, monkeypatch, form):
    """The cache runs the text it checked: bytecode beside it (planted, or left by an import) is not read."""
    monkeypatch.setenv("ATTNCC_CACHE_DIR", str(tmp_path / "cache"))
    marker = tmp_path / "pwned"
    spec = f"attention planted_{form.replace('-', '_')} {{ mask(i, j) = j <= i }}"
    cls = attncc.compile(spec)
    (folder,) = _code_folders(tmp_path / "cache")
    for source in folder.glob("*.py"):
        _plant_pyc(source, form, f"open({str(marker)!r}, 'w').write('ran')\n")
    sys.modules.pop(cls.__module__)  # as in a fresh process: the next compile loads the entry again
    again = attncc.compile(spec)
    q = torch.randn(1, 1, 5, 4)
    for backend in ("torch", "triton"):
        again(backend=backend)(q, q, q)
    assert not marker.exists()
    assert {p.name for p in folder.iterdir()} == {"__pycache__", f"{cls.SPEC_NAME}.py", f"{cls.SPEC_NAME}_triton.py"}
    assert len(list((folder / "__pycache__").iterdir())) == 2  # nothing written beside the planted files


def test_generated_source_is_inspectable_and_pickles(tmp_path, monkeypatch):
    """Loaded from text, the module still has a file, source for inspect (Triton's @jit needs it) and pickles."""
    monkeypatch.setenv("ATTNCC_CACHE_DIR", str(tmp_path))
    cls = attncc.compile(SPEC)
    module = sys.modules[cls.__module__]
    assert Path(module.__file__).read_text() == cls.compilation.module_source
    assert "def forward_torch" in inspect.getsource(module.forward_torch)
    linecache.clearcache()  # still found afterwards (tracebacks, inspect)
    assert inspect.getsource(module) == cls.compilation.module_source
    original = cls(H=2)
    restored = pickle.loads(pickle.dumps(original))
    q = torch.randn(1, 2, 6, 8)
    assert type(restored) is cls and torch.equal(restored(q, q, q), original(q, q, q))
    assert not (_code_folders(tmp_path)[0] / "__pycache__").exists()


def _compiles_with_fallback(spec: str) -> Path:
    """Compile and run `spec`, expecting the cache warning; the folder the entry went to."""
    with pytest.warns(RuntimeWarning, match="set ATTNCC_CACHE_DIR to a writable folder"):
        cls = attncc.compile(spec)
    q = torch.randn(1, 1, 5, 4)
    cls(backend="triton")(q, q, q)
    return Path(sys.modules[cls.__module__].__file__).parent.parent


def test_cache_path_that_is_a_file_falls_back(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("ATTNCC_CACHE_DIR", str(tmp_path / "file"))
    used = _compiles_with_fallback("attention cache_is_file { mask(i, j) = j <= i }")
    assert used.name.startswith("attncc-cache-") and (used.stat().st_mode & 0o777) == 0o700
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per process
        attncc.compile("attention cache_is_file2 { mask(i, j) = j < i }")
    assert cache_dir() == used


def test_unwritable_home_falls_back(tmp_path, monkeypatch):
    (tmp_path / "home").write_text("HOME is a file: ~/.cache cannot be made")
    monkeypatch.delenv("ATTNCC_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert not str(_compiles_with_fallback("attention home_unwritable { mask(i, j) = j <= i }")).startswith(
        str(tmp_path))


def test_unwritable_entry_falls_back(tmp_path, monkeypatch):
    """The root can be written but the spec's own entry cannot (here: a file stands in its place)."""
    monkeypatch.setenv("ATTNCC_CACHE_DIR", str(tmp_path))
    spec = "attention entry_blocked { mask(i, j) = j + 1 <= i }"
    first = attncc.compile(spec)
    folder = Path(sys.modules[first.__module__].__file__).parent
    sys.modules.pop(first.__module__)
    shutil.rmtree(folder)
    folder.write_text("in the way")
    assert _compiles_with_fallback(spec) != tmp_path


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_cache_falls_back(tmp_path, monkeypatch):
    (tmp_path / "ro").mkdir(mode=0o500)
    monkeypatch.setenv("ATTNCC_CACHE_DIR", str(tmp_path / "ro"))
    assert _compiles_with_fallback("attention cache_read_only { mask(i, j) = j <= i }") != tmp_path / "ro"


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
