"""attncc inside Hugging Face transformers: a compiled spec as an `attn_implementation`.

    from attncc.nn.transformers import register
    impl = register("examples/softmax_masked.attn")        # -> "attncc:examples/softmax_masked.attn"
    model = AutoModel.from_pretrained(path, attn_implementation=impl)

Every attention layer of the model then calls the spec's compiled module with the layer's
projected q, k, v (`[batch, heads, tokens, head dim]`). What transformers hands an attention
function besides q, k, v is mapped onto the spec:

- the attention mask (padding, and causality in a decoder) arrives as transformers' boolean
  `[batch, 1, queries, keys]` mask (True = attend) and is passed as the spec's input
  `attention_mask[Nq, N] : bool`; a spec that declares no such input cannot see padding, so a
  call that has padding raises instead of silently attending to it;
- `scaling`: the spec's `scale` is `D^-1/2`; another scaling rescales q by `scaling * D^1/2`;
- `dropout` (training only): on the attention probabilities, as transformers' eager attention
  does, which needs them: the module's `tap` (dense) times v;
- grouped-query layers (`num_key_value_heads < num_attention_heads`): k and v arrive with their own
  heads and go to the module as they are (attncc's grouped-query attention); nothing expands them.

The spec's module for a layer is made at that layer's first call (it needs the head count and
dims) and kept on the layer as the submodule `attncc_attention`, so its tables, if any, move with
the model and appear in its state_dict.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ..api import compile as compile_spec
from ..lang.source import AttnccError
from ..rt import grouped_matmul

PREFIX = "attncc:"
MASK_INPUT = "attention_mask"  # the spec input that receives transformers' attention mask
MODULE_ATTRIBUTE = "attncc_attention"  # the submodule holding a layer's compiled attention


def register(spec: str | Path, name: str | None = None, backend: str = "auto", **sizes) -> str:
    """Register `spec` (a path or spec text) with transformers; returns the `attn_implementation`
    to pass to `from_pretrained` (`"attncc:" + name`, by default the path or the spec's name).
    `sizes` go to the module's constructor (a spec's own sizes such as `window=...`)."""
    cls = compile_spec(spec, backend=backend)
    declared = cls.INPUTS.get(MASK_INPUT)
    if declared is not None and declared.dtype != "bool":
        raise AttnccError(f"{cls.SPEC_NAME}: input `{MASK_INPUT}` receives transformers' attention mask: "
                          f"declare it `input {MASK_INPUT}[Nq, N] : bool`")
    key = PREFIX + (name or (str(spec) if str(spec).endswith(".attn") else cls.SPEC_NAME))
    AttentionInterface.register(key, attention_function(cls, backend, sizes))
    # transformers builds masks only for implementations that name a mask format
    AttentionMaskInterface.register(key, boolean_mask)
    return key


def boolean_mask(*args, **kwargs):
    """sdpa's mask format (boolean [B, 1, Nq, N], True where a query attends), never skipped: sdpa
    may drop a purely causal mask in favour of its `is_causal` flag, which a spec has no use for."""
    return sdpa_mask(*args, **{**kwargs, "allow_is_causal_skip": False, "allow_is_bidirectional_skip": False})


def attention_function(cls, backend: str, sizes: dict):
    """The function transformers calls in each attention layer (its AttentionInterface signature)."""

    def attncc_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        attention = layer_attention(module, cls, backend, sizes, query, key)
        inputs = mask_inputs(cls, attention_mask, query, key)
        head_dim = query.shape[-1]
        if scaling is not None and scaling != head_dim ** -0.5:
            query = query * (scaling * head_dim ** 0.5)  # the spec's scale is D^-1/2
        if module.training and dropout > 0:
            probabilities = F.dropout(attention.tap(query, key, value, **inputs), p=dropout, training=True)
            out = grouped_matmul(probabilities, value)  # value: the layer's key/value heads
        else:
            out = attention(query, key, value, **inputs)
        return out.transpose(1, 2).contiguous(), None  # transformers' layout: [B, Nq, H, E]

    attncc_attention.__name__ = f"attncc_{cls.SPEC_NAME}"
    return attncc_attention


def layer_attention(module, cls, backend: str, sizes: dict, query: torch.Tensor, key: torch.Tensor):
    """The compiled module of one transformers attention layer, made at its first call. Grouped-query
    layers (num_key_value_heads < num_attention_heads) pass k and v with their own heads, unexpanded."""
    attention = getattr(module, MODULE_ATTRIBUTE, None)
    if attention is None:
        dims = {"H": query.shape[1], "D": query.shape[-1], "E": query.shape[-1], "Hkv": key.shape[1]}
        attention = cls(backend=backend, **{n: dims[n] for n in cls.NEEDS}, **sizes).to(query.device)
        setattr(module, MODULE_ATTRIBUTE, attention)
    return attention


def mask_inputs(cls, attention_mask, query, key) -> dict:
    """The spec's `attention_mask` input from transformers' mask ([B, 1, Nq, N] bool, or None)."""
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        raise AttnccError("attncc attention takes transformers' boolean masks; got a "
                          f"{attention_mask.dtype} mask (was the implementation registered by attncc's register?)")
    if MASK_INPUT not in cls.INPUTS:
        if attention_mask is not None and not bool(attention_mask.all()):
            raise AttnccError(f"{cls.SPEC_NAME}: this call has padding (or a causal mask) but the spec has no "
                              f"input `{MASK_INPUT}`; declare `input {MASK_INPUT}[Nq, N] : bool` and use it "
                              f"in the mask: `mask(i, j) = {MASK_INPUT}[i, j]`")
        return {}
    batch, queries, keys = query.shape[0], query.shape[2], key.shape[2]
    if attention_mask is None:
        return {MASK_INPUT: torch.ones(batch, queries, keys, dtype=torch.bool, device=query.device)}
    return {MASK_INPUT: attention_mask[:, 0].expand(batch, queries, keys)}
