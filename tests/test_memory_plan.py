"""The plan follows the call (a dispatch table by key length), the memory budget, and the bounded
feature blocks of the FFT / ring paths."""
import re
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

import attncc
from attncc import rt
from attncc.api import build, generated_files
from attncc.lang.source import AttnccError
from attncc.ir.graph import B, H, N, Nq
from attncc.plan import cost, registry
from attncc.plan.cost import Candidate
from attncc.plan.select import format_plan
from attncc.runtime.memory import ENV, parse_budget
from attncc.tools.compare import assert_matches_reference

from .conftest import ROOT
from .test_registry import DENSE_TORCH

TOEPLITZ = ROOT / "examples" / "toeplitz_linear.attn"


def test_toeplitz_dispatches_by_length():
    """Compiled once at the design sizes (N = 4096): short calls run tiled, long ones fft, the
    choice a compile at N = 65536 makes; asked of the module, nothing runs at 65536."""
    cls = attncc.compile(TOEPLITZ)
    assert cls.LOWERING == "tiled" and [name for name, _ in cls.DISPATCH] == ["tiled", "fft"]
    assert cls.lowering_at(64) == cls.lowering_at(4096) == "tiled"
    assert cls.lowering_at(65536) == build(TOEPLITZ, sizes={"N": 65536, "Nq": 65536}).plan.lowering == "fft"
    crossover = cls.DISPATCH[0][1]
    assert cls.lowering_at(crossover) == "tiled" and cls.lowering_at(crossover + 1) == "fft"
    comp = cls.compilation
    assert f"crossover lengths: N > {crossover}" in format_plan(comp.plan, comp.log)
    files = generated_files(comp)  # one forward per lowering: the fft one in a sibling module
    assert "def forward_torch" in files["toeplitz_linear_fft.py"] and "toeplitz_attention" in files["toeplitz_linear_fft.py"]
    assert "toeplitz_attention" not in files["toeplitz_linear.py"]
    assert "DISPATCH = (('tiled', " in files["toeplitz_linear.py"]


def test_forced_lowering_pins_every_length():
    cls = attncc.compile(TOEPLITZ, lowering="fft")
    assert cls.DISPATCH == (("fft", None),) and cls.lowering_at(1) == cls.lowering_at(2**30) == "fft"
    assert set(generated_files(cls.compilation)) == {"toeplitz_linear.py", "toeplitz_linear_triton.py"}


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_both_sides_of_a_crossover_match_the_reference(backend):
    """Designed for D = E = 8 the table moves from tiled to fft above 1024 keys; a call on each side
    (two heads: the table depends on the key length only) runs its entry (tiled's module, or the
    sibling fft one) and matches the oracle."""
    cls = attncc.compile(TOEPLITZ, sizes={"D": 8, "E": 8})
    assert cls.DISPATCH == (("tiled", 1024), ("fft", None))
    m = cls(backend=backend)
    for n, lowering in ((24, "tiled"), (1030, "fft")):
        q, k, v = (torch.randn(1, 2, n, 8, generator=torch.Generator().manual_seed(s)) for s in range(3))
        assert_matches_reference(m, q, k, v, backend=backend)
        assert m.last_lowering == lowering


def test_a_lowering_that_cannot_fit_is_not_chosen():
    """A toy lowering faster than any other by the roofline but holding 16 bytes per (query, key)
    pair: chosen while it fits (80 GB: up to 16k tokens at H = 8), never beyond, nor under a budget
    it does not fit at the design sizes."""
    hungry = replace(DENSE_TORCH, forced_only=False, cost=lambda query: Candidate(
        "dense_torch", B * H * Nq * N, 0 * B, "the whole score matrix at once", memory=8 * B * H * Nq * N,
        saved=8 * B * H * Nq * N))
    softmax = ROOT / "examples" / "softmax.attn"
    with registry.registered(hungry):
        plan = build(softmax).plan
        assert plan.lowering == "dense_torch" and plan.dispatch == (("dense_torch", 16384), ("sdpa", None))
        small = build(softmax, memory_budget="500MB").plan
        assert small.lowering == "sdpa" and small.dispatch == (("dense_torch", 1024), ("sdpa", None))
        assert "(over the budget)" in format_plan(small, [])


def test_call_over_the_budget_is_a_located_error(monkeypatch):
    """The estimate is checked before the work: it names the lowering, the sizes and the bytes."""
    m = attncc.compile(TOEPLITZ)()
    q = torch.randn(1, 2, 64, 8)
    m.memory_budget = 1000
    with pytest.raises(AttnccError, match=r"lowering `tiled` \(with autograd recording\) at .*N = 64, .* would "
                                          r"hold about .*over the memory budget of 1\.0 kB \(the module's memory_budget\)"):
        m(q, q, q)
    m.memory_budget = None
    monkeypatch.setenv(ENV, "1kB")
    with pytest.raises(AttnccError, match=rf"\${ENV}"):
        m(q, q, q)
    monkeypatch.setenv(ENV, "1GB")
    assert m(q, q, q).shape == (1, 2, 64, 8)


def test_backward_share_only_when_autograd_records():
    m = attncc.compile(TOEPLITZ)()
    q = torch.randn(1, 2, 64, 8)
    working, saved = m.MEMORY["tiled"]({**m.sizes, "B": 1, "H": 2, "N": 64, "Nq": 64, "D": 8, "E": 8})
    m.memory_budget = int(working + saved / 2)
    with torch.no_grad():
        m(q, q, q)
    with pytest.raises(AttnccError, match="with autograd recording"):
        m(q, q, q)


def test_table_sizes_over_the_budget_fail_before_allocating():
    spec = "attention a { size n = 4  param t[n, n] = zeros  normalize softmax }"
    with pytest.raises(AttnccError, match=r"table `t` \(999999, 999999\) at n = 999999 would hold about 4\.0 TB"):
        attncc.compile(spec)(n=999999)


def test_budgets_parse_and_bad_ones_are_errors():
    assert parse_budget("64GB", "x") == 64 * 10**9 and parse_budget("512MiB", "x") == 512 * 2**20
    assert parse_budget(1.5e10, "x") == 15 * 10**9 and parse_budget("123", "x") == 123
    for bad in ("lots", "-1GB", 0, True):
        with pytest.raises(AttnccError, match="memory budget"):
            parse_budget(bad, "memory_budget")
    cls = attncc.compile("attention a { normalize softmax }", memory_budget="3GB")
    assert cls.memory_budget == 3 * 10**9 and cls.compilation.plan.budget == 3 * 10**9


def test_the_cost_model_mirrors_the_runtime_constants():
    assert cost.QUERY_CHUNK == rt.QUERY_CHUNK and cost.GROUP_ELEMENTS == rt.GROUP_BUDGET


@pytest.mark.parametrize("budget", [1, 3000, 10**9])
def test_feature_blocks_are_bounded(budget):
    """Every transform kernel_blocks applies gets at most max(budget, B H cells) elements (one value
    column of one feature when the budget is below that), and the sums do not depend on the blocks."""
    gen = torch.Generator().manual_seed(0)
    B, H, N, m, E = 2, 3, 40, 5, 7
    pq, pk = torch.rand(B, H, N, m, generator=gen), torch.rand(B, H, N, m, generator=gen)
    v = torch.randn(B, H, N, E, generator=gen)
    f = torch.rand(1, H, 2 * N - 1, generator=gen)
    transform, cells = rt.toeplitz_transform(f, N, N, torch.float32)
    seen = []

    def counted(u):
        seen.append(u.numel() // N * cells)  # elements of the padded FFT buffer of this block
        return transform(u)
    blocks = list(rt.kernel_blocks(pk, v, counted, cells=cells, budget=budget))
    assert max(seen) <= max(budget, B * H * cells)
    assert len(blocks) == (m * (E + 1) if budget == 1 else 1 if budget == 10**9 else len(blocks))
    covered = sorted((l0 + l, e0 + e) for l0, e0, y in blocks for l in range(y.shape[0]) for e in range(y.shape[3]))
    assert covered == [(l, e) for l in range(m) for e in range(E + 1)]  # each (feature, column) once
    saved = rt.GROUP_BUDGET
    try:
        rt.transforms.GROUP_BUDGET = budget
        ours = rt.toeplitz_attention(pq, pk, v, f, normalize="rows", eps=1e-6)
    finally:
        rt.transforms.GROUP_BUDGET = saved
    whole = rt.toeplitz_attention(pq, pk, v, f, normalize="rows", eps=1e-6)
    torch.testing.assert_close(ours, whole, rtol=1e-5, atol=1e-6)


MEASURE = """
import ctypes, re, sys, torch
from pathlib import Path
from attncc import rt
n, split = int(sys.argv[1]), sys.argv[2] == "split"
rt.transforms.kernel_blocks.__kwdefaults__["split_columns"] = split
gen = torch.Generator().manual_seed(0)
B, H, m, E = 1, 8, 4, 64
pq, pk, v = (torch.rand(B, H, n, d, generator=gen) for d in (m, m, E))
f = torch.rand(1, H, 2 * n - 1, generator=gen)
hwm = lambda field: int(re.search(field + r":\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024
with torch.no_grad():
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # free heap is not resident: the call cannot hide in it
    Path("/proc/self/clear_refs").write_text("5")
    before = hwm("VmRSS")
    rt.toeplitz_attention(pq, pk, v, f, normalize="rows", eps=1e-6)
    print(hwm("VmHWM") - before)
"""


def peak_resident(n: int, split: bool) -> int:
    """Peak resident bytes one rt.toeplitz_attention forward adds, in a fresh process (q, k, v excluded)."""
    done = subprocess.run([sys.executable, "-c", MEASURE, str(n), "split" if split else "whole"], capture_output=True,
                          text=True, check=True, env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}, timeout=300)
    return int(done.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak resident size from /proc")
def test_fft_peak_memory_is_linear_in_tokens():
    """Measured, not modelled: the peak resident size (VmHWM, reset before the call) one fft forward
    adds, at 8k and 32k tokens (H = 8, E = 64, 4 features). It grows at most linearly, stays within
    the cost model's estimate (25% for the allocator's slack: freed heap stays resident), and is well
    below what whole features per block hold at 32k (one feature's 8 x 65 columns of 64k cells: 136 MB
    a buffer, where a block of value columns holds 16 MB)."""
    working = build(TOEPLITZ).plan.candidate("fft").working
    peaks = {n: peak_resident(n, split=True) for n in (8192, 32768)}
    for n, peak in peaks.items():
        estimate = cost.evaluate(working, {"B": 1, "H": 8, "N": n, "Nq": n, "D": 4, "E": 64})
        assert peak <= 1.25 * estimate, (n, peak, estimate)
    assert peaks[32768] <= 4.5 * peaks[8192], peaks
    assert peaks[32768] <= 0.75 * peak_resident(32768, split=False), peaks


def test_inspect_shows_crossovers(capsys):
    from attncc.cli import main
    assert main(["inspect", str(TOEPLITZ), "--stage", "plan"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"dispatch by key length N .*: tiled for N in 1 \.\. \d+; fft for N >= \d+", out)
    assert "crossover lengths: N > " in out
