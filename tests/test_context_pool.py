"""ContextPool: the banded pooling equals the dense pooling matrix (itself checked entry by entry
against the paper's formula), pooled keys/values go through the spec's attention in every backend,
and the learned head gets gradients."""
import math

import pytest
import torch

import attncc
from attncc.lang.pool import PoolInfo
from attncc.oracle.pool import dense_pooling_matrix
from attncc.rt.pool import context_pool


def _tables(seed, dim):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, dim, generator=g, dtype=torch.float64), torch.randn(2, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("width", [0, 1, 3, 5])
@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.5])
@pytest.mark.parametrize("n", [1, 7, 23])
def test_banded_pooling_equals_dense_matrix(width, sigma, n):
    head, bias = _tables(n + width, 4)
    g = torch.Generator().manual_seed(n)
    k, v = torch.randn(2, 2, n, 4, generator=g, dtype=torch.float64), torch.randn(2, 2, n, 3, generator=g, dtype=torch.float64)
    pool = PoolInfo(("k", "v"), sigma, width)
    P = dense_pooling_matrix(k, head, bias, pool)
    pk, pv = context_pool(k, v, head, bias, sigma=sigma, width=width, targets=("k", "v"))
    assert torch.allclose(pk, P @ k, atol=1e-12) and torch.allclose(pv, P @ v, atol=1e-12)


def test_dense_matrix_is_the_papers_formula():
    """P_ij = g_ij m_j / sum_j g_ij m_j, entry by entry, on a 2-D grid of 3 columns."""
    head, bias = _tables(0, 4)
    k = torch.randn(1, 1, 8, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    pool = PoolInfo(("k",), 0.8, 3)
    P = dense_pooling_matrix(k, head, bias, pool)[0, 0]
    m = [float(torch.sigmoid(head[0] @ k[0, 0, j] + bias[0])) for j in range(8)]
    s = [0.8 * float(torch.sigmoid(head[1] @ k[0, 0, i] + bias[1])) for i in range(8)]
    for i in range(8):
        g = []
        for j in range(8):
            dr, dc = i // 3 - j // 3, i % 3 - j % 3
            inside = max(abs(dr), abs(dc)) <= math.ceil(4 * 0.8)
            g.append(math.exp(-(dr * dr + dc * dc) / (2 * s[i] ** 2)) * m[j] if inside else 0.0)
        for j in range(8):
            assert abs(float(P[i, j]) - g[j] / sum(g)) < 1e-12
    assert torch.allclose(P.sum(-1), torch.ones(8, dtype=torch.float64))


def test_truncation_at_four_sigma():
    """Nothing beyond R = ceil(4 sigma_max) contributes; inside, the Gaussian is kept exactly."""
    head, bias = _tables(2, 4)
    k = torch.randn(1, 1, 40, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    P = dense_pooling_matrix(k, head, bias, PoolInfo(("k",), 1.2, 0))[0, 0]
    d = (torch.arange(40).view(-1, 1) - torch.arange(40).view(1, -1)).abs()
    assert (P[d > 5] == 0).all() and (P.diagonal() > 0).all()
    assert (P[d == 5] > 0).any()  # R = ceil(4.8) = 5: the edge of the box is kept


SPECS = {
    "softmax_2d": "pool k, v = context(sigma = 1.5, width = 4)\nnormalize softmax",
    "causal_1d_values": "pool v = context(sigma = 1)\nmask(i, j) = j <= i\nnormalize softmax",
    "linear_1d_keys": "pool k = context(sigma = 0.7)\nfeature phi = elu1\nmask(i, j) = j <= i",
}


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("backend,dtype,tol", [("torch", torch.float64, 1e-10), ("torch", torch.float32, 1e-5),
                                               ("triton", torch.float32, 1e-5)])
def test_pooled_attention_matches_reference(name, backend, dtype, tol):
    cls = attncc.compile(f"attention p {{\n{SPECS[name]}\n}}")
    module = cls(D=6, backend=backend)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        module.pool_head.normal_(generator=g)
        module.pool_bias.normal_(generator=g)
    q, k, v = (torch.randn(2, 2, 19, 6, generator=g) for _ in range(3))
    want = module.reference(q, k, v)
    got = module(q.to(dtype), k.to(dtype), v.to(dtype)).double()
    assert (got - want).abs().max() <= tol * max(1.0, want.abs().max())


def test_head_is_learned():
    cls = attncc.compile(f"attention p {{\n{SPECS['softmax_2d']}\n}}")
    module = cls(D=4).double()
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 12, 4, generator=g, dtype=torch.float64) for _ in range(3))
    got = torch.autograd.grad(module(q, k, v).square().sum(), [module.pool_head, module.pool_bias])
    from attncc.oracle.dense import dense_attention
    ref = dense_attention(cls.checked, q, k, v, module.params_dict(), {}, module.sizes)
    want = torch.autograd.grad(ref.square().sum(), [module.pool_head, module.pool_bias])
    assert got[0].abs().sum() > 0
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-9)
    assert set(dict(module.named_parameters())) == {"pool_head", "pool_bias"}


def test_tap_applies_to_the_raw_values():
    """out = P v with P the tap: the attention over pooled keys times the pooling of the values."""
    cls = attncc.compile(f"attention p {{\n{SPECS['softmax_2d']}\n}}")
    module = cls(D=4).double()
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        module.pool_head.normal_(generator=g)
    q, k, v = (torch.randn(1, 2, 13, 4, generator=g, dtype=torch.float64) for _ in range(3))
    P = module.tap(q, k, v)
    assert torch.allclose(P @ v, module(q, k, v), atol=1e-10)
