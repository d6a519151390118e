"""Composed specs: named attention maps and `output = ` a linear combination of them (docs/language.md,
section "Composition"). Each composition is held to its formula written out here in plain torch (not
to attncc's reference alone), in the output and in the gradients of q, k, v and the learned
coefficient, on both backends (Triton in the interpreter, fp32 and fp16); the shared tables are one
parameter; every error of the construct is located; `inspect` shows each map."""
import copy
import functools
import io
import pickle

import pytest
import torch
import torch.nn.functional as F

import attncc
from attncc.api import build
from attncc.cli import main
from attncc.lang.source import AttnccError, SpecError
from attncc.tools.compare import compare, make_module, random_inputs

from .conftest import ROOT

# causal softmax minus lam[h] times a sliding-window softmax: differential attention on whole q, k
DIFF_WINDOW = """attention diff_window {
    size w = 4
    param lam[H] = 0.5
    map a1 {
        mask(i, j) = j <= i
        normalize softmax
    }
    map a2 {
        mask(i, j) = j <= i and i - j < w
        normalize softmax
    }
    output = a1 - lam[h] * a2
}"""
# a mix chosen per query by a call-time gate, a map with a table of its own (ALiBi slopes), the batch
# index and a size in a coefficient
INPUT_GATE = """attention input_gate {
    size half = 2
    input g[Nq]
    map biased {
        param slope[H] = alibi
        score(i, j) = dot(q[i], k[j]) * scale - slope[h] * (i - j)
        mask(i, j) = j <= i
    }
    map plain {
        normalize softmax
    }
    output = g[i] * biased + (1 - g[i]) * plain / half + 0.25 * b * plain
}"""


@functools.cache
def compiled(text: str, lowering=None):
    return attncc.compile(text, lowering=lowering)


def softmax_attention(q, k, v, keep, bias=None):
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    s = s + bias if bias is not None else s
    p = torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1).nan_to_num(0.0)  # a row without keys: 0
    return p @ v


def causal(nq, nk, width=None):
    i, j = torch.arange(nq).view(-1, 1), torch.arange(nk).view(1, -1)
    return (j <= i) & ((i - j < width) if width is not None else True)


def diff_window_by_hand(q, k, v, lam):
    nq, nk = q.shape[2], k.shape[2]
    a1 = softmax_attention(q, k, v, causal(nq, nk))
    a2 = softmax_attention(q, k, v, causal(nq, nk, 4))
    return a1 - lam.view(1, -1, 1, 1) * a2


def diff_transformer_by_hand(q, k, v, lam):
    """Ye et al.'s DiffAttn: (softmax(Q1 K1^T / sqrt(d)) - lambda softmax(Q2 K2^T / sqrt(d))) V, Q = [Q1; Q2]."""
    d = q.shape[-1] // 2
    keep = causal(q.shape[2], k.shape[2])
    a1 = softmax_attention(q[..., :d], k[..., :d], v, keep)  # softmax_attention scales by 1 / sqrt(d)
    a2 = softmax_attention(q[..., d:], k[..., d:], v, keep)
    return a1 - lam.view(1, -1, 1, 1) * a2


def gated_mix_by_hand(q, k, v, mix):
    nq, nk = q.shape[2], k.shape[2]
    soft = softmax_attention(q, k, v, causal(nq, nk))
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    w = (fq @ fk.transpose(-1, -2)) * causal(nq, nk)
    lin = (w @ v) / (w.sum(-1, keepdim=True) + 1e-6)
    gate = torch.sigmoid(mix).view(1, -1, 1, 1)
    return gate * soft + (1 - gate) * lin


def input_gate_by_hand(q, k, v, g, slope):
    nq, nk = q.shape[2], k.shape[2]
    i, j = torch.arange(nq).view(-1, 1), torch.arange(nk).view(1, -1)
    biased = softmax_attention(q, k, v, causal(nq, nk), -slope.view(1, -1, 1, 1) * (i - j))
    plain = softmax_attention(q, k, v, torch.ones(nq, nk, dtype=torch.bool))
    gi = g.to(q.dtype).view(g.shape[0], 1, nq, 1)
    b = torch.arange(q.shape[0]).view(-1, 1, 1, 1)
    return gi * biased + (1 - gi) * plain / 2 + 0.25 * b * plain


CASES = {
    "diff_window": (DIFF_WINDOW, lambda m, q, k, v, inputs: diff_window_by_hand(q, k, v, m.lam)),
    "diff_transformer": ((ROOT / "examples" / "diff_transformer.attn").read_text(),
                         lambda m, q, k, v, inputs: diff_transformer_by_hand(q, k, v, m.lam)),
    "gated_mix": ((ROOT / "examples" / "gated_mix.attn").read_text(),
                  lambda m, q, k, v, inputs: gated_mix_by_hand(q, k, v, m.mix)),
    "input_gate": (INPUT_GATE, lambda m, q, k, v, inputs: input_gate_by_hand(q, k, v, inputs["g"], m.biased.slope)),
}


def case(name, nq=11, nk=11, batch=2):
    text, by_hand = CASES[name]
    cls = compiled(text)
    module = make_module(cls, heads=3, dim=8, dim_v=6, seed=1)
    q, k, v, inputs = random_inputs(cls, batch, 3, nq, nk, 8, 6, generator=torch.Generator().manual_seed(2))
    return cls, module, q, k, v, inputs, by_hand


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("nq,nk", [(11, 11), (5, 13)])
def test_reference_is_the_formula_written_out(name, nq, nk):
    _, module, q, k, v, inputs, by_hand = case(name, nq, nk)
    with torch.no_grad():
        want = by_hand(module.double(), q, k, v, {n: t.double() for n, t in inputs.items()})
        assert torch.allclose(module.reference(q, k, v, **inputs), want, atol=1e-12)


RUNS = [("torch", torch.float64, 1e-12), ("torch", torch.float32, 2e-5),
        ("triton", torch.float32, 2e-5), ("triton", torch.float16, 5e-3)]


@pytest.mark.parametrize("backend,dtype,tol", RUNS, ids=[f"{b}-{str(d)[6:]}" for b, d, _ in RUNS])
@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_matches_the_formula(name, backend, dtype, tol):
    _, module, q, k, v, inputs, by_hand = case(name, 13, 13)
    module.backend = backend
    with torch.no_grad():
        want = by_hand(module.double(), q, k, v, {n: t.double() for n, t in inputs.items()})
        got = module.to(dtype)(*(t.to(dtype) for t in (q, k, v)), **inputs)
    assert got.dtype == dtype
    assert float((got.double() - want).abs().max()) <= tol
    assert compare(module.float(), q, k, v, inputs, backend, dtype).ok


def leaf_gradients(module, q, k, v, inputs, run):
    """d(sum(out * w)) / d(q, k, v, every learned table), w fixed."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    params = dict(module.named_parameters())
    out = run(*leaves, inputs)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grads = torch.autograd.grad((out * w.to(out.dtype)).sum(), [*leaves, *params.values()])
    return dict(zip(["q", "k", "v", *params], grads))


@pytest.mark.parametrize("backend,dtype,tol", [("torch", torch.float64, 1e-10), ("triton", torch.float32, 1e-4)])
@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_match_the_formula(name, backend, dtype, tol):
    _, module, q, k, v, inputs, by_hand = case(name, 12, 12)
    module = module.double()
    want = leaf_gradients(module, q, k, v, inputs, lambda q, k, v, x: by_hand(module, q, k, v, x))
    module.to(dtype).backend = backend
    got = leaf_gradients(module, *(t.to(dtype) for t in (q, k, v)), inputs, lambda q, k, v, x: module(q, k, v, **x))
    learned = {"diff_window": "lam", "diff_transformer": "lam", "gated_mix": "mix", "input_gate": "biased.slope"}[name]
    assert set(got) == set(want) and learned in got and float(want[learned].abs().max()) > 1e-3
    for n in want:
        error = float((got[n].double() - want[n].double()).abs().max()) / max(1.0, float(want[n].abs().max()))
        assert error <= tol, f"{name} [{backend}] d/d{n}: {error:.2e}"


def test_each_map_has_its_own_lowering():
    cls = compiled((ROOT / "examples" / "gated_mix.attn").read_text())
    assert {n: c.LOWERING for n, c in cls.MAPS.items()} == {"soft": "sdpa", "lin": "linear_chunked"}
    assert {n: c.SPEC_NAME for n, c in cls.MAPS.items()} == {"soft": "gated_mix_soft", "lin": "gated_mix_lin"}
    module = cls(H=2)
    assert module.lowering_at(100) == {"soft": "sdpa", "lin": "linear_chunked"}
    diff = compiled(DIFF_WINDOW)
    assert diff.MAPS["a2"].compilation.plan.mask.describe() != diff.MAPS["a1"].compilation.plan.mask.describe()


def test_a_shared_table_is_one_parameter():
    cls = compiled(DIFF_WINDOW)
    module = cls(H=4)
    assert list(module.state_dict()) == ["lam"]
    assert [n for n, _ in module.named_parameters()] == ["lam"]
    assert all("lam" not in m._parameters and m.SHARED == ("lam",) for m in module.map_modules())
    with torch.no_grad():
        module.lam.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    q, k, v = torch.randn(3, 1, 4, 6, 8, dtype=torch.float64)
    want = diff_window_by_hand(q, k, v, module.lam.detach())
    assert torch.allclose(module(q, k, v), want, atol=1e-10)  # both maps and the coefficient read the copy
    other = cls(H=4)
    other.load_state_dict(module.state_dict())
    assert torch.allclose(other(q, k, v), want, atol=1e-10)
    local = compiled(INPUT_GATE)(H=3)
    assert sorted(local.state_dict()) == ["biased.slope"]  # a map's own table lives under the map


def test_pickle_deepcopy_save_and_to():
    module = compiled(DIFF_WINDOW)(H=2)
    with torch.no_grad():
        module.lam.mul_(3.0)
    q, k, v = torch.randn(3, 2, 2, 7, 8)
    want = module(q, k, v)
    for again in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert type(again) is type(module) and torch.equal(again(q, k, v), want)
        assert [n for n, _ in again.named_parameters()] == ["lam"]
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False)(q, k, v), want)
    doubled = module.to(torch.float64)
    assert doubled.lam.dtype == torch.float64
    assert torch.allclose(doubled(q.double(), k.double(), v.double()).float(), want, atol=1e-6)


def test_sizes_are_routed_to_the_maps_and_checked():
    cls = compiled(DIFF_WINDOW)
    module = cls(H=2, w=2)
    assert module.a1.sizes == {"w": 2} and module.a2.sizes == {"w": 2}
    with pytest.raises(AttnccError, match="unknown size `ww`; did you mean `w`"):
        cls(H=2, ww=3)
    with pytest.raises(AttnccError, match="diff_window: its tables are sized by H"):
        cls()


def spec_error(text: str) -> str:
    with pytest.raises(SpecError) as info:
        build(text)
    return str(info.value)


MAPS = """    map a1 {
        mask(i, j) = j <= i
    }
    map a2 {
        normalize softmax
    }
"""
ERRORS = [
    ("output = a1 * a2", "a map times a map is not linear", "a map may be added, subtracted, multiplied"),
    ("output = sigmoid(a1) + a2", "map `a1` is used non-linearly", "sum of coefficient * map terms"),
    ("output = a1 + 1 / a2", "dividing by a map is not linear", None),
    ("output = a1 + 1", "a term of `output` without a map", None),
    ("output = a1 - a3", "unknown map `a3`", "the maps: a1, a2"),
    ("output = a1 - a_2", "unknown map `a_2`", "did you mean `a2`?"),
    ("output = a1", "map `a2` is never used in `output`", "add it to `output`, or drop the map"),
    ("output = j * a1 + a2", "the coefficient of `a1` depends on the key index `j`", "it may use h, b, i"),
    ("output = a1 + lam[h] * a2", "unknown table `lam`", None),
    ("output = a1 + a2\n    output = a1 - a2", "`output` is given twice", None),
    ("output = a1 + a2\n    mask(i, j) = j < i", "`mask` is written outside the maps of a spec that has maps",
     "move it into a `map NAME { ... }`"),
    ("output = a1 + a2\n    normalize softmax", "`normalize` is written outside the maps", None),
    ("output = a1 + a2\n    map a1 { }", "`a1` is declared twice", None),
    ("output = a1 + a2\n    map train { }", "`train` cannot name a map", None),
    ("output = a1 + a2\n    map a3 { map a4 { } }", "a map cannot hold another map", None),
    ("output = a1 + a2\n    map a3 { output = a1 }", "`output` belongs at the top level of the spec", None),
    ("", "a spec with maps needs `output = ...`", "e.g. `output = a1 - a2`"),
]


@pytest.mark.parametrize("output,message,hint", ERRORS, ids=[e[1][:40] for e in ERRORS])
def test_errors_are_located_with_hints(output, message, hint):
    text = spec_error("attention bad {\n" + MAPS + "    " + output + "\n}")
    assert f"error: {message}" in text, text
    assert text.startswith("<spec>:") and "^" in text
    if hint is not None:
        assert hint in text, text


def test_output_without_maps_and_errors_inside_maps():
    text = spec_error("attention plain {\n    mask(i, j) = j <= i\n    output = 2\n}")
    assert "<spec>:3:5: error: `output` combines attention maps, but this spec defines none" in text
    assert "hint: declare the maps with `map NAME { ... }`, or drop `output`" in text
    # an error of a shared declaration is reported once (not once per map); one inside a map at its place
    text = spec_error("attention bad {\n    param lam[H] = foo\n" + MAPS.replace("j <= i", "j <= ii")
                      + "    output = a1 - lam[h] * a2\n}")
    assert text.count("unknown initializer `foo`") == 1 and "<spec>:2:20" in text
    assert "<spec>:4:27: error: unknown name `ii`" in text
    # a syntax error inside a map is found by the statement-wise recovery
    text = spec_error("attention bad {\n    map a1 {\n        mask(i, j) = j <= i)\n        normalize softmax\n    }\n"
                      "    map a2 {\n        bias(i, j) = (i - j\n    }\n    output = a1\n}")
    assert "<spec>:3:28: error: unexpected `)`" in text and "<spec>:9:5: error: unexpected `output`" in text and "expected `)`" in text


def test_maps_may_share_features_and_declare_their_own():
    text = """attention shared_phi {
        feature phi = elu1
        map lin {
            mask(i, j) = j <= i
            normalize rows
        }
        map soft {
            size w = 3
            mask(i, j) = j <= i and i - j < w
            normalize softmax
        }
        output = 0.5 * lin + 0.5 * soft
    }"""
    comp = build(text)
    assert comp.maps["lin"].plan.lowering == "linear_chunked"
    assert "feature" not in "\n".join(map(str, comp.maps["soft"].checked.features))  # unused by a softmax map
    assert comp.maps["soft"].checked.sizes == {"w": 3}


def test_specs_without_maps_are_compiled_as_before():
    comp = build(ROOT / "examples" / "alibi.attn")
    assert not hasattr(comp, "maps") and list(comp.parts()) == [""]


def test_inspect_shows_each_map(capsys):
    path = str(ROOT / "examples" / "gated_mix.attn")
    for args, marker in [(["--stage", "ast"], "attention gated_mix_lin {"),
                         (["--stage", "ir"], "graph gated_mix_lin"),
                         (["--stage", "optimized"], "[reassociate_kernel]"),
                         (["--stage", "plan"], "chosen: linear_chunked"),
                         (["--emit", "torch"], "def forward_torch"),
                         (["--emit", "triton"], "@triton.jit"),
                         (["--emit", "module"], "def combine(outs, ctx, device):")]:
        assert main(["inspect", path, *args]) == 0
        out = capsys.readouterr().out
        assert out.startswith("# gated_mix: output = (sigmoid(mix[h]) * soft) + ((1 - sigmoid(mix[h])) * lin)")
        assert "map soft (compiled as the spec `gated_mix_soft`)" in out
        assert "map lin (compiled as the spec `gated_mix_lin`)" in out and marker in out, args


def test_compile_writes_every_module(tmp_path, capsys):
    assert main(["compile", str(ROOT / "examples" / "gated_mix.attn"), "-o", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gated_mix.py", "gated_mix_lin.py", "gated_mix_lin_triton.py", "gated_mix_soft.py", "gated_mix_soft_triton.py"]
    assert "map soft lowering sdpa, map lin lowering linear_chunked" in capsys.readouterr().out
    source = (tmp_path / "gated_mix.py").read_text()
    assert "    c_soft = t0  # sigmoid(mix[h])\n    c_lin = (1 - t0)  # (1 - sigmoid(mix[h]))\n" in source
    assert "    return c_soft * outs['soft'] + c_lin * outs['lin']\n" in source


def test_a_saved_composed_module_loads_in_a_fresh_process(tmp_path):
    """The maps' classes are rebuilt from the composed spec's recipe (attncc.api.rebuild)."""
    import os
    import subprocess
    import sys
    module = compiled(INPUT_GATE)(H=2)
    with torch.no_grad():
        module.biased.slope.mul_(2.0)
    q, k, v, inputs = random_inputs(type(module), 2, 2, 9, 9, 8, 8)
    torch.save({"model": module, "args": (q.float(), k.float(), v.float()), "inputs": inputs}, tmp_path / "m.pt")
    load = ("import sys, torch; s = torch.load(sys.argv[1], weights_only=False); "
            "torch.save(s['model'](*s['args'], **s['inputs']), sys.argv[2])")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ATTNCC_CACHE_DIR": str(tmp_path / "empty-cache")}
    result = subprocess.run([sys.executable, "-c", load, str(tmp_path / "m.pt"), str(tmp_path / "out.pt")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "out.pt"), module(q.float(), k.float(), v.float(), **inputs))


def test_tap_is_the_combined_matrix():
    _, module, q, k, v, inputs, _ = case("input_gate", 9, 9)
    module = module.double()
    p = module.tap(q, k, v, **inputs)
    assert p.shape == (2, 3, 9, 9)
    assert torch.allclose(p @ v, module.reference(q, k, v, **inputs), atol=1e-12)
    rows = torch.tensor([7, 2])
    assert torch.allclose(module.tap(q, k, v, rows=rows, **inputs), p[:, :, rows], atol=1e-12)
    _, diff, q, k, v, _, _ = case("diff_window", 6, 6)
    with torch.no_grad():
        want = softmax_attention(q, k, v, causal(6, 6)) - diff.lam.double().view(1, -1, 1, 1) * softmax_attention(
            q, k, v, causal(6, 6, 4))
    assert torch.allclose(diff.double().tap(q, k, v) @ v, want, atol=1e-12)


@pytest.mark.parametrize("kv_heads", [1, 3])
@pytest.mark.parametrize("name", sorted(CASES))
def test_grouped_query_heads(name, kv_heads):
    """k and v with fewer heads: every map reads key/value head h // (H / Hkv); the combination is per query head."""
    text, by_hand = CASES[name]
    cls = compiled(text)
    module = make_module(cls, heads=3, dim=8, dim_v=6, seed=1, kv_heads=kv_heads).double()
    q, k, v, inputs = random_inputs(cls, 2, 3, 10, 10, 8, 6, generator=torch.Generator().manual_seed(4),
                                    kv_heads=kv_heads)
    expand = lambda t: t.repeat_interleave(3 // kv_heads, dim=1)  # noqa: E731
    with torch.no_grad():
        want = by_hand(module, q, expand(k), expand(v), {n: t.double() for n, t in inputs.items()})
        assert torch.allclose(module.reference(q, k, v, **inputs), want, atol=1e-12)
        assert torch.allclose(module(q, k, v, **inputs), want, atol=1e-10)


def test_the_reference_function_takes_shared_and_map_tables():
    q, k, v = torch.randn(3, 1, 2, 7, 8, dtype=torch.float64)
    g = torch.rand(1, 7)
    slope, lam = torch.tensor([0.5, 0.25]), torch.tensor([0.3, 0.7])
    got = attncc.reference(INPUT_GATE, q, k, v, params={"biased.slope": slope}, g=g)
    assert torch.allclose(got, input_gate_by_hand(q, k, v, g, slope), atol=1e-12)
    got = attncc.reference(DIFF_WINDOW, q, k, v, params={"lam": lam})
    assert torch.allclose(got, diff_window_by_hand(q, k, v, lam), atol=1e-12)
    with pytest.raises(AttnccError, match="made by attncc.compile"):
        compiled(DIFF_WINDOW).__mro__[1]()  # the generated module's class alone has no maps


def test_fuzz_a_composed_family_under_every_lowering_of_each_map():
    from attncc.tools.fuzzing import fuzz
    family = DIFF_WINDOW.replace("j <= i and i - j < w", "??")
    report = fuzz([family], 3, [("torch", torch.float32)], seed=1)
    assert report.failure is None and report.examples >= 3
    assert {"a1: sdpa, a2: tiled", "a1: tiled, a2: tiled", "a1: decode, a2: tiled"} <= set(report.lowerings)


def test_as_a_layer_with_padded_sequences():
    layer = attncc.layer(ROOT / "examples" / "diff_transformer.attn", embed_dim=32, num_heads=2, batch_first=True)
    x = torch.randn(2, 9, 32)
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[1, 6:] = True
    out, _ = layer(x, x, x, key_padding_mask=padding, need_weights=False)
    alone, _ = layer(x[1:, :6], x[1:, :6], x[1:, :6], need_weights=False)
    assert torch.allclose(out[1:, :6], alone, atol=1e-5)
    assert layer.attention.last_backend == "torch" and layer.attention.sizes == {}
    assert [n for n, _ in layer.named_parameters()].count("attention.lam") == 1


def test_a_map_s_own_input_goes_to_that_map_only():
    text = """attention own_inputs {
        input g[Nq]
        map a1 {
            input doc[N] : int
            mask(i, j) = doc[i] == doc[j]
        }
        map a2 {
            mask(i, j) = j <= i
        }
        output = g[i] * a1 + a2
    }"""
    cls = compiled(text)
    assert set(cls.INPUTS) == {"g", "doc"} and set(cls.MAPS["a2"].INPUTS) == {"g"}
    module = cls()
    q, k, v, inputs = random_inputs(cls, 2, 2, 8, 8, 4, 4)
    nq = 8
    keep = inputs["doc"].view(2, 1, -1, 1) == inputs["doc"].view(2, 1, 1, -1)
    want = (inputs["g"].double().view(2, 1, nq, 1) * softmax_attention(q, k, v, keep)
            + softmax_attention(q, k, v, causal(nq, nq)))
    assert torch.allclose(module.reference(q, k, v, **inputs), want, atol=1e-12)
    assert torch.allclose(module(q, k, v, **inputs), want, atol=1e-10)
    with pytest.raises(AttnccError, match="unexpected input `dco`; did you mean `doc`"):
        module(q, k, v, g=inputs["g"], dco=inputs["doc"])
    with pytest.raises(AttnccError, match="missing input `doc`"):
        module(q, k, v, g=inputs["g"])
