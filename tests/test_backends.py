"""Property tests: every backend of every example, and every lowering, matches the dense reference."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attncc
from attncc.tools.compare import compare, make_module, random_inputs, serving_lengths
from attncc.tools.testing import attention_shapes

from .conftest import EXAMPLES

RUNS = [("torch", torch.float32), ("torch", torch.float64), ("torch", torch.bfloat16),
        ("triton", torch.float32), ("triton", torch.float16)]
CLASSES = {p.stem: attncc.compile(str(p)) for p in EXAMPLES}


def _check(cls, shape, backend, dtype, seed=0, **sizes):
    b, h, nq, nk, d, e = shape  # with Nq != N, lookups of a per-key input by i clamp: defined, and tested
    nk = nq if cls.GRAPHS else nk  # graph kernels relate the same tokens
    nq, nk = serving_lengths(cls, nq, nk)  # a row input read at both token indices serves the longer
    module = make_module(cls, h, d, e, seed=seed, **sizes)
    gen = torch.Generator().manual_seed(seed)
    q, k, v, inputs = random_inputs(cls, b, h, nq, nk, d, e, generator=gen)
    result = compare(module, q, k, v, inputs, backend, dtype)
    assert result.ok, f"{cls.SPEC_NAME} {backend} {dtype} {shape}: error {result.error:.3e} > {result.tolerance:.0e}"


@pytest.mark.parametrize("backend,dtype", RUNS, ids=[f"{b}-{str(d)[6:]}" for b, d in RUNS])
@pytest.mark.parametrize("name", sorted(CLASSES))
@given(shape=attention_shapes(max_tokens=70), seed=st.integers(0, 2**16))
def test_example_matches_reference(name, backend, dtype, shape, seed):
    _check(CLASSES[name], shape, backend, dtype, seed)


KERNELIZED = {
    "linear_elu": ["tiled", "linear"],
    "linear_elu_causal": ["tiled", "linear_chunked"],
    "toeplitz_linear": ["tiled", "fft"],
    "retention": ["tiled", "linear_chunked"],
    "performer": ["tiled", "linear"],
    "rpe_performer": ["tiled", "fft"],
    "grid_rpe": ["tiled", "fft2"],
    "ripple": ["tiled", "fft2", "rings"],
    "gkat": ["tiled", "graph"],
}


@pytest.mark.parametrize("backend,dtype", [("torch", torch.float64), ("triton", torch.float32)])
@pytest.mark.parametrize("name,lowering", [(n, lw) for n, lws in KERNELIZED.items() for lw in lws])
@settings(max_examples=4)
@given(shape=attention_shapes(max_tokens=70))
def test_every_lowering_matches_reference(name, lowering, backend, dtype, shape):
    cls = attncc.compile(str(next(p for p in EXAMPLES if p.stem == name)), lowering=lowering)
    assert cls.LOWERING == lowering
    _check(cls, shape, backend, dtype)


def test_sizes_past_one_block_and_band_skipping():
    """Enough tokens for several tiles in every backend, with band bounds that skip tiles."""
    cls = CLASSES["sliding_window"]
    for backend, dtype in RUNS:
        _check(cls, (1, 2, 150, 150, 16, 16), backend, dtype, window=7)


MODULATED = """attention modulated {
    feature phi = elu1
    param g[H] = uniform(low=0.5, high=2.0)
    weight(i, j) = dot(phi(q[i]), phi(k[j])) * g[h] * 0.5
    mask(i, j) = j <= i
}"""
DECAYED = """attention decayed {
    feature phi = elu1
    param t[H] = uniform(low=0.05, high=0.5)
    weight(i, j) = dot(phi(q[i]), phi(k[j])) * 3.0 * exp(-t[h] * (i - j))
    mask(i, j) = j <= i
}"""


@pytest.mark.parametrize("spec", [MODULATED, DECAYED], ids=["modulated", "decayed"])
@pytest.mark.parametrize("lowering", ["linear_chunked", "tiled"])
@pytest.mark.parametrize("backend,dtype", [("torch", torch.float64), ("triton", torch.float32),
                                           ("triton", torch.float16)])
def test_per_head_modulation_and_decay(spec, lowering, backend, dtype):
    cls = attncc.compile(spec, lowering=lowering)
    for shape in [(2, 3, 33, 33, 8, 8), (1, 2, 100, 100, 16, 8), (1, 2, 70, 5, 16, 8)]:
        _check(cls, shape, backend, dtype)


@pytest.mark.parametrize("name", ["grid_rpe", "ripple", "toeplitz_linear"])
def test_fp32_feature_rows_dotted_in_column_steps(name):
    """fp32 inputs with feature-mapped key rows (emit/rows.py chunked_rows): the tiled kernel sums its score
    dots over steps of ROW_CHUNK head columns; at d = 40 (BLOCK_D 64, 16 columns a step) there are four
    steps, the third one partial and the fourth past D, and the output matches the reference (fp16 keeps
    whole rows)."""
    cls = CLASSES[name]
    assert "for c0 in tl.static_range(0, BLOCK_D, ROW_CHUNK):" in cls.compilation.triton_source
    for dtype in (torch.float32, torch.float16):
        _check(cls, (1, 2, 37, 37, 40, 24), "triton", dtype)


@pytest.mark.parametrize("name", ["linear_elu", "linear_elu_causal", "retention"])
def test_linear_value_columns_split_across_programs(name):
    """48 value columns: two programs per (b, h) in the forward, each with a 32-column block of the state
    (the second one half masked), each recomputing the normalizer row sums z (regression: the compile gate)."""
    _check(CLASSES[name], (1, 2, 37, 37, 16, 48), "triton", torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(CLASSES))
def test_triton_on_gpu(name, dtype):
    cls = CLASSES[name]
    module = make_module(cls, 4, 64, 64)
    q, k, v, inputs = random_inputs(cls, 2, 4, 1000, 1000, 64, 64)
    result = compare(module, q, k, v, inputs, "triton", dtype, device="cuda")
    assert result.ok, f"{name} {dtype}: {result.error:.3e}"
