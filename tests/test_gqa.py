"""Grouped-query and multi-query attention: k and v with Hkv heads dividing q's H, query head h reading
key/value head h // (H / Hkv), in every torch lowering, against the dense reference (which indexes k and v
by h // G itself), with gradients; the `hk` index and `[Hkv]` tables; shape errors; and no [B, H, N, D]
copy of k or v in any forward."""
import functools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import attncc
from attncc.lang.source import AttnccError, ShapeError, SpecError
from attncc.rt import grouped_matmul, heads_product
from attncc.tools.compare import compare, make_module, random_inputs

from .conftest import EXAMPLES, ROOT

SPECS = {p.stem: str(p) for p in EXAMPLES}


@functools.cache
def _candidates(name):
    compilation = attncc.compile(SPECS[name]).compilation
    if not hasattr(compilation, "plan"):  # a composition: each map has its plan (test_composed_grouped_heads)
        return ()
    return tuple(c.name for c in compilation.plan.candidates)


@functools.cache
def _class(name, lowering):
    return attncc.compile(SPECS[name], lowering=lowering)


CASES = [(n, lw) for n in sorted(SPECS) for lw in _candidates(n)]
H = 4


@pytest.mark.parametrize("kv_heads", [1, 2, H])
@pytest.mark.parametrize("name,lowering", CASES, ids=[f"{n}-{lw}" for n, lw in CASES])
def test_every_lowering_matches_reference(name, lowering, kv_heads):
    cls = _class(name, lowering)
    nq, nk = (1, 70) if lowering == "decode" else (45, 45) if cls.GRAPHS else (40, 70)
    module = make_module(cls, H, 8, 6, kv_heads=kv_heads, seed=1)
    q, k, v, inputs = random_inputs(cls, 2, H, nq, nk, 8, 6, kv_heads=kv_heads)
    assert k.shape[1] == kv_heads
    result = compare(module, q, k, v, inputs, "torch", torch.float64)
    assert module.last_lowering == lowering
    assert result.ok, f"{name} @ {lowering}, Hkv = {kv_heads}: error {result.error:.2e}"


COMPOSED = [n for n in sorted(SPECS) if not _candidates(n)]


@pytest.mark.parametrize("kv_heads", [1, 2])
@pytest.mark.parametrize("name", COMPOSED)
def test_composed_grouped_heads(name, kv_heads):
    """A composition's maps each read k, v of Hkv heads through their own lowering."""
    cls = _class(name, None)
    module = make_module(cls, H, 8, 6, kv_heads=kv_heads, seed=1)
    q, k, v, inputs = random_inputs(cls, 2, H, 40, 70, 8, 6, kv_heads=kv_heads)
    result = compare(module, q, k, v, inputs, "torch", torch.float64)
    assert result.ok, f"{name}, Hkv = {kv_heads}: error {result.error:.2e}"


GRADIENT_CASES = [("alibi", "tiled"), ("alibi", "decode"), ("causal", "sdpa"), ("block_diagonal", "block_sparse"),
                  ("document", "token_blocks"), ("linear_elu", "linear"), ("retention", "linear_chunked"),
                  ("simple_gla", "linear_gated"), ("rpe_performer", "fft"), ("ripple", "rings"),
                  ("ripple", "fft2"), ("gkat", "graph"), ("flash", "mixed_chunk"), ("vars", "ista"),
                  ("sinks", "tiled"), ("context_pool", "tiled"), ("mra2", "mra"), ("lara", "lara"), ("ra", "ra")]


def _grads(run, leaves, inputs):
    out = run(*leaves, **inputs)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=out.dtype)
    return torch.autograd.grad((out * w).sum(), leaves)


@pytest.mark.parametrize("name,lowering", GRADIENT_CASES, ids=[f"{n}-{lw}" for n, lw in GRADIENT_CASES])
def test_gradients_sum_over_each_group(name, lowering):
    """d/dk and d/dv of a key/value head collect every query head of its group, as the reference's do."""
    cls = _class(name, lowering)
    module = make_module(cls, H, 8, 6, kv_heads=2, seed=2).double().eval()
    nk = 1 if lowering == "decode" else 0
    q, k, v, inputs = random_inputs(cls, 2, H, nk or 24, 24 if cls.GRAPHS or not nk else 40, 8, 6, kv_heads=2)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    module.backend = "torch"
    got = _grads(module, leaves, inputs)
    assert module.last_lowering == lowering
    want = _grads(module.reference, [t.detach().clone().requires_grad_() for t in leaves], inputs)
    for n, a, b in zip("qkv", got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, msg=f"d{n}")


def test_gradcheck_tiny():
    cls = _class("alibi", "tiled")
    module = make_module(cls, H, 4, 3).double()
    module.backend = "torch"
    q, k, v, _ = random_inputs(cls, 1, H, 5, 6, 4, 3, kv_heads=1)
    assert torch.autograd.gradcheck(module, tuple(t.requires_grad_() for t in (q, k, v)))


PER_KV_HEAD = """attention per_kv_head {
    param slope[Hkv] = alibi
    param gain[H] = ones
    score(i, j) = dot(q[i], k[j]) * scale * gain[h] - slope[hk] * (i - j) + 0.1 * hk
    mask(i, j) = j <= i
    normalize softmax
}"""


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_hk_index_and_tables_per_kv_head(kv_heads):
    cls = attncc.compile(PER_KV_HEAD)
    assert "Hkv" in cls.NEEDS
    module = make_module(cls, H, 8, 8, kv_heads=kv_heads, seed=4)
    assert module.slope.shape == (kv_heads,)
    q, k, v, _ = random_inputs(cls, 2, H, 33, 33, 8, 8, kv_heads=kv_heads)
    assert compare(module, q, k, v, {}, "torch", torch.float64).ok
    # the reference's meaning: query head h uses slope[h // (H / Hkv)] and adds 0.1 (h // (H / Hkv))
    group = H // kv_heads
    s = torch.einsum("bhid,bhjd->bhij", q, k.repeat_interleave(group, 1)) * 8 ** -0.5
    heads = torch.arange(H) // group
    dist = (torch.arange(33).view(-1, 1) - torch.arange(33).view(1, -1)).double()
    s = s * module.gain.double().view(1, H, 1, 1) - module.slope.double()[heads].view(1, H, 1, 1) * dist \
        + 0.1 * heads.double().view(1, H, 1, 1)
    s = s.masked_fill(dist < 0, float("-inf"))
    want = torch.softmax(s, -1) @ v.repeat_interleave(group, 1)
    torch.testing.assert_close(module.reference(q, k, v), want, rtol=1e-10, atol=1e-10)
    other = 2 if kv_heads != 2 else 1
    with pytest.raises(ShapeError, match=f"built for Hkv = {kv_heads}"):
        module(q, k[:, :1].repeat(1, other, 1, 1), v[:, :1].repeat(1, other, 1, 1))


def test_hkv_only_in_table_shapes():
    with pytest.raises(SpecError, match="`Hkv` .* can size a table but not be used in a definition"):
        attncc.compile("attention a { score(i, j) = dot(q[i], k[j]) * Hkv  normalize softmax }")
    with pytest.raises(SpecError, match="`hk` cannot be used in a table shape"):
        attncc.compile("attention a { param t[hk] = ones  score(i, j) = dot(q[i], k[j]) * t[0]  normalize softmax }")


def test_shape_errors_say_the_expected_shapes():
    module = make_module(_class("alibi", None), H, 8, 8)
    q = torch.randn(2, H, 10, 8)
    with pytest.raises(ShapeError, match=r"`k` has 3 heads, which do not divide the 4 heads of q .*"
                                         r"expected k \[B, Hkv, N, D\] and v \[B, Hkv, N, E\] with Hkv dividing H"):
        module(q, torch.randn(2, 3, 10, 8), torch.randn(2, 3, 10, 8))
    with pytest.raises(ShapeError, match=r"`v` has shape \(2, 1, 10, 8\), expected \(2, 2, 10, 8\)"):
        module(q, torch.randn(2, 2, 10, 8), torch.randn(2, 1, 10, 8))


def test_grouped_helpers():
    rep = lambda x, n, dim=1: x.repeat_interleave(n // x.shape[dim], dim)  # noqa: E731
    a, b = torch.randn(2, 6, 5, 3), torch.randn(2, 2, 3, 4)
    torch.testing.assert_close(grouped_matmul(a, b), a @ rep(b, 6))
    torch.testing.assert_close(grouped_matmul(b.transpose(-1, -2), a.transpose(-1, -2)), rep(b, 6).transpose(-1, -2) @ a.transpose(-1, -2))
    a5, b5 = torch.randn(2, 6, 3, 5, 3)[:, :, :, 1:], torch.randn(2, 3, 3, 3, 4)  # batch dims, non-contiguous
    torch.testing.assert_close(grouped_matmul(a5, b5), a5 @ rep(b5, 6))
    x, f = torch.randn(4, 2, 2, 3, 9), torch.randn(1, 6, 1, 9)
    torch.testing.assert_close(heads_product(x, f, -3), rep(x, 6, 2) * f)
    with pytest.raises(ValueError, match="neither dividing"):
        grouped_matmul(torch.randn(1, 4, 2, 2), torch.randn(1, 3, 2, 2))


class NewTensors(TorchDispatchMode):
    """Records every tensor an aten op allocates: outputs that share no storage with an input (views,
    in-place results and expands are free and skipped; a repeat_interleave or an expand-then-copy is not)."""

    def __init__(self, keep):
        super().__init__()
        self.keep, self.found = keep, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = [*args, *(kwargs or {}).values()]
        flat = [x for a in flat for x in (a if isinstance(a, (list, tuple)) else (a,))]
        inputs = {a.untyped_storage().data_ptr() for a in flat if isinstance(a, torch.Tensor)}
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs and self.keep(t):
                self.found.append((str(func), tuple(t.shape)))
        return out


def _kv_copies(run, B, H, N, D):
    """The aten calls in run() that allocate a [B, H, N, D]-sized copy of key/value data for Hkv = 1:
    a tensor of >= B H N D elements, with a dimension of the H query heads along which it is the same
    (query-side tensors differ per head, q being random per head), float (bool masks broadcast over the
    heads are not key/value data), and not one value throughout (zero-filled accumulators)."""
    def expanded(t):
        if t.numel() < B * H * N * D or not t.is_floating_point():  # k, v are float (masks broadcast per head are not)
            return False
        t = t.detach()
        if bool((t == t.flatten()[0]).all()):
            return False
        return any(bool((t == t.narrow(d, 0, 1)).all()) for d in range(t.dim()) if t.shape[d] == H)
    with NewTensors(expanded) as seen:
        run()
    return seen.found


MEMORY_CASES = [("alibi", "tiled"), ("alibi", "decode"), ("causal", "sdpa"), ("block_diagonal", "block_sparse"),
                ("document", "token_blocks"), ("linear_elu", "linear"), ("linear_elu_causal", "linear_chunked"),
                ("retention", "linear_chunked"), ("simple_gla", "linear_gated"), ("toeplitz_linear", "fft"),
                ("flash", "mixed_chunk"), ("vars", "ista"), ("mra2", "mra"), ("lara", "lara"), ("ra", "ra")]


@pytest.mark.parametrize("name,lowering", MEMORY_CASES, ids=[f"{n}-{lw}" for n, lw in MEMORY_CASES])
def test_no_expanded_copy_of_k_or_v(name, lowering):
    """Hkv = 1 and many keys: no op of the forward creates a tensor as large as k expanded to the H query
    heads that holds the same data for every query head (_kv_copies)."""
    B, H_, N, D = 1, 6, 1024, 64
    cls = _class(name, lowering)
    module = make_module(cls, H_, D, D, kv_heads=1)
    module.backend = "torch"
    q, k, v, inputs = random_inputs(cls, B, H_, N, N, D, D, kv_heads=1)  # every query: causal masks see all keys
    q, k, v = q.float(), k.float(), v.float()
    with torch.no_grad():
        found = _kv_copies(lambda: module(q, k, v, **inputs), B, H_, N, D)
    assert module.last_lowering == lowering
    assert not found, f"{name} @ {lowering} made [B, H, N, D]-sized tensors: {found[:3]}"


def test_the_copy_detector_sees_an_expansion():
    """The measurement above is real: an explicit expansion of k is found, a view or query rows are not."""
    k, q = torch.randn(1, 1, 2048, 64), torch.randn(1, 6, 2048, 64)
    assert _kv_copies(lambda: k.repeat_interleave(6, 1), 1, 6, 2048, 64)
    assert _kv_copies(lambda: k.expand(1, 6, 2048, 64).contiguous() * 2, 1, 6, 2048, 64)
    assert _kv_copies(lambda: torch.nn.functional.elu(k.expand(1, 6, 2048, 64)), 1, 6, 2048, 64)
    assert not _kv_copies(lambda: k.expand(1, 6, 2048, 64), 1, 6, 2048, 64)  # a view: no memory
    assert not _kv_copies(lambda: q * 2 + torch.zeros(1, 6, 2048, 64), 1, 6, 2048, 64)


def test_gqa_example_checks():
    from attncc.cli import main
    assert main(["check", str(ROOT / "examples" / "gqa.attn")]) == 0


@pytest.mark.parametrize("packed", [True, False])
def test_layer_with_fewer_key_value_heads(packed):
    """attncc.layer(..., num_kv_heads=2): k and v projected to 2 heads, the output torch's sdpa gives with
    the same projections (enable_gqa); a num_kv_heads that does not divide num_heads is refused."""
    options = {} if packed else {"kdim": 24, "vdim": 20}
    mha = attncc.layer(SPECS["softmax"], embed_dim=32, num_heads=4, num_kv_heads=2, batch_first=True,
                       backend="torch", **options).double()
    assert (mha.in_proj_weight if packed else mha.k_proj_weight).shape[0] == (32 + 2 * 16 if packed else 16)
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    key = x if packed else torch.randn(2, 11, 24, dtype=torch.float64)
    value = x if packed else torch.randn(2, 11, 20, dtype=torch.float64)
    out, _ = mha(x, key, value)
    q, k, v = mha.project(x, key, value)
    assert q.shape[1] == 4 and k.shape[1] == v.shape[1] == 2
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    torch.testing.assert_close(out, mha.out_proj(want.transpose(1, 2).reshape(2, 9, 32)))
    with pytest.raises(AttnccError, match=r"num_kv_heads \(3\) must divide num_heads \(4\)"):
        attncc.layer(SPECS["softmax"], embed_dim=32, num_heads=4, num_kv_heads=3)
