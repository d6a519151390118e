"""The Python surface: compile, modules, backends, call-time errors, gradients."""
import pytest
import torch

import attncc
from attncc import AttnccError, ShapeError
from attncc.lang.source import SpecError

from .conftest import ROOT

ALIBI = str(ROOT / "examples" / "alibi.attn")
DOCUMENT = str(ROOT / "examples" / "document.attn")


def test_compile_from_path_and_text_give_the_same_module():
    text = (ROOT / "examples" / "causal.attn").read_text()
    a, b = attncc.compile(str(ROOT / "examples" / "causal.attn")), attncc.compile(text)
    assert a.compilation.module_source == b.compilation.module_source
    assert issubclass(a, torch.nn.Module)


def test_auto_backend_is_torch_on_cpu_and_repr_says_so():
    m = attncc.compile(ALIBI)(H=2)
    q = torch.randn(1, 2, 8, 16)
    m(q, q, q)
    assert m.last_backend == "torch"
    assert "backend=auto" in repr(m) and "last_run=torch" in repr(m) and "lowering=tiled" in repr(m)


def test_reference_function():
    q, k, v = (torch.randn(1, 2, 9, 8) for _ in range(3))
    ref = attncc.reference(str(ROOT / "examples" / "softmax.attn"), q, k, v)
    want = torch.softmax(q.double() @ k.double().transpose(-1, -2) / 8 ** 0.5, -1) @ v.double()
    assert torch.allclose(ref, want)


def test_constructor_errors():
    cls = attncc.compile(ALIBI)
    with pytest.raises(AttnccError, match="pass H=..."):
        cls()
    with pytest.raises(AttnccError, match="unknown size `windw`"):
        attncc.compile(str(ROOT / "examples" / "sliding_window.attn"))(windw=3)
    with pytest.raises(AttnccError, match="unknown backend"):
        cls(H=2, backend="cuda")


@pytest.mark.parametrize("q_shape,k_shape,v_shape,message", [
    ((1, 2, 8), (1, 2, 8, 4), (1, 2, 8, 4), "`q` must be \\[batch, heads, tokens, dim\\]"),
    ((1, 2, 8, 4), (1, 2, 7, 4), (1, 2, 8, 4), "`v` has shape"),
    ((1, 2, 8, 4), (1, 3, 8, 4), (1, 3, 8, 4), "`k` has 3 heads, which do not divide the 2 heads of q"),
    ((1, 3, 8, 4), (1, 3, 8, 4), (1, 3, 8, 4), "built for H = 2"),
])
def test_call_time_shape_errors(q_shape, k_shape, v_shape, message):
    m = attncc.compile(ALIBI)(H=2)
    with pytest.raises(ShapeError, match=message):
        m(torch.randn(q_shape), torch.randn(k_shape), torch.randn(v_shape))


def test_input_errors():
    m = attncc.compile(DOCUMENT)()
    q = torch.randn(2, 1, 6, 4)
    with pytest.raises(ShapeError, match="missing input `doc`"):
        m(q, q, q)
    with pytest.raises(ShapeError, match="unexpected input `dco`; did you mean `doc`"):
        m(q, q, q, doc=torch.zeros(2, 6, dtype=torch.long), dco=1)
    with pytest.raises(ShapeError, match="input `doc` has shape \\(5,\\), expected \\(6,\\) or \\(2, 6\\)"):
        m(q, q, q, doc=torch.zeros(5, dtype=torch.long))
    with pytest.raises(ShapeError, match="must be int"):
        m(q, q, q, doc=torch.zeros(6))
    out = m(q, q, q, doc=torch.zeros(6, dtype=torch.long))  # one set of ids shared by the batch
    assert out.shape == (2, 1, 6, 4)


def test_dtype_mismatch_is_named():
    m = attncc.compile(str(ROOT / "examples" / "causal.attn"))()
    q = torch.randn(1, 1, 4, 4)
    with pytest.raises(ShapeError, match="`k` is torch.float16"):
        m(q, q.half(), q)


def test_empty_sequences():
    m = attncc.compile(str(ROOT / "examples" / "causal.attn"))()
    assert m(torch.randn(1, 1, 0, 4), torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 3)).shape == (1, 1, 0, 3)
    assert torch.equal(m(torch.randn(1, 1, 2, 4), torch.randn(1, 1, 0, 4), torch.randn(1, 1, 0, 3)),
                       torch.zeros(1, 1, 2, 3))


def test_fully_masked_rows_are_zero_not_nan():
    cls = attncc.compile("attention a { mask(i, j) = j < i }")  # row 0 sees no key
    q = torch.randn(1, 1, 5, 16)
    for backend in ("torch", "triton", "reference"):
        out = cls(backend=backend)(q, q, q)
        assert torch.isfinite(out).all() and torch.equal(out[0, 0, 0], torch.zeros(16))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_gradients_match_reference(backend):
    cls = attncc.compile(ALIBI)
    m = cls(H=2, backend=backend)
    with torch.no_grad():
        m.slope.mul_(3)
    q, k, v = (torch.randn(1, 2, 20, 16, dtype=torch.float32, requires_grad=True) for _ in range(3))
    m(q, k, v).square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)] + [m.slope.grad.clone()]
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = cls(H=2, backend="torch").double()
    ref.load_state_dict({"slope": m.slope.detach().double()})
    ref(qd, kd, vd).square().sum().backward()
    for got, want in zip(grads, [qd.grad, kd.grad, vd.grad, ref.slope.grad]):
        assert torch.allclose(got.double(), want, atol=1e-4, rtol=1e-4)


def test_state_dict_round_trip():
    cls = attncc.compile(str(ROOT / "examples" / "toeplitz_linear.attn"))
    a, b = cls(), cls()
    b.load_state_dict(a.state_dict())
    q = torch.randn(1, 1, 10, 8)
    assert torch.equal(a(q, q, q), b(q, q, q))


def test_reference_function_survives_module_references():
    q = torch.randn(1, 1, 5, 8)
    attncc.compile(str(ROOT / "examples" / "causal.attn"))().reference(q, q, q)
    for _ in range(2):
        assert attncc.reference(str(ROOT / "examples" / "softmax.attn"), q, q, q).shape == (1, 1, 5, 8)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("spec", [
    "attention a { score(i, j) = dot(q[i], k[j]) * scale / (i - j)  mask(i, j) = j < i }",
    "attention b { score(i, j) = dot(q[i], k[j]) * scale * log(i - j)  mask(i, j) = j < i }",
    "attention c { feature phi = elu1  weight(i, j) = dot(phi(q[i]), phi(k[j])) * sqrt(i - j)  mask(i, j) = j <= i }",
])
def test_gradients_ignore_scores_undefined_at_masked_pairs(spec, backend):
    m = attncc.compile(spec, lowering="tiled")(backend=backend)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1, 12, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    m(q.float(), k.float(), v.float()).sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    m.reference(q, k, v).sum().backward()
    for got, want in zip(grads, (q.grad, k.grad, v.grad)):
        assert torch.allclose(got, want, rtol=1e-3, atol=1e-4)


def test_bad_arguments_are_attncc_errors():
    doc_cls = attncc.compile(DOCUMENT)
    q = torch.randn(1, 1, 4, 8)
    for bad in ("abc", [[1, 2], [3]], None, torch.zeros(4, dtype=torch.complex64)):
        with pytest.raises(ShapeError, match="input `doc`"):
            doc_cls()(q, q, q, doc=bad)
    window = str(ROOT / "examples" / "sliding_window.attn")
    with pytest.raises(AttnccError, match="must be an integer"):
        attncc.compile(window)(window=2.5)
    with pytest.raises(AttnccError, match="below 2\\^31"):
        attncc.compile(window)(window=10**12)
    with pytest.raises(AttnccError, match=r"table `t` \(1048576, 1048576, 1048576\) at n = 1048576 would hold "
                                          r"about 4\.6 EB, over the memory budget"):  # before allocating
        attncc.compile("attention a { size n = 1  param t[n, n, n] = 0 }")(n=2**20)
    with pytest.raises(AttnccError, match="must be a positive integer"):
        attncc.compile(window, sizes={"N": "x"})
    with pytest.raises(AttnccError, match="unknown size `M`"):
        attncc.compile(window, sizes={"M": 3})


def test_reference_of_empty_sequences():
    m = attncc.compile(str(ROOT / "examples" / "causal.attn"))(backend="reference")
    q, k0 = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 0, 4)
    assert torch.equal(m(q, k0, k0), torch.zeros(1, 1, 3, 4))
    assert torch.equal(m.reference(q, k0, k0), torch.zeros(1, 1, 3, 4, dtype=torch.float64))


def test_inputs_and_sizes_named_like_the_module_arguments():
    """Sizes are passed to the constructor by name, inputs to every call: names the module's own
    signatures take (`self`, `backend`, `rows`) are refused where they are declared."""
    for declaration, name in (("input self[N]", "self"), ("size self = 2", "self"), ("size backend = 2", "backend"),
                              ("input rows[N]", "rows")):
        with pytest.raises(SpecError) as info:
            attncc.compile(f"attention a {{\n    {declaration}\n    mask(i, j) = j <= i\n}}")
        (d,) = info.value.diagnostics
        assert f"`{name}` is a keyword argument of the compiled nn.Module" in d.message and d.hint
        assert d.render(info.value.source).startswith("<spec>:2:")


def test_layer_refuses_an_input_named_like_its_keywords():
    spec = "attention a {\n    input need_weights[N] : bool\n    mask(i, j) = need_weights[j]\n}"
    attncc.compile(spec)  # fine as a module: its calls take no such keyword
    with pytest.raises(SpecError, match="keyword argument of attncc.layer's forward"):
        attncc.layer(spec, embed_dim=8, num_heads=2)
