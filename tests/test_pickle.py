"""Compiled modules and layers survive torch.save / torch.load, pickle, deepcopy and spawn.

Their classes live in generated modules, so a pickle carries the spec text and the choices that
shaped the class (attncc.api.compile_recipe); loading recompiles it and checks the spec hash.
"""
from __future__ import annotations

import copy
import multiprocessing
import os
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

import attncc
from attncc.api import rebuild

from .helpers import run_fresh
from .markdown_blocks import ROOT

EXAMPLES = ROOT / "examples"


def three_attentions() -> nn.ModuleDict:
    """A torch container (importable anywhere) of three differently lowered compiled attentions."""
    return nn.ModuleDict({
        "alibi": attncc.compile(EXAMPLES / "alibi.attn")(H=4),
        "linear": attncc.compile(EXAMPLES / "linear_elu_causal.attn")(),
        "window": attncc.compile(EXAMPLES / "sliding_window.attn")(window=5),
    })


def outputs(model: nn.ModuleDict, q, k, v) -> dict:
    return {name: module(q, k, v) for name, module in model.items()}


@pytest.fixture
def qkv():
    return torch.randn(3, 2, 4, 37, 16, generator=torch.Generator().manual_seed(0))


def test_torch_save_loads_in_a_fresh_process_with_only_the_file(tmp_path, qkv):
    model = three_attentions()
    with torch.no_grad():
        model["alibi"].slope.mul_(1.5)  # trained state, not the initializer's, must come back
    torch.save({"model": model, "qkv": qkv}, tmp_path / "model.pt")
    expected = outputs(model, *qkv)
    load = ("import sys, torch; saved = torch.load(sys.argv[1], weights_only=False); "
            "torch.save({n: m(*saved['qkv']) for n, m in saved['model'].items()}, sys.argv[2])")
    run_fresh(tmp_path, load, str(tmp_path / "model.pt"), str(tmp_path / "out.pt"))
    loaded = torch.load(tmp_path / "out.pt")
    assert {n: m.LOWERING for n, m in model.items()} == {"alibi": "tiled", "linear": "linear_chunked", "window": "tiled"}
    for name in expected:
        assert torch.equal(loaded[name], expected[name]), name


def test_pickle_and_deepcopy_round_trip(qkv):
    model = three_attentions()
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        for name, module in model.items():
            assert type(clone[name]) is type(module)  # same process: the class is reused, not recompiled
            assert torch.equal(clone[name](*qkv), module(*qkv)), name
        with torch.no_grad():
            clone["alibi"].slope.zero_()
        assert model["alibi"].slope.abs().min() > 0  # the copy owns its tables


def test_layers_round_trip(qkv):
    layer = attncc.layer(EXAMPLES / "sliding_window.attn", embed_dim=32, num_heads=4, batch_first=True, window=4)
    x = torch.randn(2, 11, 32)
    for clone in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert torch.equal(clone(x)[0], layer(x)[0])
        assert clone.state_dict().keys() == layer.state_dict().keys()


def test_a_spec_that_compiles_to_another_hash_is_refused():
    module = attncc.compile(EXAMPLES / "alibi.attn")(H=2)
    function, (recipe,), _ = module.__reduce__()
    assert function is rebuild and recipe["text"] == (EXAMPLES / "alibi.attn").read_text()
    with pytest.raises(attncc.AttnccError, match=r"attncc 0\.0\.1 compiled it to sha256:0+, this attncc .* compiles"):
        rebuild({**recipe, "attncc": "0.0.1", "spec_hash": "sha256:" + "0" * 16})
    with pytest.raises(attncc.AttnccError, match="recipe format"):
        rebuild({**recipe, "format": 99})


def test_another_attncc_version_refuses_the_file(tmp_path):
    torch.save(attncc.compile(EXAMPLES / "alibi.attn")(H=2), tmp_path / "alibi.pt")
    # the version is part of every spec hash: a later attncc compiles the same text to another hash
    load = ("import sys, torch, attncc.api; attncc.api.__version__ = '99.0'; "
            "torch.load(sys.argv[1], weights_only=False)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ATTNCC_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", load, str(tmp_path / "alibi.pt")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert f"attncc {attncc.__version__} compiled it to" in result.stderr and "this attncc 99.0" in result.stderr


def run_in_child(module, q, k, v):
    with torch.no_grad():  # an autograd graph cannot cross processes
        return module(q, k, v)


def test_multiprocessing_spawn_sends_a_module_to_a_fresh_interpreter(qkv):
    module = attncc.compile(EXAMPLES / "alibi.attn")(H=4)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        out = pool.apply(run_in_child, (module, *qkv))
    with torch.no_grad():
        assert torch.equal(out, module(*qkv))


def test_torch_export_of_the_torch_backend(qkv):
    module = attncc.compile(EXAMPLES / "sliding_window.attn")(backend="torch", window=5)
    exported = torch.export.export(module, tuple(qkv))
    assert torch.allclose(exported.module()(*qkv), module(*qkv), atol=1e-6)
