"""The lowering registry: a toy lowering registered in a few lines runs end to end, every registered
lowering carries every field, and no module outside attncc/plan/ and attncc/lowerings/ dispatches on
a lowering's name."""
from __future__ import annotations

import ast

import pytest
import torch

import attncc
from attncc.api import build
from attncc.cli import main
from attncc.emit.torch import emit_score_holes
from attncc.emit.triton_backward import TILE_BACKWARD
from attncc.frontend.approx import APPROXIMATIONS
from attncc.ir.graph import B, D, E, H, N, Nq, attention_of
from attncc.lang.normalizers import NORMALIZERS
from attncc.plan import registry
from attncc.plan.cost import BYTES_IO, Candidate
from attncc.plan.select import format_plan
from attncc.tools.compare import assert_matches_reference, make_module, random_inputs

from .conftest import ROOT


def emit_dense(w, graph, plan) -> None:
    """softmax over the full score matrix, formed at once from the generated holes."""
    emit_score_holes(w, graph)
    with w.block("def forward_torch(self, q, k, v, ctx):"):
        w.line("i = torch.arange(ctx.Nq, device=q.device, dtype=torch.int32).view(1, 1, -1, 1)")
        w.line("j = torch.arange(ctx.N, device=q.device, dtype=torch.int32).view(1, 1, 1, -1)")
        w.line("h = torch.arange(ctx.H, device=q.device, dtype=torch.int32).view(1, -1, 1, 1)")
        w.line("s = scores(q.double(), k.double(), i, j, h, ctx, None).double().expand(*q.shape[:3], k.shape[2])")
        if graph.node(attention_of(graph)).attr("masked"):
            w.line("s = s.masked_fill(~mask(i, j, h, ctx).expand(s.shape), float('-inf'))")
        w.line("return (torch.softmax(s, -1).nan_to_num(0.0) @ v.double()).to(v.dtype)")


DENSE_TORCH = registry.Lowering(
    "dense_torch",
    accepts=lambda query: query.exact and query.op == "attend" and query.attrs["normalize"] == "softmax",
    cost=lambda query: Candidate("dense_torch", 2 * B * H * Nq * N * (D + E), BYTES_IO + 8 * B * H * Nq * N,
                                 "the whole score matrix at once, in torch"),
    emit_torch=emit_dense, torch_backward="through the dense softmax",
    triton_fallback="the dense torch ops", forced_only=True)

SPECS = ["alibi", "sliding_window", "softmax"]  # a learned table, a band, a plain full softmax


@pytest.mark.parametrize("name", SPECS)
def test_toy_lowering_runs_end_to_end(name):
    spec = ROOT / "examples" / f"{name}.attn"
    with registry.registered(DENSE_TORCH):
        assert build(spec).plan.lowering != "dense_torch"  # never chosen by cost
        cls = attncc.compile(spec, lowering="dense_torch")
        assert cls.LOWERING == "dense_torch" and "dense_torch via torch (the dense torch ops" in cls.TRITON_LOWERING
        module = make_module(cls, 2, 16, 8)
        q, k, v, inputs = random_inputs(cls, 2, 2, 37, 29 if name != "sliding_window" else 37, 16, 8)
        for backend in ("torch", "triton"):  # Triton: its declared fallback runs the torch forward
            assert_matches_reference(module, q, k, v, backend, torch.float32, **inputs)
    assert "dense_torch" not in registry.names()


def test_toy_lowering_is_a_candidate_only_when_forced():
    spec = ROOT / "examples" / "alibi.attn"
    with registry.registered(DENSE_TORCH):
        assert "dense_torch" not in format_plan(build(spec).plan, [])
        assert "* dense_torch" in format_plan(build(spec, lowering="dense_torch").plan, [])
        with pytest.raises(attncc.AttnccError, match="registered twice"):
            registry.register(DENSE_TORCH)
    with pytest.raises(attncc.AttnccError, match="unknown lowering `dense_torch`"):
        registry.get("dense_torch")


def test_every_lowering_has_every_field():
    assert {"tiled", "sdpa", "block_sparse", "linear", "linear_chunked", "linear_gated", "fft", "fft2", "rings",
            "graph", "mixed_chunk", "ista", "mra", "lara", "ra", "decode", "token_blocks"} == set(registry.names())
    for lowering in registry.all():
        assert callable(lowering.accepts) and callable(lowering.cost) and callable(lowering.emit_torch), lowering.name
        assert lowering.torch_backward, lowering.name
        assert lowering.emit_triton is not None or lowering.triton_fallback is not None, lowering.name
        if lowering.autotune_configs:
            assert lowering.interpreter_config is not None, lowering.name
        assert registry.get(lowering.autotune_kind).autotune_configs or lowering.triton_backward is None, lowering.name
        if lowering.triton_backward is TILE_BACKWARD:  # its launcher tunes under <kind>:backward
            backward = registry.get(lowering.autotune_kind)
            assert backward.backward_autotune_configs and backward.backward_interpreter_config, lowering.name
        if lowering.tolerance is not None:
            assert torch.float32 in lowering.tolerance, lowering.name


def test_sdpa_is_chosen_for_plain_softmax_and_tiled_stays_forceable(capsys):
    comp = build(ROOT / "examples" / "causal.attn")
    assert comp.plan.lowering == "sdpa" and [c.name for c in comp.plan.candidates] == ["tiled", "sdpa", "decode"]
    assert "rt.sdpa_attention(q, k, v, causal=True, scale=ctx.scale)" in comp.torch_source
    assert "Triton has no SDPA: the sdpa plan runs the tiled kernel" in comp.triton_description
    assert "autotune.best(SPEC_HASH, 'tiled'" in comp.triton_source
    tiled = build(ROOT / "examples" / "causal.attn", lowering="tiled")
    assert "rt.tiled_attention(" in tiled.torch_source and "sdpa" not in tiled.torch_source
    assert build(ROOT / "examples" / "alibi.attn").plan.lowering == "tiled"  # a learned bias: not plain
    assert main(["inspect", str(ROOT / "examples" / "softmax.attn")]) == 0
    out = capsys.readouterr().out
    assert " * sdpa " in out and "chosen: sdpa" in out and "triton lowering: tiled online-softmax kernel" in out


# Names of other vocabularies that coincide with lowering names, by module: approximation methods
# (`approx mra` is computed by the lowering `mra`), normalizers (`normalize ista`), benchmark baselines.
OTHER_VOCABULARIES = {
    "approx.py": set(APPROXIMATIONS), "dense.py": set(APPROXIMATIONS) | set(NORMALIZERS),
    "compiled.py": set(APPROXIMATIONS), "check.py": set(NORMALIZERS), "benchmark.py": {"sdpa", "fft"},
    "baselines.py": {"rings", "linear", "sdpa"},  # a size name, an FLA kernel family, the SDPA baseline
}


def _name_constants(node: ast.AST):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node
    elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        for element in node.elts:
            yield from _name_constants(element)


def _dispatch_sites(tree: ast.AST, names: set[str]):
    """(constant, about_lowering) for lowering names compared with, or used as dict keys or subscripts;
    about_lowering: the comparison's other side mentions a lowering."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            about = any("lowering" in ast.unparse(side).lower() for side in sides)
            for side in sides:
                yield from ((c, about) for c in _name_constants(side) if c.value in names)
        elif isinstance(node, ast.Dict):
            yield from ((c, False) for key in node.keys if key is not None
                        for c in _name_constants(key) if c.value in names)
        elif isinstance(node, ast.Subscript):
            yield from ((c, False) for c in _name_constants(node.slice) if c.value in names)


def test_no_lowering_name_dispatch_outside_the_registry():
    names = set(registry.names())
    package = ROOT / "attncc"
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.relative_to(package).parts[0] in ("plan", "lowerings"):
            continue
        allowed = OTHER_VOCABULARIES.get(path.name, set())
        for constant, about_lowering in _dispatch_sites(ast.parse(path.read_text()), names):
            if about_lowering or constant.value not in allowed:
                found.append(f"{path.relative_to(ROOT)}:{constant.lineno}: {constant.value!r}")
    assert not found, "lowering names dispatched on outside the registry:\n" + "\n".join(found)
