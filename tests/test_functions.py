"""The math functions, conversions, the batch index `b` and `let` (docs/language.md, sections 9, 12, 7a).

Each function's reference meaning is held to Python's math library (hypothesis, small), and every
backend to the reference on a spec that uses it; T5's bucketed relative position, written in the
spec (examples/t5_bias.attn), is held to T5's own formula re-derived here in torch."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attncc
from attncc.api import build
from attncc.cli import main
from attncc.lang.evaluate import Env, evaluate
from attncc.lang.expr import FLOAT, TExpr, const
from attncc.tools.compare import compare, make_module, random_inputs

from .conftest import ROOT


def _call(fn: str, *args: float) -> float:
    t = TExpr("call", tuple(const(float(a)) for a in args), fn, "int" if fn in ("floor", "int") else FLOAT)
    return evaluate(t, Env()).item()


MATH = {
    "sin": math.sin, "cos": math.cos, "erf": math.erf, "log1p": math.log1p, "expm1": math.expm1,
    "softplus": lambda x: max(x, 0.0) + math.log1p(math.exp(-abs(x))),
}
floats = st.floats(-30, 30, allow_nan=False)


@pytest.mark.parametrize("fn", sorted(MATH))
@settings(max_examples=25, deadline=None)
@given(x=floats)
def test_function_reference_is_the_math_function(fn, x):
    if fn == "log1p":
        x = abs(x) - 0.999
    assert _call(fn, x) == pytest.approx(MATH[fn](x), rel=1e-12, abs=1e-300)


@settings(max_examples=40, deadline=None)
@given(x=floats, lo=floats, hi=floats)
def test_clamp_is_min_of_max(x, lo, hi):
    assert _call("clamp", x, lo, hi) == min(max(x, lo), hi)


@settings(max_examples=40, deadline=None)
@given(x=st.floats(-1e4, 1e4, allow_nan=False, width=32))
def test_floor_and_int_round_the_float32_value(x):
    assert _call("floor", x) == math.floor(x)
    assert _call("int", x) == math.trunc(x)  # truncation toward 0, as Python's int()


def test_conversions_saturate_and_map_nan_to_zero():
    for x, floor, trunc in ((float("nan"), 0, 0), (1e20, 2**31 - 1, 2**31 - 1), (-1e20, -2**31, -2**31),
                            (float("inf"), 2**31 - 1, 2**31 - 1), (-2.5, -3, -2), (2.5, 2, 2)):
        assert (_call("floor", x), _call("int", x)) == (floor, trunc)


def test_conversion_operand_is_float32_in_the_reference():
    """4.35 * 100 is 434.99999999999994 in float64 but 435.0 in float32: every backend floors float32's."""
    product = TExpr("mul", (const(4.35), const(100.0)), None, FLOAT)
    assert evaluate(TExpr("call", (product,), "floor", "int"), Env()).item() == 435
    cls = attncc.compile("attention c { input g[N]  bias(i, j) = 0.01 * floor(g[j] * 100.0) }")
    module = make_module(cls, 1, 8, 8)
    q, k, v, _ = random_inputs(cls, 1, 1, 3, 5, 8, 8)
    g = torch.full((5,), 4.35)
    for backend, dtype in (("torch", torch.float64), ("torch", torch.float32), ("triton", torch.float32)):
        assert compare(module, q, k, v, {"g": g}, backend, dtype).ok, (backend, dtype)


FUNCTION_BIASES = {
    "sin": "sin(3 * g[j] + 0.2 * (i - j))", "cos": "cos(3 * g[j] - 0.1 * i)", "erf": "erf(g[j] * 2)",
    "softplus": "softplus(4 * g[j]) - softplus(-0.5 * (i - j))", "log1p": "log1p(abs(g[j]) + 0.01 * j)",
    "expm1": "expm1(-abs(g[j] + 0.05 * (i - j)))", "clamp": "clamp(g[j] * 3, -1, 0.5) + clamp(i - j, -2, 3)",
    "floor": "t[h, clamp(floor(g[j] * 4.0 + 0.37 * (i - j)), -2, 9)]", "int": "0.3 * int(g[j] * 7.0 - 0.13 * j)",
}


@pytest.mark.parametrize("fn", sorted(FUNCTION_BIASES))
def test_every_backend_computes_the_function_as_the_reference(fn):
    cls = attncc.compile(f"attention f {{ input g[N]  param t[H, 8] = normal(std=1.0)  "
                         f"bias(i, j) = {FUNCTION_BIASES[fn]}  mask(i, j) = j <= i + 3 }}")
    module = make_module(cls, 2, 16, 16)
    q, k, v, inputs = random_inputs(cls, 2, 2, 23, 29, 16, 16)
    for backend, dtype in (("torch", torch.float32), ("torch", torch.float64), ("triton", torch.float32),
                           ("triton", torch.float16)):
        result = compare(module, q, k, v, inputs, backend, dtype)
        assert result.ok, f"{fn} {backend} {dtype}: {result.error:.2e}"


def test_conversions_agree_on_special_values_in_every_backend():
    cls = attncc.compile("attention c { input g[N]  bias(i, j) = 0.001 * (floor(g[j]) % 1000) + 0.001 * (int(g[j]) % 997) }")
    module = make_module(cls, 1, 8, 8)
    q, k, v, _ = random_inputs(cls, 1, 1, 4, 8, 8, 8)
    g = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e20, -1e20, 2.5, -2.5, 3e9])
    assert module.reference(q, k, v, g=g).isfinite().all()
    for backend in ("torch", "triton"):
        assert compare(module, q, k, v, {"g": g}, backend, torch.float32).ok, backend


def test_float_functions_have_sympy_forms_and_unknown_forms_stay_general():
    """A bias of i - j through the new functions is still proven Toeplitz; a mask using them is analysed."""
    comp = build("attention s { feature phi = elu1  weight(i, j) = dot(phi(q[i]), phi(k[j])) * "
                 "exp(-softplus(0.1 * abs(i - j)) + 0.1 * cos(i - j) + 0.01 * floor((i - j) * 0.5)) }")
    assert comp.plan.lowering == "fft" or "fft" in [c.name for c in comp.plan.candidates]
    masked = build("attention m { mask(i, j) = j <= i and clamp(i - j, 0, 8) < 8 }")
    assert masked.plan.mask.kind in ("toeplitz", "band") and "not analysed" not in masked.plan.mask.reason
    unknown = build("attention u { mask(i, j) = j <= i and popcount(int(sin(i - j) * 8)) < 2 }")
    assert unknown.plan.mask.lo == 0  # what is not understood is general, never wrong: j <= i still bounds it


# ---------------------------------------------------------------- the batch index b

BATCHED = {
    "bias": "attention bb { input g[N]  bias(i, j) = g[j] * b - 0.1 * (b + 1) * abs(i - j)  mask(i, j) = j != i + b }",
    "tables": "attention bt { param t[3, H] = normal(std=1.0)  input s[4] : int  "
              "bias(i, j) = t[b, h] * (i - j) * 0.1 + s[b] * 0.5 }",
    "decay": "attention bd { feature phi = elu1  weight(i, j) = dot(phi(q[i]), phi(k[j])) * (0.9 - 0.2 * b) ** (i - j)"
             "  mask(i, j) = j <= i }",
    "toeplitz": "attention bf { feature phi = elu1 "
                " weight(i, j) = dot(phi(q[i]), phi(k[j])) * exp(-0.1 * (b + 1) * abs(i - j)) }",
    "mixed": (ROOT / "examples" / "flash.attn").read_text().replace("b[", "rel[").replace("a[h]", "a[h] * (b + 1)")
                                                   .replace("size c = 256", "size c = 8"),
}


@pytest.mark.parametrize("name", sorted(BATCHED))
def test_batch_index_in_every_backend(name):
    lowering = {"decay": "linear_chunked", "toeplitz": "fft", "mixed": "mixed_chunk"}.get(name)
    cls = attncc.compile(BATCHED[name], lowering=lowering)
    module = make_module(cls, 2, 16, 16)
    q, k, v, inputs = random_inputs(cls, 3, 2, 21, 21, 16, 16)
    reference = module.reference(q, k, v, **inputs)
    assert not torch.allclose(reference[0], reference[2])  # b changes the result
    for backend in ("torch", "triton"):
        assert compare(module, q, k, v, inputs, backend, torch.float32).ok, backend


def test_a_declared_b_keeps_meaning_the_declaration():
    """Specs written before `b` existed name a block size `b`: the declaration wins."""
    comp = build("attention blocks { size b = 4  mask(i, j) = i // b >= j // b }")
    assert comp.checked.mask.uses("size", "b") and not comp.checked.mask.uses("var", "b")
    with pytest.raises(attncc.SpecError, match="`b` cannot be used in a size"):
        attncc.compile("attention x { size w = b  mask(i, j) = j <= i }")


# ---------------------------------------------------------------- let

T5 = ROOT / "examples" / "t5_bias.attn"


def test_let_is_shared_in_the_ir_and_the_generated_code():
    text = ("attention shared { let r = abs(i - j)  input g[N] "
            "bias(i, j) = g[j] * r + exp(-r) + where(r < 4, r, 4) + r * r }")
    comp = build(text)
    graph = comp.optimized
    assert sum(1 for n in graph.order() if graph.node(n).op == "call" and graph.node(n).attr("value") == "abs") == 1
    torch_source, triton_source = attncc.compile(text).compilation.torch_source, comp.triton_source
    assert torch_source.count("= abs((i - j))") == 1  # one temporary (the docstring spells the spec)
    assert triton_source.count("tl.abs(") == triton_source.count("= tl.abs(") >= 1  # bound once per kernel
    inline = build("attention shared { input g[N]  bias(i, j) = g[j] * abs(i - j) + exp(-abs(i - j)) "
                   "+ where(abs(i - j) < 4, abs(i - j), 4) + abs(i - j) * abs(i - j) }")
    assert inline.checked.logits == comp.checked.logits  # a let means its body, written in place


def test_integer_parts_under_a_conversion_are_shared_with_the_rest():
    """int(log(n / 8) ...) computes its operand in float32, but n = abs(i - j) and the sizes hold no float:
    the conversion reads their temporaries instead of spelling them again."""
    source = attncc.compile(T5).compilation.torch_source
    code = [line for line in source.splitlines() if not line.strip().startswith('"""')]
    assert sum(line.count("abs((i - j))") for line in code) == 1
    assert sum(line.count("rt.floordiv(ctx.sizes['num_buckets'], 2)") for line in code) == 1


def test_let_may_use_lets_above_it_dot_and_any_declaration():
    cls = attncc.compile("attention lets { let s = dot(q[i], k[j]) * scale  let c = cap * tanh(s / cap)  "
                         "score(a, c2) = c + a * 0  size cap = 5  mask(i, j) = j <= i }")
    module = make_module(cls, 2, 16, 16)
    q, k, v, inputs = random_inputs(cls, 1, 2, 17, 17, 16, 16)
    assert compare(module, q, k, v, inputs, "torch", torch.float32).ok


# ---------------------------------------------------------------- T5's relative position bias

def t5_buckets(i: torch.Tensor, j: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int):
    """T5's `_relative_position_bucket`, re-derived: relative position j - i, float32 logs."""
    relative = j - i
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative > 0).long() * num_buckets
        relative = relative.abs()
    else:
        relative = -torch.minimum(relative, torch.zeros_like(relative))
    max_exact = num_buckets // 2
    large = max_exact + (torch.log(relative.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = torch.minimum(large, torch.full_like(large, num_buckets - 1))
    return buckets + torch.where(relative < max_exact, relative, large)


CAUSAL_T5 = """attention t5_causal {
    size num_buckets = 32
    size max_distance = 128
    param rel_bias[H, num_buckets]
    let max_exact = num_buckets // 2
    let n = max(i - j, 0)
    let large = max_exact + int(log(n / max_exact) / log(max_distance / max_exact) * (num_buckets - max_exact))
    bias(i, j) = rel_bias[h, where(n < max_exact, n, min(large, num_buckets - 1))]
    mask(i, j) = j <= i
}"""


@pytest.mark.parametrize("spec, bidirectional", [(str(T5), True), (CAUSAL_T5, False)], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("sizes", [{}, {"num_buckets": 16, "max_distance": 40}])
def test_t5_buckets_written_in_the_spec_are_t5s(spec, bidirectional, sizes):
    """With rel_bias[h, k] = k, the bias is the bucket: equal to T5's at every offset up to 600."""
    cls = attncc.compile(spec)
    module = make_module(cls, 1, 8, 8, **sizes)
    buckets = module.sizes["num_buckets"]
    with torch.no_grad():
        module.rel_bias.copy_(torch.arange(buckets, dtype=torch.float32).expand(1, buckets))
    i, j = torch.arange(600).view(-1, 1), torch.arange(600).view(1, -1)
    want = t5_buckets(i, j, bidirectional, buckets, module.sizes["max_distance"])
    bias = cls.compilation.checked.logits.args[1]  # logits = score + bias
    env = Env(sizes=module.sizes, rsizes={"N": 600, "Nq": 600, "H": 1, "D": 8, "E": 8}, i=i.view(1, 1, -1, 1).int(),
              j=j.view(1, 1, 1, -1).int(), h=torch.zeros((1, 1, 1, 1), dtype=torch.int32),
              params={"rel_bias": module.rel_bias.detach().double()})
    got = evaluate(bias, env).expand(1, 1, 600, 600)[0, 0].long()
    assert torch.equal(got, want)


def test_t5_example_needs_no_table_beyond_its_buckets(capsys):
    module = attncc.compile(T5)(H=2)
    q = torch.randn(1, 2, 300, 8)
    assert module.clamped_lookups(q, q, q) == []
    assert main(["inspect", str(T5)]) == 0
    assert "triton backward: generated Triton kernels" in capsys.readouterr().out
