"""Gradients of every lowering, in both backends, against the float64 dense reference's autograd.

Gradients are taken for q, k, v, every learned table and every float input. The torch backend is
held to the reference in float64 (and to finite differences by gradcheck on tiny sizes); the
Triton backend (forward kernels, backward by recomputing the torch backend) in float32 under
Triton's interpreter.
"""
import functools

import pytest
import torch

import attncc
from attncc.tools.compare import make_module, random_inputs, serving_lengths
from attncc.cli import main
from attncc.plan import registry
from attncc.plan.gradients import torch_backward_line

from .conftest import EXAMPLES, ROOT
from .test_backends import DECAYED, KERNELIZED, MODULATED

OFFSET = """attention offset {
    input off[N]
    param w[H] = ones
    score(i, j) = dot(q[i], k[j]) * scale * w[h] + off[j] - 0.1 * (i - j)
    mask(i, j) = j < i
    normalize softmax
}"""  # a float input and a learned table in the logits; query 0 sees no key (a zero row)
DIFFUSION = """attention diffused {
    input adj[N, N]
    input g[N, N] = diffusion(adj, t=0.5)
    feature phi = elu1
    weight(i, j) = dot(phi(q[i]), phi(k[j])) * g[i, j]
    normalize rows
}"""
FUNCTIONS = """attention functions {
    input g[N]
    param w[H] = normal(std=0.5)
    let x = g[j] * w[h]
    let s = dot(q[i], k[j]) * scale
    score(i, j) = sin(s) + cos(x) + softplus(x) - 0.5 * erf(x) + log1p(abs(x)) + expm1(-abs(s)) + clamp(s, -0.5, 0.5)
                  + clamp(x, -0.3, w[h]) + 0.01 * floor(x * 4) + 0.01 * int(x * 3 + b)
    mask(i, j) = j <= i + 2 * b
}"""  # every differentiable function, conversions (gradient 0) and the batch index b
# VARS with one fixed draw of its features: a redraw per training step is a graph break under torch.compile
VARS_FIXED = (ROOT / "examples" / "vars.attn").read_text().replace("seed = 0)", "seed = 0, redraw = 0)")
SPECS = {p.stem: str(p) for p in EXAMPLES} | {"modulated": MODULATED, "decayed": DECAYED, "offset": OFFSET,
                                               "diffused": DIFFUSION, "vars_fixed": VARS_FIXED,
                                               "functions": FUNCTIONS}
LOWERINGS = registry.names()
CASES = sorted({(name, None) for name in SPECS}
               | {(n, lw) for n, lws in KERNELIZED.items() for lw in lws}
               | {("modulated", "linear_chunked"), ("decayed", "linear_chunked"), ("diffused", "graph"),
                  ("alibi", "decode")},
               key=lambda c: (c[0], c[1] or ""))
IDS = [f"{n}-{lw or 'default'}" for n, lw in CASES]


@functools.cache
def _class(name, lowering):
    return attncc.compile(SPECS[name], lowering=lowering)


def gradients(module, q, k, v, inputs, reference=False):
    """{name: d(sum(out * w)) / d name} for q, k, v, float inputs and learned tables (w fixed, random)."""
    leaves = {"q": q.detach().clone().requires_grad_(), "k": k.detach().clone().requires_grad_(),
              "v": v.detach().clone().requires_grad_()}
    calls = {n: t.detach().clone().requires_grad_() if t.is_floating_point() else t for n, t in inputs.items()}
    leaves |= {n: t for n, t in calls.items() if t.requires_grad} | dict(module.named_parameters())
    run = module.reference if reference else module
    out = run(leaves["q"], leaves["k"], leaves["v"], **calls)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad((out * w.to(out.dtype)).sum(), list(leaves.values()), allow_unused=True)
    return dict(zip(leaves, grads))


def _compare(cls, backend, dtype, tol, nq=70, nk=45):
    nk = nq if cls.GRAPHS else nk
    nq, nk = serving_lengths(cls, nq, nk)  # a row input read at both token indices serves the longer
    module = make_module(cls, 2, 8, 8).to(dtype).eval()  # eval: random features keep their draw
    q, k, v, inputs = random_inputs(cls, 2, 2, nq, nk, 8, 8)
    inputs = {n: t.to(dtype) if t.is_floating_point() else t for n, t in inputs.items()}
    want = gradients(module.double(), q, k, v, inputs, reference=True)
    module.to(dtype).backend = backend
    got = gradients(module, *(t.to(dtype) for t in (q, k, v)), inputs)
    assert set(got) == set(want) and {"q", "k", "v"} <= set(got)
    for name, ref in want.items():
        assert ref is not None and got[name] is not None, f"{name}: no gradient"
        error = float((got[name].double() - ref).abs().max()) / max(1.0, float(ref.abs().max()))
        assert error <= tol, f"{cls.SPEC_NAME} [{cls.LOWERING}, {backend}] d/d{name}: error {error:.2e} > {tol:.0e}"


def _lowerings(cls) -> set[str]:
    """The lowerings a class runs: its own, or each of its maps' (a composition)."""
    maps = getattr(cls, "MAPS", None)
    return {m.LOWERING for m in maps.values()} if maps else {cls.LOWERING}


def test_every_lowering_is_covered():
    assert set().union(*(_lowerings(_class(n, lw)) for n, lw in CASES)) == set(LOWERINGS)


@pytest.mark.parametrize("name,lowering", CASES, ids=IDS)
def test_torch_gradients_match_reference(name, lowering):
    _compare(_class(name, lowering), "torch", torch.float64, 1e-10)


@pytest.mark.parametrize("name", ["alibi", "sliding_window", "linear_elu_causal"])
def test_torch_gradients_across_chunks(name):
    """Past one query chunk (tiled) and several linear chunks: the carried states and skipped tiles."""
    _compare(_class(name, None), "torch", torch.float64, 1e-10, nq=300, nk=300)


# Triton's interpreter is slow: every lowering, with tables and a float input, not every example
TRITON_CASES = [("alibi", None), ("offset", None), ("functions", None), ("strided", None), ("linear_elu", "linear"),
                ("decayed", "linear_chunked"), ("retention", "linear_chunked"), ("toeplitz_linear", "fft"),
                ("grid_rpe", "fft2"), ("ripple", "rings"), ("gkat", "graph"), ("gkat", "tiled"),
                ("favor_softmax", None), ("mra2", None), ("lara", None), ("ra", None), ("sinks", None)]


@pytest.mark.parametrize("name,lowering", TRITON_CASES, ids=[f"{n}-{lw or 'default'}" for n, lw in TRITON_CASES])
def test_triton_gradients_match_reference(name, lowering):
    _compare(_class(name, lowering), "triton", torch.float32, 1e-4)


GRADCHECK = {  # one spec per lowering, tables made small: gradcheck perturbs every entry
    "tiled": ("offset", None, {}),
    "sdpa": ("softmax", None, {}),
    "block_sparse": ("strided", None, {"block": 2, "stride": 2}),
    "linear": ("linear_elu", None, {}),
    "linear_chunked": ("decayed", "linear_chunked", {}),
    "linear_gated": ("simple_gla", None, {}),
    "fft": ("toeplitz_linear", "fft", {"max_len": 6}),
    "fft2": ("grid_rpe", "fft2", {"width": 3, "max_rows": 2}),
    "rings": ("ripple", "rings", {"width": 3, "rings": 2}),
    "graph": ("gkat", "graph", {}),
    "mra": ("mra2", None, {}),
    "lara": ("lara", None, {}),
    "ra": ("ra", None, {}),
    "mixed_chunk": ("flash", None, {"c": 2}),
    "ista": ("vars_fixed", None, {}),
    "decode": ("alibi", "decode", {}),
    "token_blocks": ("document", None, {}),
}


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_gradcheck(lowering):
    """Finite differences in float64 agree with the torch backend's autograd (independent of the reference)."""
    name, forced, sizes = GRADCHECK[lowering]
    cls = _class(name, forced)
    assert cls.LOWERING == lowering
    module = make_module(cls, 2, 3, 2, **sizes).double().eval()  # eval: every call the same draw
    module.backend = "torch"
    q, k, v, inputs = random_inputs(cls, 1, 2, 6, 6, 3, 2)
    floats = sorted(n for n, t in inputs.items() if t.is_floating_point())
    tables = [n for n, _ in module.named_parameters()]
    leaves = [q, k, v, *(inputs[n].double() for n in floats), *(p.detach() for p in module.parameters())]
    leaves = [t.clone().requires_grad_() for t in leaves]

    def f(q, k, v, *rest):
        calls = {**inputs, **dict(zip(floats, rest))}
        tables_now = dict(zip(tables, rest[len(floats):]))
        return torch.func.functional_call(module, tables_now, (q, k, v), calls)
    assert torch.autograd.gradcheck(f, leaves, fast_mode=True)


def test_inspect_names_each_backward(capsys):
    assert all(registry.get(lowering).torch_backward for lowering in LOWERINGS)
    for name, lowering in (("retention", None), ("gkat", "graph"), ("mra2", None)):
        assert main(["inspect", SPECS[name]] + (["--lowering", lowering] if lowering else [])) == 0
        out = capsys.readouterr().out
        lowering = _class(name, lowering).LOWERING
        assert f"torch backward: {torch_backward_line(lowering)}" in out and "triton backward: " in out
