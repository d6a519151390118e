"""Graph kernels: exp(t A) and the truncated walk kernel, applied through products with A (dense or
CSR) without forming G, equal the dense reference that forms G; errors name what is wrong."""
import pytest
import torch

import attncc
from attncc.lang.graph_kernels import apply_kernel, dense_kernel

KERNELS = ["diffusion(adj, t=0.7)", "walks(adj, steps=4, decay=0.3)"]


def _spec(kernel: str) -> str:
    return f"""attention g {{
        input adj[N, N]
        input G[N, N] = {kernel}
        feature phi = elu1
        weight(i, j) = dot(phi(q[i]), phi(k[j])) * G[i, j]
    }}"""


@pytest.mark.parametrize("density", [0.05, 0.5])
@pytest.mark.parametrize("kind,options", [("diffusion", {"t": 1.3}), ("walks", {"steps": 5, "decay": 0.4})])
def test_products_equal_the_formed_kernel(kind, options, density):
    g = torch.Generator().manual_seed(0)
    adj = (torch.rand(60, 60, generator=g) < density).double()
    x = torch.randn(60, 7, generator=g, dtype=torch.float64)
    torch.testing.assert_close(apply_kernel(kind, adj, options, x), dense_kernel(kind, adj, options) @ x)


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("lowering", ["graph", "tiled"])
def test_graph_lowerings_match_reference(kernel, lowering, batched):
    module = attncc.compile(_spec(kernel), lowering=lowering)()
    assert module.LOWERING == lowering
    g = torch.Generator().manual_seed(1)
    for n in (1, 9, 50):
        q, k, v = (torch.randn(2, 3, n, 4, generator=g, dtype=torch.float64) for _ in range(3))
        adj = (torch.rand(2 if batched else 1, n, n, generator=g) < 0.1).double()
        adj = adj if batched else adj[0]
        torch.testing.assert_close(module(q, k, v, adj=adj), module.reference(q, k, v, adj=adj), rtol=1e-7, atol=1e-9)


def test_gradients_flow_through_the_sparse_path():
    module = attncc.compile(_spec(KERNELS[1]), lowering="graph")()
    q, k, v = (torch.randn(1, 2, 20, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    adj = (torch.rand(20, 20) < 0.1).double()
    torch.autograd.gradcheck(lambda q, k, v: module(q, k, v, adj=adj), (q, k, v))


def test_queries_and_keys_must_be_the_same_tokens():
    module = attncc.compile(_spec(KERNELS[0]), lowering="graph")()
    with pytest.raises(attncc.ShapeError, match="same tokens"):
        module(torch.randn(1, 1, 5, 4), torch.randn(1, 1, 6, 4), torch.randn(1, 1, 6, 4), adj=torch.zeros(6, 6))


@pytest.mark.parametrize("decl,message", [
    ("input G[N, N] = heat(adj)", "is not a graph kernel"),
    ("input G[N, Nq] = diffusion(adj)", "float input of shape [N, N]"),
    ("input G[N, N] = diffusion(other)", "not an adjacency input declared above"),
    ("input G[N, N] = walks(adj, steps=2.5)", "whole number"),
    ("input G[N, N] = diffusion(adj, tau=1)", "has no argument `tau`"),
])
def test_bad_graph_declarations(decl, message):
    src = f"attention g {{ input adj[N, N]  {decl}  feature phi = elu1 }}"
    with pytest.raises(attncc.SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        attncc.compile(src)


def test_the_kernel_is_not_an_input_of_the_call():
    module = attncc.compile(_spec(KERNELS[0]))()
    q = torch.randn(1, 1, 4, 4)
    with pytest.raises(attncc.ShapeError, match="unexpected input `G`"):
        module(q, q, q, adj=torch.zeros(4, 4), G=torch.zeros(4, 4))
