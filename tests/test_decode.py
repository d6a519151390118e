"""Split-K decoding (attncc/lowerings/decode.py): the cost model's choice by size, the torch skeleton
and the Triton split and merge kernels (Triton's interpreter) against the float64 reference, and the
backward through the tiled kernels reading the merged log-sum-exp."""
import pytest
import torch

import attncc
from attncc import rt
from attncc.tools.compare import assert_matches_reference, make_module, random_inputs

from .conftest import ROOT
from .helpers import DECODE


def _lowering(spec: str, nq: int, n: int) -> str:
    return attncc.build(spec if "{" in spec else str(ROOT / "examples" / f"{spec}.attn"),
                        sizes={"Nq": nq, "N": n}).plan.lowering


@pytest.mark.parametrize("spec", [DECODE, "document"], ids=["decode", "document"])
def test_cost_model_chooses_split_k_for_few_queries_and_many_keys(spec):
    for nq, n in ((1, 131072), (4, 32768), (16, 131072)):
        assert _lowering(spec, nq, n) == "decode", (nq, n)
    for nq, n in ((4096, 4096), (131072, 131072), (1, 256)):  # the design sizes, prefill, a short cache
        assert _lowering(spec, nq, n) != "decode", (nq, n)


def test_a_short_band_is_not_split():
    """Under a window of 64 a query sees 129 keys however long the cache: nothing to split."""
    assert _lowering("sliding_window", 1, 131072) == "tiled"


def test_merge_of_splits_is_the_softmax_of_all_keys():
    g = torch.Generator().manual_seed(0)
    s, v = torch.randn(2, 3, 40, generator=g, dtype=torch.float64), torch.randn(2, 40, 5, generator=g, dtype=torch.float64)
    s[0, 0, 8:30] = float("-inf")  # a split with no visible key
    s[1, 2] = float("-inf")  # a row with no visible key: 0
    want = torch.nan_to_num(torch.softmax(s, -1)) @ v
    cuts = [(0, 8), (8, 20), (20, 30), (30, 40)]
    parts = torch.stack([torch.nan_to_num(torch.softmax(s[..., a:b], -1)) @ v[..., a:b, :] for a, b in cuts], -2)
    lse = torch.stack([torch.logsumexp(s[..., a:b], -1) for a, b in cuts], -1)
    out, total = rt.merge_splits(parts, lse)
    assert torch.allclose(out, want, atol=1e-12)
    assert torch.allclose(total, torch.logsumexp(s, -1), atol=1e-12)


def test_split_count_fills_the_gpu_with_whole_tiles():
    assert rt.decode_splits(programs=2, keys=131072, tile=64, sms=132) == 132
    assert rt.decode_splits(programs=2, keys=300, tile=64, sms=132) == 2  # at least 4 tiles a split
    assert rt.decode_splits(programs=1000, keys=131072, tile=64, sms=132) == 1


def _check(nq, nk, backend, dtype, heads=2, dim=32, batch=1):
    Decode = attncc.compile(DECODE, lowering="decode")
    module = make_module(Decode, heads=heads, dim=dim, dim_v=dim)
    q, k, v, inputs = random_inputs(Decode, batch=batch, heads=heads, nq=nq, nk=nk, dim=dim, dim_v=dim)
    assert_matches_reference(module, q, k, v, backend, dtype, **inputs)


def test_torch_decode_matches_reference_at_128k_keys():
    """One query against 131072 keys, cut into 132 splits (about a second on two cores)."""
    _check(1, 131072, "torch", torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("nq, nk", [(1, 150), (17, 70)])  # 3 splits; two query tiles of 2 splits
def test_triton_split_and_merge_kernels_match_reference(nq, nk, dtype):
    _check(nq, nk, "triton", dtype, dim=16, batch=2)


def test_triton_backward_through_the_merged_log_sum_exp():
    Decode = attncc.compile(DECODE, lowering="decode")
    module = make_module(Decode, heads=2, dim=16, dim_v=8)
    q, k, v, _ = random_inputs(Decode, batch=1, heads=2, nq=5, nk=90, dim=16, dim_v=8)
    grads = {}
    for backend, dtype in (("triton", torch.float32), ("torch", torch.float64)):
        module.backend = backend
        module.zero_grad()
        leaves = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
        out = module(*leaves)
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        (out * w.to(out.dtype)).sum().backward()
        grads[backend] = [x.grad.double() for x in leaves] + [module.slope.grad.double()]
    for got, want in zip(grads["triton"], grads["torch"]):
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


def test_inspect_takes_the_plan_sizes(tmp_path, capsys):
    from attncc.cli import main
    spec = tmp_path / "decode.attn"
    spec.write_text(DECODE)
    assert main(["inspect", str(spec), "--size", "Nq=1", "--size", "N=131072"]) == 0
    out = capsys.readouterr().out
    assert "Nq=1, N=131072" in out and "chosen: decode" in out and "split-K decoding kernels" in out
    assert main(["inspect", str(spec)]) == 0 and "chosen: tiled" in capsys.readouterr().out
