"""Kernels specialised by what the compiler proved (emit/tiles.py, emit/exprs.py): full tiles without
the mask (band proofs, exact block layouts), constexpr divisions as shifts, Toeplitz table gradients
summed by diagonals. Mask evaluations and visited tiles are counted by tracing the kernels' lines as
Triton's interpreter executes them."""
import collections
import copy
import linecache
import re
import sys

import pytest
import torch

import attncc
from attncc.analysis.blocks import split_tiles
from attncc.tools.compare import compare, make_module, random_inputs

from .conftest import ROOT


def _kernel(source: str, name: str) -> str:
    """The text of one generated @triton.jit function."""
    start = source.index(f"def {name}(")
    end = source.find("\n@triton.jit", start)
    return source[start:] if end < 0 else source[start:end]


def _stages(kernel: str) -> dict[str, str]:
    """The loop body under each `# stage: ...` comment of a kernel, by the comment's text."""
    parts = re.split(r"\n\s*# stage: (.*)\n", kernel)
    return {note: body.split("\n    out = ")[0] for note, body in zip(parts[1::2], parts[2::2])}


class LineCounts:
    """How often each line of the named kernels (and the helpers they call) ran, by its text."""

    def __init__(self, *functions: str):
        self.functions, self.counts = set(functions), collections.Counter()

    def __enter__(self):
        def local(frame, event, arg):
            if event == "line":
                line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
                self.counts[(frame.f_code.co_name, line)] += 1
            return local
        sys.settrace(lambda frame, event, arg: local if frame.f_code.co_name in self.functions else None)
        return self

    def __exit__(self, *exc):
        sys.settrace(None)

    def of(self, function: str, prefix: str) -> int:
        return sum(n for (f, line), n in self.counts.items() if f == function and line.startswith(prefix))


def test_causal_kernel_has_an_unmasked_off_diagonal_stage_and_a_masked_diagonal_stage():
    source = attncc.build(str(ROOT / "examples" / "causal.attn")).triton_source
    full, diagonal = "off-diagonal full tiles, every pair visible (no mask)", "diagonal tiles (masked)"
    expected = {"_attn_fwd": [full, "diagonal tiles or past the bounds (masked)"],
                "_attn_bwd_dq": [full, "diagonal tiles or past the bounds (masked)"],
                "_attn_bwd_dkdv": [diagonal, full, "the partial tile past the bounds (masked)"]}  # walks queries
    for name, notes in expected.items():
        stages = _stages(_kernel(source, name))
        assert list(stages) == notes, name
        masked = stages[notes[-1] if name != "_attn_bwd_dkdv" else diagonal]
        assert "valid = " in masked and "(offs_n[None, :] <= offs_m[:, None])" in masked
        assert "valid" not in stages[full] and "offs_n[None, :] <= offs_m" not in stages[full]


def test_causal_forward_evaluates_the_mask_on_diagonal_tiles_only():
    """Nq = N = 64 in 16-token tiles: 4 query tiles see 1 + 2 + 3 + 4 = 10 key tiles, 4 of them diagonal."""
    cls = attncc.compile(str(ROOT / "examples" / "causal.attn"))
    module = make_module(cls, 1, 16, 16)
    q, k, v, inputs = random_inputs(cls, 1, 1, 64, 64, 16, 16)
    with LineCounts("_attn_fwd") as lines:
        assert compare(module, q, k, v, inputs, "triton", torch.float32).ok
    assert lines.of("_attn_fwd", "qk0 = tl.dot") == 10
    assert lines.of("_attn_fwd", "valid = ") == 4


def test_band_kernels_split_tiles_at_odd_lengths():
    """Windows and lengths that cut tiles anywhere: the three band stages together match the reference."""
    cls = attncc.compile(str(ROOT / "examples" / "sliding_window.attn"))
    for window, nq, nk in ((5, 50, 43), (16, 37, 61), (40, 70, 20)):
        module = make_module(cls, 1, 16, 16, window=window)
        q, k, v, inputs = random_inputs(cls, 1, 1, nq, nk, 16, 16)
        assert compare(module, q, k, v, inputs, "triton", torch.float32).ok, (window, nq, nk)


def test_hypercube_kernel_evaluates_no_element_mask():
    """Its 16-token layout is exact at tile granularity: every visited tile is full at N = 64, and the
    popcount of the mask never runs; at N = 70 the last key tile is partial through N only."""
    cls = attncc.compile(str(ROOT / "examples" / "hypercube.attn"))
    module = make_module(cls, 1, 16, 16)
    for n in (64, 70):
        q, k, v, inputs = random_inputs(cls, 1, 1, n, n, 16, 16)
        tiles = module.cached_tiles(module.call_context(q, k, v, {}), sys.modules[cls.__module__].block_layout, "cpu",
                                    exact=True)
        rows = torch.repeat_interleave(torch.arange(len(tiles.partial_ptr) - 1), tiles.partial_ptr.diff().long())
        last = (n - 1) // 16
        assert tiles.exact and bool(((rows == last) | (tiles.partial_cols == last)).all())  # partial at the bounds only
        assert (tiles.partial_cols.numel() == 0) == (n % 16 == 0)
        with LineCounts("_attn_fwd", "_popcount") as lines:
            assert compare(module, q, k, v, inputs, "triton", torch.float32).ok
        assert lines.of("_attn_fwd", "qk0 = tl.dot") == tiles.full_cols.numel() + tiles.partial_cols.numel()
        assert lines.of("_popcount", "") == 0


def test_blocks_smaller_than_the_tile_keep_the_element_mask():
    """Blocks of 8 in 16-token tiles: tiles whose blocks are all on are full, the others evaluate the mask."""
    cls = attncc.compile(str(ROOT / "examples" / "hypercube.attn"))
    module = make_module(cls, 1, 16, 16, block=8)
    q, k, v, inputs = random_inputs(cls, 1, 1, 64, 64, 16, 16)
    tiles = module.cached_tiles(module.call_context(q, k, v, {}), sys.modules[cls.__module__].block_layout, "cpu",
                                exact=True)
    assert not tiles.exact and tiles.full_cols.numel() > 0 and tiles.partial_cols.numel() > 0
    with LineCounts("_attn_fwd", "_popcount") as lines:
        assert compare(module, q, k, v, inputs, "triton", torch.float32).ok
    assert lines.of("_popcount", "return") == tiles.partial_cols.numel()  # once per partial tile


def test_split_tiles_full_only_inside_the_grid_and_the_layout():
    layout = torch.tensor([[True, False], [True, True]])  # blocks of 32 over 64 tokens
    tiles = split_tiles(32, layout, 64, 50, 128, exact=True)
    assert tiles.tile == 32 and tiles.exact
    assert tiles.full_cols.tolist() == [0, 0] and tiles.partial_cols.tolist() == [1]  # key tile 1 crosses N = 50
    assert split_tiles(32, layout, 64, 64, 128, exact=False).full_cols.numel() == 0  # other conjuncts decide


DIVISIONS = """attention divisions {
    size block = 16
    mask(i, j) = ((i - j) // 16 + (i - j) % 8 + i // 12 + (j - i) // 12 + (j - i) % 12 + (i - j) // block + (j - i) % block + j // block) % 3 != 1
}"""


def test_constexpr_divisions_print_as_shifts_and_masks():
    source = _kernel(attncc.build(DIVISIONS).triton_source, "_attn_fwd")
    assert ">> 4)" in source and "& 7)" in source  # (i - j) // 16, (i - j) % 8: floor for either sign
    assert "(offs_m[:, None] // 12)" in source  # i >= 0: truncation is floor
    assert "_floordiv(" in source and "_floormod(" in source  # (j - i) // 12, (j - i) % 12 may be negative
    assert "_floordiv_size(offs_n[None, :], S_block, S_block_shift, True)" in source
    assert "_floordiv_size(" in source and "S_block_shift, False)" in source


@pytest.mark.parametrize("block", [16, 12])
def test_constexpr_divisions_match_the_reference(block):
    cls = attncc.compile(DIVISIONS)
    module = make_module(cls, 1, 16, 16, block=block)
    q, k, v, inputs = random_inputs(cls, 1, 1, 45, 70, 16, 16)
    assert compare(module, q, k, v, inputs, "triton", torch.float32).ok


TOEPLITZ = """attention toeplitz_bias {
    param rpe[80] = normal(mean=0.0, std=1.0)
    param col[64] = normal(mean=0.0, std=1.0)
    score(i, j) = dot(q[i], k[j]) * scale + rpe[i - j + 40] + col[j] * 0.5
    mask(i, j) = j <= i
}"""


def test_toeplitz_table_gradients_are_summed_by_diagonals():
    cls = attncc.compile(TOEPLITZ)
    kernel = _kernel(attncc.build(TOEPLITZ).triton_source, "_attn_bwd_dkdv")
    assert "_diagonal_sums(c, BLOCK_M, BLOCK_N, BLOCK_DIAG)" in kernel and "# one entry per key" in kernel
    assert "tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)" not in kernel  # no atomic per pair
    module = make_module(cls, 1, 16, 8)
    module.backend = "triton"
    reference = copy.deepcopy(module).double()
    reference.backend = "torch"
    q, k, v, _ = random_inputs(cls, 1, 1, 45, 45, 16, 8, generator=torch.Generator().manual_seed(0))
    w = torch.randn(1, 1, 45, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for m, dtype in ((module, torch.float32), (reference, torch.float64)):
        (m(q.to(dtype), k.to(dtype), v.to(dtype)) * w.to(dtype)).sum().backward()
    for name in ("rpe", "col"):
        got, want = getattr(module, name).grad.double(), getattr(reference, name).grad
        assert (got - want).abs().max() < 1e-4 * want.abs().max().clamp(min=1), name


class _Clones(torch.utils._python_dispatch.TorchDispatchMode):
    """The aten copies (clone, copy_, _to_copy keeping the dtype) of the given tensors, seen by their
    storage and shape (Triton's interpreter copies whole storages as bytes to run a kernel: not these)."""

    def __init__(self, *tensors):
        super().__init__()
        self.seen, self.found = {(t.data_ptr(), tuple(t.shape)) for t in tensors}, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.clone.default, torch.ops.aten.copy_.default, torch.ops.aten._to_copy.default):
            sources = [a for a in args if isinstance(a, torch.Tensor)][-1:]
            out = func(*args, **(kwargs or {}))
            if sources and (sources[0].data_ptr(), tuple(sources[0].shape)) in self.seen and \
                    out.dtype == sources[0].dtype:  # conversions aside
                self.found.append(f"{func}: {tuple(sources[0].shape)}")
            return out
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["causal", "mra2", "linear_elu_causal", "toeplitz_linear"])
def test_launchers_read_strided_rows_without_copies(name):
    """q, k, v as views of [B, N, H, D] tensors (the layout a projection gives): the launchers pass their
    strides to the kernels, and no copy of them is made (MRA's launcher made q, k, v contiguous)."""
    cls = attncc.compile(str(ROOT / "examples" / f"{name}.attn"))
    module = make_module(cls, 2, 16, 16)
    module.backend = "triton"
    q, k, v, inputs = random_inputs(cls, 1, 2, 40, 40, 16, 16)
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q.float(), k.float(), v.float()))
    assert not q.is_contiguous()
    with torch.no_grad(), _Clones(q, k, v) as clones:
        out = module(q, k, v, **inputs)
    assert not clones.found, clones.found
    module.backend = "torch"
    with torch.no_grad():
        torch.testing.assert_close(out, module(q, k, v, **inputs), atol=1e-4, rtol=1e-4)
