"""Regression tests for language semantics across backends, and for analysis soundness."""
import pytest
import torch

import attncc
from attncc.api import build
from attncc.tools.compare import compare, make_module, random_inputs
from attncc.lang.source import SpecError

SPECS = {
    "powers": "attention powers { score(i, j) = dot(q[i], k[j]) * scale + 0.001 * ((i - j) ** 3)"
              " + 0.1 * (((i - j) * 0.1) ** 2.0) + 1e-20 * (((i - j) * 1.0) ** 17) + 0.01 * abs(i - j) ** 0.5 }",
    "eps_zero": "attention eps_zero { weight(i, j) = dot(q[i], k[j]) ** 2  mask(i, j) = j < i  normalize rows(eps = 0) }",
    "bool_input": "attention bool_input { size w = 2  size r = w * 3  input adj[Nq, N] : bool"
                  "  mask(i, j) = adj[i, j] and abs(i - j) <= r }",
    "bool_equality": "attention bool_equality { feature phi = elu1  input adj[Nq, N] : bool"
                     "  mask(i, j) = adj[i, j] == (j <= i) }",
    "hypercube": "attention hypercube { size block = 4  mask(i, j) = popcount(gray(i // block) ^ gray(j // block)) <= 1 }",
    "softcap": "attention softcap { size cap = 5  score(i, j) = tanh(dot(q[i], k[j]) * scale / cap) * cap"
               "  mask(i, j) = where(i > 10, j <= i, true) }",
    "float_mask": "attention float_mask { mask(i, j) = (i - j) * 0.1 <= 0.3 and i * 0.1 - j * 0.1 < 0.7 }",
    "int_overflow": "attention int_overflow { mask(i, j) = (i ** 4) % 7 <= j % 7 }",
    "bounds": "attention bounds { param t[1] = 3  input lens[1] : int"
              "  mask(i, j) = i - j < h + 1 and i - j <= t[0] * 2 and i - j <= lens[0] + 9 and i - j <= N // 2"
              " and i - j < 100 * scale and i - j != N / 2 }",
}


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_backends_agree_on_semantics(name, backend):
    cls = attncc.compile(SPECS[name])
    module = make_module(cls, 2, 16, 16)
    q, k, v, inputs = random_inputs(cls, 2, 2, 300 if name == "int_overflow" else 29, 29, 16, 16)
    result = compare(module, q, k, v, inputs, backend, torch.float32)
    assert result.ok, f"{name}: {result.error:.3e}"


def test_bool_equality_is_not_mistaken_for_structure():
    comp = build(SPECS["bool_equality"])
    # a mask reading an input per pair: the tiles visited are decided per call (token_blocks) or all of them
    assert comp.plan.mask.kind == "general" and comp.plan.lowering in ("tiled", "token_blocks")


def test_analysis_failure_falls_back_to_general():
    assert build(SPECS["hypercube"]).plan.mask.kind == "general"


def test_derived_sizes_follow_overrides():
    cls = attncc.compile(SPECS["bool_input"])
    assert cls(w=5).sizes == {"w": 5, "r": 15}
    with pytest.raises(attncc.AttnccError, match="derived"):
        cls(r=1)


@pytest.mark.parametrize("text,message", [
    ("size w = -3", "a size must be >= 0"),
    ("mask(i, j) = (j <= i) == 1", "compares a bool with a number"),
    ("size i = 3", "`i` is a built-in name"),
    ("weight(i, j) = dot(psi(q[i]), k[j])", "unknown feature map `psi`"),
    ("mask(i, j) = 0 < i < 5", "comparisons do not chain"),
    ("size score = 3", "`score` is a reserved word"),
])
def test_checker_rejects(text, message):
    with pytest.raises(SpecError, match=message):
        build(f"attention a {{ {text} }}")


@pytest.mark.parametrize("mask,claim", [
    ("(i - j) * 0.1 <= 0.3", "general"),  # float rounding differs per (i, j): no band
    ("i * 0.1 - j * 0.1 < 0.5", "general"),
    ("i - j == N / 2", "general"),  # no integer solution for odd N
    ("i - j <= N // 2", "band -oo <= i - j <= floor(N/2)"),
    ("i - j < 100 * scale and j <= i", "general within 0 <= i - j <= oo"),
])
def test_no_structure_is_claimed_from_inexact_arithmetic(mask, claim):
    assert build(f"attention a {{ mask(i, j) = {mask} }}").plan.mask.describe() == claim


def test_integer_division_by_zero_is_defined_everywhere():
    """x // 0 = 0 and x % 0 = x, so that x == (x // y) * y + x % y holds for every y."""
    spec = "attention divzero { mask(i, j) = (i + 3) // (j % 4) == 1 or (i - 5) % (j - 2) >= 2 or j == 0 }"
    cls = attncc.compile(spec)
    module = make_module(cls, 1, 16, 16)
    q, k, v, inputs = random_inputs(cls, 1, 1, 30, 30, 16, 16)
    for backend in ("torch", "triton"):
        assert compare(module, q, k, v, inputs, backend, torch.float32).ok
    from attncc.lang.operators import floordiv, floormod
    x, y = torch.tensor([7, -7, 5]), torch.tensor([0, 0, 3])
    assert floordiv(x, y).tolist() == [0, 0, 1] and floormod(x, y).tolist() == [7, -7, 2]


@pytest.mark.parametrize("weight,sizes", [
    ("dot(q[i], k[j]) * a[h] * 0.9 ** (i - j)", {}),  # a table amplitude, zero at init
    ("dot(q[i], k[j]) * h * 0.9 ** (i - j)", {}),  # amplitude 0 on head 0
    ("dot(q[i], k[j]) * r * 0.9 ** (i - j)", {"r": 0}),
])
def test_decay_with_a_zero_amplitude(weight, sizes):
    cls = attncc.compile(f"attention z {{ size r = 1  param a[H] = zeros  weight(i, j) = {weight}"
                         "  mask(i, j) = j <= i  normalize none }", lowering="linear_chunked")
    module = make_module(cls, 2, 16, 16, randomize=False, **sizes)
    q, k, v, inputs = random_inputs(cls, 1, 2, 30, 30, 16, 16)
    for backend in ("torch", "triton"):
        assert compare(module, q, k, v, inputs, backend, torch.float32).ok


@pytest.mark.parametrize("mask", ["(i // 4 + j // 4) % H == 0", "(i // 4 - j // 4) < D", "(j // 4) * scale < 1.0"])
def test_block_conjuncts_reading_head_sizes_are_not_layouts(mask):
    cls = attncc.compile(f"attention a {{ mask(i, j) = {mask} }}")
    assert cls.compilation.plan.attrs.get("block_layout") is None
    module = make_module(cls, 2, 16, 16)
    q, k, v, inputs = random_inputs(cls, 1, 2, 30, 30, 16, 16)
    assert compare(module, q, k, v, inputs, "torch", torch.float32).ok
