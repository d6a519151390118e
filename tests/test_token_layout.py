"""Block layouts built per call from the inputs a mask reads (attncc/analysis/token_layout.py, the
`token_blocks` lowering): the analysis, the layout kernels against their torch reference (Triton's
interpreter), the tiles the attention kernel visits, its outputs and gradients against the
reference, the cache, and the cost."""
import pytest
import torch

import attncc
from attncc import rt
from attncc.analysis.token_layout import EMPTY, FULL, PARTIAL, TokenLayout, find_token_layout, tile_classes
from attncc.ir.graph import attention_of, expr_of
from attncc.tools.compare import make_module, random_inputs

from .conftest import ROOT

PREFIX_LM = """attention prefix_lm {
    input prefix[1] : int
    mask(i, j) = j <= i or j < prefix[0]
    normalize softmax
}"""  # bidirectional over each sequence's prefix, causal after it
SHARED_PREFIX = """attention shared_prefix {
    size system = 24
    input doc[N] : int
    mask(i, j) = j < system or doc[i] == doc[j] and j <= i
    normalize softmax
}"""  # every document sees the shared system prompt, then itself causally
TREE = """attention tree {
    input ancestor[N, N] : bool
    mask(i, j) = ancestor[i, j]
    normalize softmax
}"""  # a tree of drafts: no interval rule bounds a lookup by both i and j
TOPK = """attention topk_blocks {
    size block = 16
    input selected[Nq // block + 1, N // block + 1] : bool
    mask(i, j) = selected[i // block, j // block] and j <= i
    normalize softmax
}"""  # the key blocks each query block selected (a top-k block selection, made per call)
SPECS = {"document": str(ROOT / "examples" / "document.attn"), "prefix_lm": PREFIX_LM,
         "shared_prefix": SHARED_PREFIX, "tree": TREE, "topk": TOPK}
EVALUATED = ("tree", "topk")  # not chosen at the design inputs (all true): forced


def _layout(spec: str) -> TokenLayout:
    graph = attncc.build(spec).optimized
    return find_token_layout(expr_of(graph, graph.operands(attention_of(graph))[1]))


def _documents(lengths, batch=1):
    return torch.cat([torch.full((n,), d, dtype=torch.int32) for d, n in enumerate(lengths)]).expand(batch, -1)


def test_metadata_and_rules_found():
    assert _layout(SPECS["document"]).describe() == "tiles classified per call from the block min/max of doc[i], doc[j]"
    assert _layout(PREFIX_LM).describe() == "tiles classified per call from the block min/max of (j < prefix[0])"
    assert _layout(SHARED_PREFIX).bounded and len(_layout(SHARED_PREFIX).keys) == 1
    assert not _layout(TREE).bounded and not _layout(TOPK).bounded
    assert _layout(str(ROOT / "examples" / "causal.attn")) is None  # reads no input: the band says it all


def test_document_classes_by_hand():
    """Documents of 20, 30 and 14 tokens, tiles of 16: a tile is empty exactly when its documents differ
    (or it lies above the diagonal), full when one document covers it below the diagonal."""
    classes = tile_classes(_layout(SPECS["document"]), {}, {"doc": _documents([20, 30, 14])}, 64, 64, 16, 16, 1)
    assert classes[0].tolist() == [[PARTIAL, EMPTY, EMPTY, EMPTY], [PARTIAL, PARTIAL, EMPTY, EMPTY],
                                   [EMPTY, PARTIAL, PARTIAL, EMPTY], [EMPTY, PARTIAL, PARTIAL, PARTIAL]]
    long = tile_classes(_layout(SPECS["document"]), {}, {"doc": _documents([64, 64])}, 128, 128, 16, 16, 1)[0]
    assert long[1, 0] == FULL and long[4, 3] == EMPTY and long[5, 4] == FULL and long[5, 5] == PARTIAL


@pytest.mark.parametrize("name", ["document", "prefix_lm", "shared_prefix"])
def test_bounded_classes_are_sound_against_the_mask_on_every_pair(name):
    layout = _layout(SPECS[name])
    exact_layout = TokenLayout(layout.mask, (), (), bounded=False)
    g = torch.Generator().manual_seed(3)
    for _ in range(6):
        nq, n = (int(x) for x in torch.randint(5, 90, (2,), generator=g))
        inputs = {"doc": torch.sort(torch.randint(0, 4, (2, n), generator=g)).values.int(),
                  "prefix": torch.randint(0, n, (2, 1), generator=g).int()}
        inputs = {k: v for k, v in inputs.items() if k in ("doc" if name != "prefix_lm" else "prefix")}
        sizes = {"system": 24}
        got = tile_classes(layout, sizes, inputs, nq, n, 16, 8, 2)
        exact = tile_classes(exact_layout, sizes, inputs, nq, n, 16, 8, 2)
        assert not ((exact != EMPTY) & (got == EMPTY)).any()  # no kept pair in a skipped tile
        assert not ((got == FULL) & (exact != FULL)).any()  # the mask holds on every pair of a full tile
        if name == "document":  # sorted ids: the document rule is exact
            assert torch.equal(got, exact)


def _module(name):
    cls = attncc.compile(SPECS[name])
    assert cls.LOWERING == "token_blocks" or name in EVALUATED
    cls = cls if cls.LOWERING == "token_blocks" else attncc.compile(SPECS[name], lowering="token_blocks")
    return make_module(cls, heads=2, dim=16, dim_v=8)


def _inputs(name, batch, nq, n, g):
    if name == "tree":
        ancestor = torch.rand(batch, n, n, generator=g) < 0.1
        ancestor[:, :, : n // 3] = True  # a shared trunk, then sparse branches: tiles of every class
        return {"ancestor": ancestor | torch.eye(n, dtype=torch.bool)}
    if name == "topk":
        chosen = torch.rand(batch, nq // 16 + 1, n // 16 + 1, generator=g) < 0.4
        return {"selected": chosen | torch.eye(nq // 16 + 1, n // 16 + 1, dtype=torch.bool)}
    if name == "prefix_lm":
        return {"prefix": torch.tensor([[n // 3], [n // 2]], dtype=torch.int32)[:batch]}
    return {"doc": torch.sort(torch.randint(0, 4, (batch, n), generator=g)).values.int()}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_layout_kernels_match_their_reference(name):
    module = _module(name)
    inputs = _inputs(name, 2, 70, 70, torch.Generator().manual_seed(0))
    q = torch.zeros(2, 2, 70, 16)
    ctx = module.call_context(q, q, q[..., :8], inputs)
    kernels = module.triton_kernels()
    for bm, bn in ((16, 16), (32, 16)):
        tiles = kernels.token_tiles(ctx, 2, bm, bn, "cpu")
        want = tile_classes(type(module).compilation.plan.attrs["token_layout"], module.sizes, ctx.inputs, 70, 70,
                            bm, bn, 2)
        assert torch.equal(tiles.classes, want), name


def _listed(lists, row: int) -> set:
    """The tiles one CSR row of a TileLists names, full and partial."""
    return {*lists.full_cols[lists.full_ptr[row]:lists.full_ptr[row + 1]].tolist(),
            *lists.partial_cols[lists.partial_ptr[row]:lists.partial_ptr[row + 1]].tolist()}


def test_document_kernel_skips_the_tiles_whose_documents_differ():
    """The lists the attention kernel walks, against the tiles counted from the document ids directly."""
    module = _module("document")
    doc = _documents([40, 24, 56, 40])  # 160 tokens, 10 tiles of 16 a side
    q = torch.zeros(1, 2, 160, 16)
    tiles = module.triton_kernels().token_tiles(module.call_context(q, q, q[..., :8], {"doc": doc}), 1, 16, 16, "cpu")
    first, last = doc[0, ::16], doc[0, 15::16]  # sorted ids: a tile's documents are [first, last] of its blocks
    meets = (first.view(-1, 1) <= last.view(1, -1)) & (first.view(1, -1) <= last.view(-1, 1))
    causal = torch.arange(10).view(1, -1) <= torch.arange(10).view(-1, 1)
    rows = tiles.rows
    visited = int(rows.full_ptr[-1]) + int(rows.partial_ptr[-1])  # the lengths of the lists the kernel walks
    assert visited == int((meets & causal).sum()) == tiles.visited() == 23
    assert int(causal.sum()) == 55  # what the band-bounded tiled kernel walks
    for r in range(10):  # every listed tile meets the row's documents and lies on or below the diagonal
        assert _listed(rows, r) == {c for c in range(10) if meets[r, c] and causal[r, c]}
    assert int(rows.full_ptr[-1]) == 5  # below the diagonal inside one document: no mask evaluated
    assert int(tiles.cols.full_ptr[-1]) + int(tiles.cols.partial_ptr[-1]) == 23  # the backward's, transposed
    for c in range(10):
        assert _listed(tiles.cols, c) == {r for r in range(10) if meets[r, c] and causal[r, c]}


RUNS = [(name, torch.float32) for name in sorted(SPECS)] + [("document", torch.float16)]


@pytest.mark.parametrize("name, dtype", RUNS, ids=[f"{n}-{str(d)[6:]}" for n, d in RUNS])
def test_outputs_and_gradients_match_reference(name, dtype):
    """Partial tiles (mask), full tiles (prefix-LM below the diagonal: no mask) and skipped ones."""
    module = _module(name)
    g = torch.Generator().manual_seed(1)
    q, k, v, _ = random_inputs(type(module), batch=2, heads=2, nq=45, nk=45, dim=16, dim_v=8, generator=g)
    inputs = _inputs(name, 2, 45, 45, g)
    grads, outs = {}, {}
    for backend, run in (("triton", dtype), ("torch", torch.float64)):
        module.backend = backend
        leaves = [x.detach().to(run).requires_grad_() for x in (q, k, v)]
        out = module(*leaves, **inputs)
        (out * torch.linspace(-1, 1, out.shape[-1], dtype=run)).sum().backward()
        outs[backend], grads[backend] = out.double(), [x.grad.double() for x in leaves]
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert (outs["triton"] - module.reference(q, k, v, **inputs)).abs().max() < tol * 10
    for got, want in zip(grads["triton"], grads["torch"]):
        assert (got - want).abs().max() <= tol * max(1.0, float(want.abs().max()))


def test_layout_is_reused_while_the_inputs_are_unchanged(monkeypatch):
    module = _module("document")
    module.backend = "triton"
    builds = []
    original = rt.TokenTiles.of
    monkeypatch.setattr(rt.TokenTiles, "of", classmethod(lambda cls, c, tile: builds.append(1) or original(c, tile)))
    doc = _documents([10, 30]).contiguous()
    q, k, v, _ = random_inputs(type(module), batch=1, heads=2, nq=40, nk=40, dim=16, dim_v=8)
    with torch.no_grad():
        module(q.float(), k.float(), v.float(), doc=doc)
        module(q.float(), k.float(), v.float(), doc=doc)
        assert len(builds) == 1  # the same int32 tensor, unmodified: the same tiles
        doc[0, 10:] = 0  # one document now: modified in place, so rebuilt
        out = module(q.float(), k.float(), v.float(), doc=doc)
    assert len(builds) == 2
    assert (out.double() - module.reference(q, k, v, doc=doc)).abs().max() < 1e-4
    other = _module("shared_prefix")  # the same input, another spec's mask: its own tiles
    other.backend = "triton"
    with torch.no_grad():
        out = other(q.float(), k.float(), v.float(), doc=doc)
    assert len(builds) == 3
    assert (out.double() - other.reference(q, k, v, doc=doc)).abs().max() < 1e-4


def test_cost_counts_the_visited_tiles():
    plan = attncc.build(SPECS["document"]).plan
    chosen = plan.chosen
    assert plan.lowering == "token_blocks" and "13.28% visited" in chosen.note  # 4 documents of 1024 tokens
    tiled = next(c for c in plan.candidates if c.name == "tiled")
    assert chosen.at(plan.sizes)[0] < 0.3 * tiled.at(plan.sizes)[0]
    assert attncc.build(TREE).plan.lowering == "tiled"  # design inputs all true: nothing to skip, no gain
