"""Gated linear attention with per-dimension gates (GLA, Yang et al. 2023):
W[i, j] = sum_d q_id k_jd exp(G_id - G_jd) on j <= i, G a cumulative log-gate per key dimension.

The chunked algorithm (attncc.rt.gated_linear_attention with a gate row per token) against the dense
definition (differences formed before the exp, masked) and against the naive recurrence of
flash-linear-attention's GLA, re-derived here: S_t = diag(exp(g_t)) S_(t-1) + k_t v_t^T, o_t = q_t S_t,
g_t = G_t - G_(t-1) the per-step log-gate."""
import pytest
import torch

from attncc import rt


def log_gates(b: int, h: int, n: int, d: int, seed: int, strength: float = 1.0) -> torch.Tensor:
    """[b, h, n, d] cumulative log-gates, as GLA makes them: cumsum(log sigmoid(x)) per dimension."""
    x = torch.randn(b, h, n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.cumsum(torch.nn.functional.logsigmoid(x * strength), -2)


def rows(b, h, n, d, e, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, x, generator=gen, dtype=torch.float64) for x in (d, d, e)]


def dense_gla(q, k, v, G, scale: float, normalize: str = "none", eps: float = 0.0) -> torch.Tensor:
    """The definition: W[i, j] = scale sum_d q_id k_jd exp(G_id - G_jd) on j <= i, the per-dimension
    differences masked before the exp ([Nq, N, d] per head), out = W V (or W V / (W 1 + eps))."""
    nq, n = q.shape[2], k.shape[2]
    causal = torch.ones(nq, n, dtype=torch.bool).tril()[..., None]
    decay = torch.where(causal, G[..., :nq, None, :] - G[..., None, :n, :], -torch.inf).exp()
    w = scale * (q[..., :, None, :] * k[..., None, :, :] * decay).sum(-1)
    if normalize == "rows":
        return (w @ v) / (w.sum(-1, keepdim=True) + eps)
    return w @ v


def naive_recurrence(q, k, v, G, scale: float) -> torch.Tensor:
    """S_t = diag(exp(g_t)) S_(t-1) + k_t v_t^T, o_t = scale q_t S_t, g_t = G_t - G_(t-1): one token at a time."""
    b, h, n, d = q.shape
    state = torch.zeros(b, h, d, v.shape[-1], dtype=q.dtype)
    out = []
    for t in range(n):
        step = torch.exp(G[:, :, t] - G[:, :, t - 1]) if t else torch.ones_like(G[:, :, 0])
        state = step[..., None] * state + k[:, :, t, :, None] * v[:, :, t, None, :]
        out.append(scale * torch.einsum("bhd,bhde->bhe", q[:, :, t], state))
    return torch.stack(out, 2)


def chunked(q, k, v, G, scale, normalize="none", eps=0.0, chunk=64):
    nq, n = q.shape[2], k.shape[2]
    mod = torch.full((1, 1, 1, 1), scale, dtype=v.dtype)
    return rt.gated_linear_attention(q, k, v, modulation=mod, gates=(G[..., :nq, :], G[..., :n, :]),
                                     normalize=normalize, eps=eps, chunk=chunk)


@pytest.mark.parametrize("n, chunk", [(1, 64), (37, 16), (130, 64), (200, 32)])
def test_chunked_forward_matches_the_definition_and_the_recurrence(n, chunk):
    q, k, v = rows(2, 2, n, 8, 4)
    G = log_gates(2, 2, n, 8, seed=1)
    got = chunked(q, k, v, G, 8 ** -0.5, chunk=chunk)
    naive = naive_recurrence(q, k, v, G, 8 ** -0.5)
    assert (got - dense_gla(q, k, v, G, 8 ** -0.5)).abs().max() < 1e-9
    assert (got - naive).abs().max() < 1e-9
    got32 = chunked(q.float(), k.float(), v.float(), G.float(), 8 ** -0.5, chunk=chunk)
    assert ((got32.double() - naive).abs().max() / naive.abs().max()) < 1e-5


def test_strong_gates_stay_finite_and_exact():
    """G falling to about -1000 and beyond over 512 tokens (per dimension, different rates): exp(G_i)
    alone underflows and exp(-G_j) overflows in fp32 and fp64; the chunks exponentiate differences only."""
    n = 512
    q, k, v = rows(1, 2, n, 16, 8, seed=2)
    G = log_gates(1, 2, n, 16, seed=3, strength=-4.0)
    G = G * torch.linspace(0.2, 1.5, 16, dtype=torch.float64)  # some dimensions decay slowly, some fast
    assert G.min() < -1000 and G[..., 0].min() > -1000
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-5)):
        Gr = G.to(dtype).double()  # fp32 rounds gates near -1000 by 1e-4: compare on the rounded ones
        want = naive_recurrence(q, k, v, Gr, 0.25)
        got = chunked(q.to(dtype), k.to(dtype), v.to(dtype), G.to(dtype), 0.25)
        assert torch.isfinite(got).all()
        assert ((got.double() - want).abs().max() / want.abs().max()) < tol


def test_rows_normalizer_and_query_key_lengths():
    q = rows(1, 2, 30, 8, 4)[0].exp()  # positive rows: the row sums are well conditioned
    _, k, v = rows(1, 2, 70, 8, 4, seed=1)
    k = k.exp()
    G = log_gates(1, 2, 70, 8, seed=4)
    got = chunked(q, k, v, G, 1.0, "rows", 1e-6, chunk=16)
    assert (got - dense_gla(q, k, v, G, 1.0, "rows", 1e-6)).abs().max() < 1e-9
    q2, _, _ = rows(1, 2, 90, 8, 4, seed=5)  # Nq > N: the later queries read every key
    G2 = log_gates(1, 2, 90, 8, seed=6)
    got = chunked(q2, k, v, G2, 1.0, chunk=16)
    assert (got - dense_gla(q2, k, v, G2, 1.0)).abs().max() < 1e-9


def test_gradients_of_q_k_v_and_the_gates_match_the_definition():
    q, k, v = (x.requires_grad_() for x in rows(1, 2, 70, 8, 4, seed=7))
    G = log_gates(1, 2, 70, 8, seed=8).requires_grad_()
    w = torch.randn(1, 2, 70, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    got = torch.autograd.grad((chunked(q, k, v, G, 0.5, chunk=32) * w).sum(), (q, k, v, G))
    want = torch.autograd.grad((dense_gla(q, k, v, G, 0.5) * w).sum(), (q, k, v, G))
    for name, a, b in zip("qkvG", got, want):
        assert torch.isfinite(a).all() and (a - b).abs().max() < 1e-9, name


def test_strong_gates_have_finite_gradients():
    q, k, v = (x.requires_grad_() for x in rows(1, 1, 256, 8, 4, seed=10))
    G = (log_gates(1, 1, 256, 8, seed=11, strength=-4.0) * 2).requires_grad_()
    assert G.min() < -1000
    grads = torch.autograd.grad(chunked(q, k, v, G, 0.5).float().sum(), (q, k, v, G))
    assert all(torch.isfinite(g).all() for g in grads)


def test_grouped_query_heads_read_their_key_value_head():
    """k, v of 2 heads under 4 query heads (grouped-query attention), the gates per query head."""
    q = rows(1, 4, 50, 8, 4, seed=12)[0]
    _, k, v = rows(1, 2, 50, 8, 4, seed=13)
    G = log_gates(1, 4, 50, 8, seed=14)
    got = chunked(q, k, v, G, 0.5, chunk=16)
    want = dense_gla(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), G, 0.5)
    assert (got - want).abs().max() < 1e-9
