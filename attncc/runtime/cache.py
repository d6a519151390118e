"""The cache of generated code: where it lives, how files are written, how they are loaded.

Generated modules are executed from the text whose content was checked, never through Python's
import machinery: that would read (and write) bytecode in the cache's `__pycache__`, and a `.pyc`
planted there (timestamp, unchecked-hash or checked-hash form) would run instead of the checked
text. `load_module` compiles the verified text itself and keeps it in memory for the sibling
kernels file and for `inspect.getsource` (Triton's `@jit` reads its kernels' source that way).
"""
from __future__ import annotations

import functools
import hashlib
import json
import linecache
import os
import sys
import tempfile
import types
import warnings
from importlib import metadata
from importlib.machinery import ModuleSpec
from pathlib import Path

import torch

CACHE_ENV = "ATTNCC_CACHE_DIR"
_FALLBACKS: dict[str, Path] = {}  # unwritable cache root -> the private folder used instead (per process)
_VERIFIED: dict[str, str] = {}  # path of a generated file -> the text checked and written there


def configured_cache_dir() -> Path:
    """The cache root users chose: $ATTNCC_CACHE_DIR, or ~/.cache/attncc."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "attncc")
    return Path(root)


def cache_dir() -> Path:
    """The cache root to write to: the configured one, or, when that cannot be written (read-only,
    a file, an unwritable HOME), a private temporary folder for this process, with a warning that
    names the variable to set."""
    root = configured_cache_dir()
    if str(root) in _FALLBACKS:
        return _FALLBACKS[str(root)]
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as exc:
        return fall_back(root, exc)
    return root


def fall_back(root: Path, exc: OSError) -> Path:
    """A private temporary folder (mode 0700) used instead of `root` for the rest of this process."""
    private = Path(tempfile.mkdtemp(prefix="attncc-cache-"))
    _FALLBACKS[str(root)] = private
    warnings.warn(f"attncc: cannot write the cache {root} ({exc.strerror or exc}); generated code goes to {private} "
                  f"for this process; set {CACHE_ENV} to a writable folder", RuntimeWarning, stacklevel=2)
    return private


def toolchain() -> str:
    """What generated code depends on besides its own text (part of every cache key)."""
    try:
        triton_version = metadata.version("triton")
    except metadata.PackageNotFoundError:
        triton_version = "none"
    return f"torch {torch.__version__}, triton {triton_version}"


def load_module(name: str, files: dict[str, str]):
    """Write generated files into the cache and execute `<name>.py` from its text; siblings are
    loaded on demand (`import_sibling`). The folder is keyed by the sources (which name the spec
    hash and the attncc version) and the toolchain; each file is written atomically (temporary
    file, then rename), so concurrent compiles of one spec agree, and a file whose text differs
    (corrupted, truncated) is rewritten. What runs is the text generated in this process, not what
    the folder holds."""
    key = "".join(f"{n}\0{src}\0" for n, src in sorted(files.items())) + toolchain()
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    try:
        directory = _store(cache_dir() / digest, files)
    except OSError as exc:  # the root is writable but this entry is not (e.g. a read-only folder in it)
        directory = _store(fall_back(configured_cache_dir(), exc) / digest, files)
    return _load(directory / f"{name}.py", f"attncc_generated_{name}_{digest}")


def _store(directory: Path, files: dict[str, str]) -> Path:
    for file_name, source in files.items():
        path = directory / file_name
        if _read(path) != source:
            write_atomic(path, source)
        _VERIFIED[str(path)] = source
    return directory


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder and os.replace: readers (other processes
    too) see the old file or the whole new one, never a partial write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def import_sibling(main_file: str, suffix: str):
    """Load `<stem><suffix>.py` that lies beside a generated module (once per process)."""
    path = Path(main_file)
    return _load(path.with_name(path.stem + suffix + ".py"), f"attncc_generated_{path.stem}{suffix}_{path.parent.name}")


class VerifiedSource:
    """The loader of a generated module: its source is the text held in memory (tracebacks and
    `inspect.getsource` read it through linecache and `get_source`), and no bytecode is involved."""

    def __init__(self, path: str, text: str):
        self.path, self.text = path, text

    def get_source(self, fullname: str) -> str:
        return self.text

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        exec(compile(self.text, self.path, "exec", dont_inherit=True), module.__dict__)


def _load(path: Path, module_name: str):
    """Execute a generated file as module `module_name`: the text checked by `load_module` when it
    wrote the file in this process, else the file's text (a module written by `attncc compile -o`
    and imported by its user)."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    text = _VERIFIED.get(str(path))
    if text is None:
        text = path.read_text(encoding="utf-8")
    loader = VerifiedSource(str(path), text)
    module = types.ModuleType(module_name)
    module.__spec__ = ModuleSpec(module_name, loader, origin=str(path))
    module.__loader__, module.__file__ = loader, str(path)
    # mtime None: linecache.checkcache keeps this entry instead of rereading the file from disk
    linecache.cache[str(path)] = (len(text), None, text.splitlines(keepends=True), str(path))
    sys.modules[module_name] = module
    try:
        loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


# ---------------------------------------------------------------------- analysis results
def analysis_path(spec_text: str, budget: float) -> Path:
    """Where the analysis results of a spec are kept: keyed by its canonical text, the analysis
    budget and everything that decides the results (attncc's own source and sympy's version), so a
    change to any of them analyses again."""
    key = f"{spec_text}\0{budget!r}\0{_source_digest()}\0sympy {metadata.version('sympy')}"
    return cache_dir() / "analysis" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


@functools.cache
def _source_digest() -> str:
    """A digest of attncc's Python sources (their text, in path order), computed once per process."""
    package = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def load_analysis(path: Path) -> dict:
    """Stored analysis results (a JSON object, data only: nothing in it is executed), or {} if there
    are none or they cannot be read."""
    try:
        memo = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def store_analysis(path: Path, memo: dict) -> None:
    """Keep analysis results for the next process; a cache that cannot be written only costs time."""
    try:
        write_atomic(path, json.dumps(memo, sort_keys=True))
    except OSError:
        pass


__all__ = ["CACHE_ENV", "cache_dir", "configured_cache_dir", "toolchain", "load_module", "write_atomic",
           "import_sibling", "analysis_path", "load_analysis", "store_analysis"]
