"""Analysis is bounded: its cross-checks do work bounded by the number of blocks, not tokens; masks
it cannot put in d = i - j are recognised without sympy's simplify; a time budget ends it with
`general` and a note; nothing of an exception reaches the plan.

Work is counted, not timed (benchmarks/compile_time.py --stress reports the times); one generous
timing test is marked slow.
"""
import time

import pytest
import sympy
import torch

import attncc
from attncc.analysis import blocks, structure
from attncc.analysis.blocks import BlockLayout, layout_holds, sample_tokens
from attncc.analysis.session import BudgetSpent, check_budget, checkpoint, session
from attncc.api import build
from attncc.lang.expr import TExpr, const
from attncc.lang.source import AttnccError
from attncc.oracle.dense import dense_mask
from attncc.plan.select import format_plan
from attncc.tools.compare import compare, make_module, random_inputs

from .conftest import ROOT

SPECS = ROOT / "tests" / "specs"


def chunk_spec(chunk: int) -> str:
    return f"attention chunked {{ size chunk = {chunk}  mask(i, j) = i // chunk == j // chunk and j <= i }}"


def global_tokens_spec(count: int) -> str:
    """A local window plus `count` global tokens spelled out with `or` (each sees and is seen by all)."""
    tokens = " or ".join(f"i == {t} or j == {t}" for t in range(3, 3 + 7 * count, 7))
    return f"attention globals {{ mask(i, j) = abs(i - j) <= 16 or {tokens} }}"


@pytest.fixture
def simplify_calls(monkeypatch):
    """How often the analysis calls sympy.simplify (its one step whose cost has no bound)."""
    calls = []
    original = sympy.simplify
    monkeypatch.setattr(sympy, "simplify", lambda *a, **k: calls.append(a) or original(*a, **k))
    return calls


# ---------------------------------------------------------------------- block layouts
def test_layout_check_evaluates_a_bounded_number_of_pairs(monkeypatch):
    """A 16384-token chunk: the layout is checked at <= 18 x 18 token pairs per sampled length
    (first, last and a random token of up to 6 blocks a side), not on 36 b^2 pairs."""
    pairs = []
    original = blocks.evaluate

    def counting(t, env):
        pairs.append(env.i.numel() * env.j.numel())
        assert pairs[-1] <= 18 * 18, "the check evaluates the token grid"  # before it allocates gigabytes
        return original(t, env)
    monkeypatch.setattr(blocks, "evaluate", counting)
    comp = build(chunk_spec(16384))
    assert comp.plan.attrs["block_layout"].describe().startswith("blocks of chunk tokens")
    assert len(pairs) >= 8  # 4 sampled lengths: the layout and the tokens (and the cost model's layout)


def test_sampled_tokens_hold_each_block_edge():
    tokens = sample_tokens(50, 16, __import__("random").Random(0)).tolist()
    assert {0, 15, 16, 31, 32, 47, 48, 49} <= set(tokens) and tokens == sorted(set(tokens))
    assert all(0 <= t < 50 for t in tokens) and len(tokens) <= 12


def test_layout_check_still_finds_a_wrong_layout():
    """A predicate that changes inside a block (i // 2 under blocks of 4) fails the check."""
    half = lambda v: TExpr("floordiv", (TExpr("var", (), v, "int"), const(2)), None, "int")
    predicate = TExpr("eq", (half("i"), half("j")), None, "bool")
    assert not layout_holds(predicate, BlockLayout(const(4), predicate), {})


# ---------------------------------------------------------------------- masks sympy cannot settle
def test_global_tokens_are_general_without_simplify(simplify_calls):
    comp = build(global_tokens_spec(199))
    assert comp.plan.mask.kind == "general" and "more than i - j" in comp.plan.mask.reason
    assert simplify_calls == []


@pytest.mark.parametrize("name", ["natten", "tiled_natten", "sta"])
def test_attention_gym_masks_are_analysed(name, simplify_calls):
    """NATTEN and STA read tokens through floors and mods of their canvas position: general, found
    without simplify (it failed with `'nan' is not comparable` and took half a minute)."""
    comp = build(SPECS / f"{name}.attn")
    mask = comp.plan.mask
    assert mask.kind == "general" and mask.reason == "mask depends on more than i - j"
    assert simplify_calls == []
    assert (comp.plan.attrs.get("block_layout") is not None) == (name == "natten")  # rows of the canvas


def _gym_natten(i, j, width, height, kw, kh, xy):
    """attention-gym's NATTEN mask, written from its definition: the kernel centre is the query's
    position clamped to [k // 2, size - 1 - k // 2] on each axis."""
    (qx, qy), (kx, ky) = xy(i), xy(j)
    cx, cy = qx.clamp(kw // 2, width - 1 - kw // 2), qy.clamp(kh // 2, height - 1 - kh // 2)
    return ((cx - kx).abs() <= kw // 2) & ((cy - ky).abs() <= kh // 2)


def _gym_sta(i, j, width, height, tw, th, kw, kh, text):
    """attention-gym's 2-D STA mask: tile windows clamped at the borders, plus text tokens."""
    tile = lambda t: (t // (tw * th) // (width // tw), t // (tw * th) % (width // tw))
    (qr, qc), (kr, kc) = tile(i), tile(j)
    inside = torch.ones_like(i & j, dtype=torch.bool)
    for q, k, kernel, tiles in ((qr, kr, kh // th, height // th), (qc, kc, kw // tw, width // tw)):
        left, right = kernel // 2, kernel // 2 + kernel % 2 - 1
        centre = q.clamp(left, tiles - 1 - right)
        inside &= (k >= centre - left) & (k <= centre + right)
    vision = width * height
    return ((i < vision) & (j < vision) & inside) | ((i < vision) & (j >= vision) & (j < vision + text)) \
        | ((i >= vision) & (j < vision + text))


@pytest.mark.parametrize("name", ["natten", "tiled_natten", "sta"])
def test_attention_gym_specs_mean_the_gym_masks(name):
    cls = attncc.compile(SPECS / f"{name}.attn")
    s = cls.SIZES
    n = s["width"] * s["height"] + s.get("text", 0)
    i, j = torch.arange(n).view(-1, 1), torch.arange(n).view(1, -1)
    if name == "sta":
        want = _gym_sta(i, j, s["width"], s["height"], s["tw"], s["th"], s["kw"], s["kh"], s["text"])
    else:
        tw, th = s.get("tw", 1), s.get("th", 1)  # NATTEN has no tiles
        row_major = lambda t: (t % s["width"], t // s["width"])
        tiled = lambda t: (t // (tw * th) % (s["width"] // tw) * tw + t % (tw * th) % tw,
                           t // (tw * th) // (s["width"] // tw) * th + t % (tw * th) // tw)
        want = _gym_natten(i, j, s["width"], s["height"], s["kw"], s["kh"], row_major if name == "natten" else tiled)
    assert torch.equal(dense_mask(cls.checked, {}, {}, s, (1, 1, n, n))[0, 0], want)
    module = make_module(cls, 2, 16, 16)
    q, k, v, inputs = random_inputs(cls, 1, 2, n, n, 16, 16)
    assert compare(module, q, k, v, inputs, "torch", torch.float32).ok


def test_failed_analysis_shows_no_exception_text(monkeypatch):
    def fails(expr):
        raise ValueError("The argument 'nan' is not comparable.")
    monkeypatch.setattr(structure, "_in_d", fails)
    s = structure.classify_mask(TExpr("le", (TExpr("var", (), "j", "int"), TExpr("var", (), "i", "int")), None, "bool"),
                                {})
    assert s.kind == "general" and "nan" not in s.reason and "comparable" not in s.reason


# ---------------------------------------------------------------------- the budget
def test_spent_budget_makes_the_mask_general_with_a_note():
    comp = build(ROOT / "examples" / "sliding_window.attn", analysis_budget=0)
    assert comp.plan.mask.kind == "general" and "analysis budget of 0 s spent" in comp.plan.mask.reason
    plan = format_plan(comp.plan, comp.log)
    assert "analysis budget of 0 s spent" in plan and "Error" not in plan
    assert [name for name, _ in comp.log].count("analysis") == 1
    cls = attncc.compile(comp)
    module = make_module(cls, 2, 16, 16)
    q, k, v, inputs = random_inputs(cls, 1, 2, 40, 40, 16, 16)
    assert compare(module, q, k, v, inputs, "torch", torch.float32).ok


def test_budget_from_the_environment(monkeypatch):
    monkeypatch.setenv("ATTNCC_ANALYSIS_BUDGET", "0")
    assert build("attention a { mask(i, j) = j <= i }").plan.mask.kind == "general"
    monkeypatch.setenv("ATTNCC_ANALYSIS_BUDGET", "60")
    assert build("attention a { mask(i, j) = j <= i }").plan.mask.kind == "causal"
    monkeypatch.setenv("ATTNCC_ANALYSIS_BUDGET", "soon")
    with pytest.raises(AttnccError, match="ATTNCC_ANALYSIS_BUDGET"):
        build("attention a { mask(i, j) = j <= i }")


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "x", True, None])
def test_budget_must_be_seconds(bad):
    with pytest.raises(AttnccError, match="number of seconds"):
        check_budget(bad)


def test_a_spent_budget_stops_every_later_proof():
    with session(0.0) as s:
        with pytest.raises(BudgetSpent):
            checkpoint()
        assert s.spent
    checkpoint()  # outside a session: no budget


def test_budget_spent_midway_keeps_earlier_proofs(monkeypatch):
    """The mask is proven, then the clock passes the budget: the modulation's proofs conclude general."""
    import attncc.passes as passes
    now = [0.0]
    monkeypatch.setattr("attncc.analysis.session.time.monotonic", lambda: now[0])

    def mask_then_late(graph, ctx):
        passes.analyse_mask(graph, ctx)
        now[0] = 1e6
    pipeline = [mask_then_late if p is passes.analyse_mask else p for p in passes.PIPELINE]
    monkeypatch.setattr(passes, "PIPELINE", pipeline)
    comp = build(ROOT / "examples" / "retention.attn", analysis_budget=10)
    assert comp.plan.mask.kind == "causal"
    assert comp.plan.lowering != "linear_chunked"  # the decay was not proven in time
    assert any(name == "analysis" and "budget of 10 s spent" in message for name, message in comp.log)


@pytest.mark.slow
def test_stress_specs_compile_in_seconds():
    """Generous bounds (the CI machine may be loaded): they took 79-164 s and 88 s before."""
    for text in (chunk_spec(16384), global_tokens_spec(199)):
        start = time.perf_counter()
        attncc.compile(text)
        assert time.perf_counter() - start < 30
    for name in ("natten", "tiled_natten", "sta"):
        start = time.perf_counter()
        attncc.compile(SPECS / f"{name}.attn")
        assert time.perf_counter() - start < 30
