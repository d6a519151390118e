"""Emission reads only the optimized IR: rewriting a node's operands changes the generated code,
the module's interface comes from the graph's signature, and `approx favor` is kernelized by a pass."""
import torch

import attncc
from attncc.api import build
from attncc.emit.module import module_class
from attncc.emit.dispatch import emit_torch
from attncc.ir.graph import attention_of, print_graph
from attncc.lang.operators import fmt
from attncc.passes.quadratic import quadratic_form

from .conftest import ROOT


def _swap_operand(graph, nid: int, position: int, new: int) -> None:
    old = graph.operands(nid)[position]
    graph.g.remove_edge(old, nid, key=position)
    graph.g.add_edge(new, nid, key=position)
    graph.remove_dead()


def test_tiled_prints_the_toeplitz_nodes_operands():
    comp = build(str(ROOT / "examples" / "rpe_performer.attn"), lowering="tiled")
    graph = comp.optimized.copy()
    (node,) = graph.find("toeplitz_attend")
    assert "qk0 * torch.exp(" in emit_torch(graph, comp.plan)
    _swap_operand(graph, node, 2, graph.add("const", dtype="float", value=2.5))  # f(i - j) := 2.5
    source = emit_torch(graph, comp.plan)
    assert "(qk0 * ctx.fp(2.5))" in source and "torch.exp(" not in source


def test_quadratic_form_of_each_rewrite_is_its_dense_weight():
    for name, op, weight, mask in [
            ("linear_elu_causal", "linear_attend", "dot(elu1(q[i]), elu1(k[j]))", "(j <= i)"),
            ("retention", "linear_attend", "(dot(q[i], k[j]) * ((1.0 - (2.0 ** (-5 - h))) ** (i - j)))", "(j <= i)"),
            ("gkat", "graph_attend", "(dot(elu1(q[i]), elu1(k[j])) * walk[i, j])", None)]:
        graph = build(str(ROOT / "examples" / f"{name}.attn")).optimized
        nid = attention_of(graph)
        assert graph.node(nid).op == op
        scores, got_mask = quadratic_form(graph, nid)
        assert fmt(scores) == weight
        assert (fmt(got_mask) if got_mask is not None else None) == mask


def test_module_interface_comes_from_the_signature():
    comp = build(str(ROOT / "examples" / "rpe_performer.attn"))
    assert "# param rpe[((2 * max_len) - 1)] = normal(std=0.1, mean=0.0)" in print_graph(comp.optimized)
    graph = comp.optimized.copy()
    graph.signature = type(graph.signature)(graph.name, {"max_len": 7}, params=graph.signature.params,
                                            features=graph.signature.features)
    text = module_class(graph, comp.plan, comp.spec_hash, comp.plan.lowering)
    assert "SIZES = {'max_len': 7}" in text and "'rpe': ParamSpec(" in text


def test_favor_is_kernelized_by_a_pass():
    comp = build(str(ROOT / "examples" / "favor_softmax.attn"))
    assert comp.checked.normalize == "softmax" and comp.checked.approx.method == "favor"
    (lowered,) = comp.ir.find("attend")
    assert comp.ir.node(lowered).attr("approx").method == "favor"
    assert comp.ir.node(lowered).attr("normalize") == "softmax"
    assert ("kernelize_favor" in [name for name, _ in comp.log])
    assert comp.optimized.node(attention_of(comp.optimized)).attr("normalize") == "rows"
    assert "favor" in comp.optimized.signature.features and "APPROX = None" in comp.module_source


def test_favor_reference_is_the_kernelized_meaning():
    """The oracle evaluates approx favor as rows-normalized favor(q).favor(k) exp(b): with every
    bias 0 and no mask, out_i = sum_j (phi_i . phi_j) v_j / sum_j phi_i . phi_j."""
    spec = "attention a {\n normalize softmax approx favor(features = 16, seed = 1)\n}"
    module = attncc.compile(spec)(D=8)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 9, 8, generator=g) for _ in range(3))
    from attncc.lang.features import random_features
    w = module.projections()["favor"].double()
    pq, pk = random_features("favor", q.double(), w), random_features("favor", k.double(), w)
    weights = pq @ pk.transpose(-1, -2)
    want = (weights @ v.double()) / weights.sum(-1, keepdim=True)
    assert torch.allclose(module.reference(q, k, v), want, atol=1e-10)
