"""Random masks written in the language: analysis claims hold, and all backends agree with the reference."""
import pytest
import torch
from hypothesis import given, settings

import attncc
from attncc.api import build
from attncc.tools.compare import compare, make_module, random_inputs
from attncc.tools.testing import mask_expressions
from attncc.analysis.structure import structure_holds

from .conftest import ROOT

EQUIVALENT_WINDOWS = ["abs(j - i) <= w", "i - w <= j and j <= i + w", "not (abs(i - j) > w)",
                      "max(i - j, j - i) <= w", "j - i <= w and i - j <= w"]


@pytest.mark.parametrize("text", EQUIVALENT_WINDOWS)
def test_equivalent_windows_are_the_same_band(text):
    comp = build(f"attention a {{ size w = 5  mask(i, j) = {text} }}")
    mask = comp.plan.mask
    assert mask.kind == "band" and str(mask.lo) == "-w" and str(mask.hi) == "w"


@pytest.mark.parametrize("text,kind", [("j <= i", "causal"), ("i >= j", "causal"), ("not (j > i)", "causal"),
                                       ("true", "full"), ("j <= i or j > i", "full"), ("i == j", "band"),
                                       ("(i - j) % 3 == 0", "toeplitz"), ("i // 4 == j // 4", "general")])
def test_mask_kinds(text, kind):
    assert build(f"attention a {{ mask(i, j) = {text} }}").plan.mask.kind == kind


@settings(max_examples=25)
@given(mask=mask_expressions(("w",)))
def test_random_masks_analysis_is_sound(mask):
    comp = build(f"attention fuzz {{ size w = 4  mask(i, j) = {mask} }}")
    assert structure_holds(comp.checked.mask, comp.plan.mask, comp.checked, is_mask=True, samples=3, seed=1)


@settings(max_examples=6)
@given(mask=mask_expressions(("w",)))
def test_random_masks_all_backends_match(mask):
    cls = attncc.compile(f"attention fuzz {{ size w = 4  mask(i, j) = {mask} }}")
    module = make_module(cls, 2, 16, 16)
    q, k, v, inputs = random_inputs(cls, 1, 2, 23, 29, 16, 16)
    for backend, dtype in (("torch", torch.float32), ("triton", torch.float32)):
        r = compare(module, q, k, v, inputs, backend, dtype)
        assert r.ok, f"{mask}: {backend} error {r.error:.2e}"


def test_integer_semantics_match_python():
    """Floor division and modulo with negative operands, xor, popcount, gray: as in Python."""
    spec = """attention ints {
        mask(i, j) = ((i - j) // 3) % 4 == (j - i) % 3 or popcount(gray(i) ^ j) == 2 or (i - 20) // -3 == j % -5
    }"""
    cls = attncc.compile(spec)
    module = make_module(cls, 1, 16, 16)
    q, k, v, inputs = random_inputs(cls, 1, 1, 40, 40, 16, 16)
    from attncc.oracle.dense import dense_weights
    w = dense_weights(cls.checked, q, k, {}, {}, {})
    i, j = 17, 5
    want = ((i - j) // 3) % 4 == (j - i) % 3 or bin((i ^ (i >> 1)) ^ j).count("1") == 2 or (i - 20) // -3 == j % -5
    assert bool(w[0, 0, i, j] > 0) == want
    for backend in ("torch", "triton"):
        assert compare(module, q, k, v, inputs, backend, torch.float32).ok


@pytest.mark.parametrize("text,layout", [
    ("popcount(gray(i // b) ^ gray(j // b)) <= 1", "blocks of b tokens"),
    ("i // 64 == j // 64 and j <= i", "blocks of 64 tokens"),
    ("j // b <= i // b and i - j < 100", "blocks of b tokens"),
    ("i // 4 == j // 8", None),  # different block sizes: no common layout
    ("doc[i // b] == doc[j // b]", None),  # a call-time input: not known at compile time
    ("j <= i", None),
])
def test_block_layouts_are_found_by_analysis(text, layout):
    comp = build(f"attention a {{ size b = 16  input doc[N] : int  mask(i, j) = {text} }}")
    found = comp.plan.attrs.get("block_layout")
    assert (found.describe().split(" where")[0] if found else None) == layout


def test_hypercube_visits_log_many_tiles():
    """At N = 4096 with 16-token blocks: (log2(N / 16) + 1) / (N / 16) of the score tiles."""
    import sys
    cls = attncc.compile(str(ROOT / "examples" / "hypercube.attn"))
    m = cls()
    q = torch.zeros(1, 1, 4096, 16)
    ctx = m.call_context(q, q, q, {})
    tiles = m.cached_tiles(ctx, sys.modules[cls.__module__].block_layout, "cpu", exact=True)
    blocks = 4096 // 16
    visited = tiles.full_cols.numel() + tiles.partial_cols.numel()
    assert tiles.tile == 16 and visited / blocks**2 == (12 - 4 + 1) / blocks
    assert m.cached_tiles(ctx, sys.modules[cls.__module__].block_layout, "cpu", exact=True) is tiles  # cached


@pytest.mark.parametrize("lowering", ["tiled", "block_sparse"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name,sizes", [("hypercube", {"block": 16}), ("hypercube", {"block": 8}),
                                        ("hypercube", {"block": 12}), ("block_diagonal", {"chunk": 32})])
def test_block_sparse_lowerings_match(name, sizes, backend, lowering):
    """Blocks equal to, smaller than, and not aligned with the 16-token tile."""
    cls = attncc.compile(str(ROOT / "examples" / f"{name}.attn"), lowering=lowering)
    module = make_module(cls, 2, 16, 16, **sizes)
    q, k, v, inputs = random_inputs(cls, 1, 2, 77, 90, 16, 16)
    assert compare(module, q, k, v, inputs, backend, torch.float32).ok


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_blocks_larger_than_the_largest_tile(backend):
    cls = attncc.compile(str(ROOT / "examples" / "block_diagonal.attn"), lowering="block_sparse")
    module = make_module(cls, 1, 16, 16, chunk=256)
    q, k, v, inputs = random_inputs(cls, 1, 1, 300, 530, 16, 16)
    assert compare(module, q, k, v, inputs, backend, torch.float32).ok


def test_layout_cache_is_bounded():
    import sys
    from attncc.runtime.compiled import LAYOUT_CACHE
    cls = attncc.compile(str(ROOT / "examples" / "hypercube.attn"))
    m = cls()
    fn = sys.modules[cls.__module__].block_layout
    for n in range(1, 3 * LAYOUT_CACHE):
        q = torch.zeros(1, 1, n, 16)
        m.cached_tiles(m.call_context(q, q, q, {}), fn, "cpu")
    assert len(m._layouts) <= LAYOUT_CACHE
