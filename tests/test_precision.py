"""Precision: float64 inputs give float64 answers on every lowering, constants included.

`scale` (D ** -0.5, a Python float at run time) and literals must reach a float64 computation in
float64, never rounded through torch's default float32 on the way (attncc/rt/attention.py as_float,
ctx.fp)."""
import functools

import pytest
import torch

import attncc
from attncc.api import relower
from attncc.plan import registry
from attncc.tools.compare import TOLERANCE, compare, random_inputs

# Specs that write `scale` in every position a constant can take in their form: score, bias,
# weight, mask (float32 there, as in the reference), decay base and amplitude, modulation, a
# Toeplitz f(i - j), a grid f, the two terms of a mixed chunk form. (The graph lowering's weight is
# exactly dot * G[i, j]: it has no position for a constant.)
SCALE_EVERYWHERE = {
    "softmax": """size w = 5
        let near = scale * abs(i - j)
        score(i, j) = dot(q[i], k[j]) * scale - near + where(i % 2 == 0, scale, -scale)
        bias(i, j) = scale * exp(-scale * (i - j)) + max(scale, 0.1) / (1 + scale) + softplus(scale)
                   + clamp(scale * (i - j), -scale, scale) + int(scale * 64 + i) * scale
        mask(i, j) = scale * (i - j) <= 3 * scale * w
        normalize softmax""",
    "blocks": """size c = 4
        score(i, j) = dot(q[i], k[j]) * scale + scale * (i - j)
        bias(i, j) = log(1 + scale)
        mask(i, j) = i // c == j // c and j <= i
        normalize softmax""",
    "default_score": """mask(i, j) = j <= i
        normalize softmax""",
    "decay": """weight(i, j) = dot(q[i], k[j]) * scale * (1.0 - scale / 8) ** (i - j)
        mask(i, j) = j <= i
        normalize none""",
    "retention": """weight(i, j) = dot(q[i], k[j]) * scale * 0.9 ** (i - j)
        mask(i, j) = j <= i
        normalize none""",
    "decay_rows": """feature phi = elu1
        weight(i, j) = dot(phi(q[i]), phi(k[j])) * scale * exp(scale * h) * 0.9 ** (i - j)
        mask(i, j) = j <= i
        normalize rows(eps = 1e-3)""",
    "modulated": """feature phi = elu1
        weight(i, j) = dot(phi(q[i]), phi(k[j])) * scale * exp(scale * h) / (1 + scale)
        normalize rows""",
    "toeplitz": """feature phi = elu1
        weight(i, j) = dot(phi(q[i]), phi(k[j])) * scale * exp(-scale * abs(i - j))
        normalize rows""",
    "grid": """size w = 5
        feature phi = elu1
        weight(i, j) = dot(phi(q[i]), phi(k[j])) * scale * exp(-scale * max(abs(i // w - j // w), abs(i % w - j % w)))
        normalize rows""",
    "polynomial": """weight(i, j) = scale * (dot(q[i], k[j]) * scale) ** 2 + scale * dot(q[i], k[j]) + scale
        mask(i, j) = j <= i
        normalize rows""",
    "mixed": """size c = 4
        weight(i, j) = where(i // c == j // c, max(dot(q[i], k[j]) * scale + scale, 0) ** 2, 0)
                     + where(j // c < i // c, scale * dot(q[i], k[j]) / N, 0)
        mask(i, j) = j <= i
        normalize none""",
}


@functools.cache
def _admitted(spec: str) -> list:
    """(lowering, compiled class) for every registered lowering the spec admits."""
    comp = attncc.build(f"attention p {{\n{SCALE_EVERYWHERE[spec]}\n}}")
    out = []
    for name in registry.names():
        try:
            out.append((name, attncc.compile(relower(comp, name))))
        except attncc.AttnccError:
            continue
    return out


def test_scale_specs_cover_every_exact_lowering():
    covered = {lowering for spec in SCALE_EVERYWHERE for lowering, _ in _admitted(spec)}
    assert covered >= {"tiled", "sdpa", "block_sparse", "linear", "linear_chunked", "fft", "fft2", "rings",
                       "mixed_chunk", "decode"}, covered


@pytest.mark.parametrize("spec", sorted(SCALE_EVERYWHERE))
def test_scale_keeps_float64_on_every_lowering(spec):
    """Before the fix a Python-float `scale` went through float32 (errors 1e-8 .. 2e-7)."""
    for lowering, cls in _admitted(spec):
        q, k, v, inputs = random_inputs(cls, 1, 2, 13, 13, 16)
        result = compare(cls(), q, k, v, inputs, "torch", torch.float64)
        assert result.error <= 1e-9, f"{spec} on {lowering}: error {result.error:.2e}"


@pytest.mark.parametrize("spec", sorted(SCALE_EVERYWHERE))
def test_scale_everywhere_on_triton_in_float32(spec):
    for lowering, cls in _admitted(spec):
        q, k, v, inputs = random_inputs(cls, 1, 2, 13, 13, 16)
        result = compare(cls(), q, k, v, inputs, "triton", torch.float32)
        assert result.ok, f"{spec} on {lowering}: error {result.error:.2e} > {result.tolerance:.0e}"
        assert result.tolerance <= 10 * TOLERANCE[torch.float32]


SENTINEL_WINDOWS = [  # (spec, constructor sizes): windows of 2^31 - 1, a "no limit" sentinel
    ("size w = 2147483647\nmask(i, j) = abs(i - j) <= w", {}),
    ("size w = 4\nmask(i, j) = abs(i - j) <= w", {"w": 2**31 - 1}),
    ("size w = 4\nmask(i, j) = j <= i and i - j <= w", {"w": 2**31 - 1}),
    ("size w = 4\nmask(i, j) = i - j >= -w and i - j <= 1 - w", {"w": 2**31 - 1}),  # nothing visible
]


@pytest.mark.parametrize("body,sizes,lowering", [(*w, "tiled") for w in SENTINEL_WINDOWS] + [(*SENTINEL_WINDOWS[1], "decode")])
def test_band_bounds_near_the_int32_limit_on_triton(body, sizes, lowering):
    """The Triton launchers saturate band bounds to -N .. Nq: before, they overflowed the kernel's
    int32 tile arithmetic and every output was 0 (error 1.44) while torch was right."""
    cls = attncc.compile(f"attention b {{\n{body}\nnormalize softmax\n}}", lowering=lowering)
    q, k, v, _ = random_inputs(cls, 1, 2, 20, 20, 16)
    result = compare(cls(**sizes), q, k, v, {}, "triton", torch.float32)
    assert result.ok, f"error {result.error:.2e}"
    grads = {}
    for backend in ("torch", "triton"):
        x = [t.float().requires_grad_() for t in (q, k, v)]
        out = cls(backend=backend, **sizes)(*x)
        (out.square().sum() + sum(t.sum() for t in x)).backward()  # + a term with a gradient when nothing is visible
        grads[backend] = [t.grad for t in x]
    for a, b in zip(grads["torch"], grads["triton"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_a_derived_size_beyond_int32_is_a_located_error():
    """65536 * 65536 folded to 0 in 32 bits at compile time but was 2^32 at construction."""
    with pytest.raises(attncc.SpecError) as err:
        attncc.compile("attention s {\nsize a = 65536\nsize b = a * a\nmask(i, j) = i - j <= b\n}")
    assert "2:1" not in str(err.value) and "3:10" in str(err.value) and "4294967296" in str(err.value)
    with pytest.raises(attncc.SpecError, match="4294967296"):
        attncc.compile("attention s {\nsize a = 65536\nparam t[a * a]\nbias(i, j) = t[i]\n}")


def test_derived_sizes_agree_between_compile_time_and_construction():
    """Sizes are exact integers in both places (an int32 intermediate would wrap: 46341^2 > 2^31)."""
    cls = attncc.compile("attention s {\nsize a = 46341\nsize b = a * a // a\nmask(i, j) = i - j <= b\n}")
    assert cls.SIZES["b"] == 46341 and cls().sizes["b"] == 46341
    small = attncc.compile("attention s {\nsize a = 4\nsize b = a * a\nmask(i, j) = i - j <= b\n}")
    assert small(a=40000).sizes["b"] == 1600000000
    with pytest.raises(attncc.AttnccError, match=r"size `b` \(derived from other sizes\) would be 4294967296"):
        small(a=65536)


@pytest.mark.parametrize("text,literal,why", [
    ("score(i, j) = dot(q[i], k[j]) * scale - 1e300", "1e300", "beyond float32"),
    ("score(i, j) = dot(q[i], k[j]) * scale - 1e20 * 1e20", "1e20 * 1e20", "beyond float32"),  # folded
    ("bias(i, j) = 1e-300 * i", "1e-300", "below float32"),
])
def test_a_literal_float32_cannot_hold_is_a_located_error(text, literal, why):
    """Before, the float64 reference saw a constant shift while torch and Triton saw -inf and gave 0."""
    with pytest.raises(attncc.SpecError) as err:
        attncc.compile(f"attention s {{\n{text}\n}}")
    message = str(err.value)
    assert f"2:{text.index(literal) + 1}: error" in message and why in message and "hint:" in message


def test_the_cli_reports_an_unrepresentable_literal_as_a_user_error(tmp_path, capsys):
    from attncc.cli import main
    spec = tmp_path / "shift.attn"
    spec.write_text("attention s {\nscore(i, j) = dot(q[i], k[j]) * scale - 1e300\n}\n")
    assert main(["inspect", str(spec)]) != 0
    err = capsys.readouterr().err
    assert "shift.attn:2:" in err and "beyond float32" in err and "internal error" not in err


def test_float32_extremes_that_fit_still_compile():
    cls = attncc.compile("attention s {\nbias(i, j) = 3e38 * 0.5 + 1e-30 * i\n}")
    q, k, v, _ = random_inputs(cls, 1, 1, 5, 5, 8)
    assert compare(cls(), q, k, v, {}, "torch", torch.float64).ok


EXP_ROWS = ["", "mask(i, j) = j <= i", "mask(i, j) = i // 3 == j // 3 and j <= i"]


@pytest.mark.parametrize("eps", ["", "(eps = 0)", "(eps = 10)"])
@pytest.mark.parametrize("mask", EXP_ROWS)
def test_exp_weights_under_rows_are_a_stable_softmax(mask, eps):
    """exp(f) weights under `rows` overflowed float32 at f > 88 (exp(100 (i - j)): non-finite rows
    where the float64 reference is finite); computed as a softmax with eps as a key of logit log(eps)."""
    text = f"attention e {{\nweight(i, j) = exp(dot(q[i], k[j]) * scale + 100 * (i - j))\n{mask}\nnormalize rows{eps}\n}}"
    comp = attncc.build(text)
    assert any(name == "stabilize_exp_rows" for name, _ in comp.log)
    cls = attncc.compile(comp)
    q, k, v, _ = random_inputs(cls, 1, 2, 7, 7, 8)  # 100 * 6 < 709: the float64 reference is finite
    runs = [("torch", torch.float64), ("torch", torch.float32), ("triton", torch.float32)]
    for backend, dtype in runs:
        result = compare(cls(), q, k, v, {}, backend, dtype)
        assert result.ok, f"{backend} {dtype}: error {result.error:.2e}"


def test_exp_weights_under_rows_train_through_the_triton_backward():
    cls = attncc.compile("attention e {\nweight(i, j) = exp(dot(q[i], k[j]) * scale + 30 * (j - i))\n"
                         "mask(i, j) = j <= i\nnormalize rows(eps = 0.5)\n}")
    q, k, v, _ = random_inputs(cls, 1, 2, 9, 9, 8)
    grads = {}
    for backend in ("torch", "triton"):
        x = [t.float().requires_grad_() for t in (q, k, v)]
        cls(backend=backend)(*x).square().sum().backward()
        grads[backend] = [t.grad for t in x]
    x = [t.clone().requires_grad_() for t in (q, k, v)]
    cls().reference(*x).square().sum().backward()
    for a, b, ref in zip(grads["torch"], grads["triton"], (t.grad for t in x)):
        torch.testing.assert_close(a.double(), ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(b.double(), ref, rtol=1e-4, atol=1e-4)


def test_context_pool_with_a_tiny_width_stays_finite():
    """sigma = 1e-30: sigma^2 underflowed float32 and the centre offset gave 0 / 0 (NaN); the widths are
    now taken in log space (attncc/rt/pool.py offset_weights)."""
    cls = attncc.compile("attention p {\npool k, v = context(sigma = 1e-30, width = 4)\nnormalize softmax\n}")
    module = cls(D=8)
    q, k, v, _ = random_inputs(cls, 1, 2, 12, 12, 8)
    for dtype in (torch.float64, torch.float32):
        assert compare(module, q, k, v, {}, "torch", dtype).ok
    x = [t.float().requires_grad_() for t in (q, k, v)]
    module(*x).sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in x)
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)
