import os
import tempfile

# Triton must see TRITON_INTERPRET before the first kernel is decorated; the cache must be private.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("ATTNCC_CACHE_DIR", tempfile.mkdtemp(prefix="attncc-test-cache-"))

import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.attn"))
FUZZ_COUNTS: dict[str, int] = {}  # inputs fed to the compiler by the robustness tests, by kind

settings.register_profile("ci", deadline=None, max_examples=20, derandomize=True, print_blob=True)
settings.register_profile("slow", deadline=None, max_examples=200)
settings.load_profile("ci")


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="run slow tests, with more hypothesis examples")
    parser.addoption("--update-golden", action="store_true", help="rewrite golden files from current output")


def pytest_configure(config):
    if config.getoption("--slow"):
        settings.load_profile("slow")


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: run with --slow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--slow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


def pytest_terminal_summary(terminalreporter):
    if FUZZ_COUNTS:
        parts = ", ".join(f"{kind} {n}" for kind, n in sorted(FUZZ_COUNTS.items()))
        terminalreporter.write_line(f"fuzzed {sum(FUZZ_COUNTS.values())} spec inputs ({parts})")


@pytest.fixture
def update_golden(request):
    return request.config.getoption("--update-golden")


def golden(path: Path, text: str, update: bool) -> None:
    """Compare text with a golden file (or rewrite it with --update-golden)."""
    if update or not path.exists():
        path.write_text(text)
        if not update:
            pytest.fail(f"golden file {path.name} was missing and has been written; rerun")
    assert text == path.read_text(), f"output differs from {path}; rerun with --update-golden if intended"


def load_example(name: str):
    """Import examples/<name>.py: the Python examples are scripts, not a package."""
    spec = importlib.util.spec_from_file_location(f"attncc_example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
