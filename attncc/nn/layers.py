"""A compiled spec as a drop-in multi-head attention layer (the constructor and call of
torch.nn.MultiheadAttention, whose parameter names it keeps, so its state_dict loads).

    x [B, L, embed_dim] --in projections--> q, k, v [B, H, L, embed_dim / H]
        --compiled spec--> [B, H, L, embed_dim / H] --merge heads, dropout, out projection--> [B, L, embed_dim]

`num_kv_heads` (dividing num_heads) makes it grouped-query attention: k and v are projected to
num_kv_heads heads only (in_proj_weight [embed_dim + 2 num_kv_heads head_dim, embed_dim]), and the
compiled spec reads them unexpanded.

The spec's own sizes go to the constructor, its declared inputs (`doc`, `adj`, ...) to the call.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..api import compile
from ..lang.source import AttnccError, Diagnostic, ShapeError, SpecError
from ..runtime.compiled import keyword_names


class AttentionLayer(nn.Module):
    """Multi-head attention whose core is a compiled spec.

    Differences from torch.nn.MultiheadAttention, by design:
    - the spec's mask decides who attends to whom: `attn_mask` and `is_causal` are refused
      (declare the mask in the spec, or an input such as `input keep[N] : bool` and pass it);
    - `key_padding_mask` (bool, True = padding) must pad at the end of each sequence; each
      sequence then attends to its valid keys [0, length) as if it had no padding, so a spec's
      positions and sizes (N) are those of the unpadded sequence;
    - `dropout` applies to the per-head attention outputs (efficient lowerings never form the
      probabilities), in training only; both are unbiased, their variances differ;
    - `need_weights` defaults to False; True returns the tap (attncc's attention probabilities),
      averaged over heads unless average_attn_weights=False.
    """

    def __init__(self, attention, embed_dim: int, num_heads: int, bias: bool = True, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False, dropout: float = 0.0, device=None,
                 dtype=None, backend: str = "auto", num_kv_heads: int | None = None, **sizes):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads), ("num_kv_heads", num_kv_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AttnccError(f"layer: `{name}` must be a positive integer, got {value!r}")
        if embed_dim % num_heads:
            raise AttnccError(f"layer: embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if num_heads % num_kv_heads:
            raise AttnccError(f"layer: num_kv_heads ({num_kv_heads}) must divide num_heads ({num_heads}): each "
                              "key/value head serves a group of num_heads / num_kv_heads query heads")
        if not 0.0 <= dropout < 1.0:
            raise AttnccError(f"layer: dropout must be in [0, 1), got {dropout}")
        cls = attention if isinstance(attention, type) else _compile(attention)
        _inputs_can_be_passed(cls, keyword_names(type(self).forward, type(self).tap))
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.num_kv_heads, kv_dim = num_kv_heads, num_kv_heads * (embed_dim // num_heads)
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.batch_first, self.dropout = batch_first, dropout
        fixed = {"H": num_heads, "D": self.head_dim, "E": self.head_dim, "Hkv": num_kv_heads}
        self.attention = cls(backend=backend, **{n: fixed[n] for n in cls.NEEDS}, **sizes)
        self.attention.to(device=device, dtype=dtype)
        factory = {"device": device, "dtype": dtype}
        if self._qkv_same_embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty(embed_dim + 2 * kv_dim, embed_dim, **factory))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.register_parameter("in_proj_weight", None)
            self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim, **factory))
            self.k_proj_weight = nn.Parameter(torch.empty(kv_dim, self.kdim, **factory))
            self.v_proj_weight = nn.Parameter(torch.empty(kv_dim, self.vdim, **factory))
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(embed_dim + 2 * kv_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """torch.nn.MultiheadAttention's initialization: Xavier-uniform projections, zero biases."""
        for w in (self.in_proj_weight, self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
            if w is not None:
                nn.init.xavier_uniform_(w)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    # ------------------------------------------------------------------ calling
    def forward(self, query, key=None, value=None, key_padding_mask=None, need_weights: bool = False,
                attn_mask=None, average_attn_weights: bool = True, is_causal: bool = False, **inputs):
        """(output, weights or None), as torch.nn.MultiheadAttention; key and value default to
        query (self-attention); `inputs` are the spec's declared inputs."""
        if attn_mask is not None or is_causal:
            raise AttnccError(f"layer: the spec `{self.attention.SPEC_NAME}` decides the mask; write it as "
                              "mask(i, j) in the spec (or declare an input and pass it) instead of attn_mask/is_causal")
        key = query if key is None else key
        value = key if value is None else value
        batched = query.dim() == 3
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ShapeError(f"layer: query, key and value must all be [tokens, dim] or batched (3-d), got "
                             f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        q, k, v = self.project(query, key, value)
        lengths = self._lengths(key_padding_mask, k)
        out = self._run(self.attention, q, k, v, lengths, inputs)
        out = F.dropout(out, self.dropout, self.training)
        out = self.out_proj(out.transpose(1, 2).reshape(*query.shape[:2], self.embed_dim))
        weights = None
        if need_weights:
            weights = self._run(self.attention.tap, q, k, v, lengths, inputs, keyed=True)
            weights = weights.mean(1) if average_attn_weights else weights
            weights = weights if batched else weights.squeeze(0)
        if not batched:
            return out.squeeze(0), weights
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def project(self, query, key, value) -> tuple:
        """The input projections, split into heads: [B, L, dim] -> [B, H, L, head_dim] (q), [B, Hkv, L,
        head_dim] (k, v)."""
        E = self.embed_dim
        parts = [E, self.num_kv_heads * self.head_dim, self.num_kv_heads * self.head_dim]
        if self._qkv_same_embed_dim:
            wq, wk, wv = self.in_proj_weight.split(parts)
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        bq, bk, bv = (None, None, None) if self.in_proj_bias is None else self.in_proj_bias.split(parts)
        for name, x, dim in (("query", query, E), ("key", key, self.kdim), ("value", value, self.vdim)):
            if x.shape[-1] != dim:
                raise ShapeError(f"layer: `{name}` has {x.shape[-1]} features, expected {dim}")
        if key.shape[:2] != value.shape[:2] or key.shape[0] != query.shape[0]:
            raise ShapeError(f"layer: query, key and value disagree on batch or key length: {tuple(query.shape)}, "
                             f"{tuple(key.shape)}, {tuple(value.shape)}")
        heads = lambda x: x.unflatten(-1, (-1, self.head_dim)).transpose(1, 2)  # noqa: E731
        return heads(F.linear(query, wq, bq)), heads(F.linear(key, wk, bk)), heads(F.linear(value, wv, bv))

    def tap(self, query, key=None, value=None, key_padding_mask=None, rows=None, **inputs) -> torch.Tensor:
        """Per-head attention probabilities [B, H, L or len(rows), S] of this layer for batched
        inputs (laid out as the layer's batch_first says); see CompiledAttention.tap."""
        key = query if key is None else key
        value = key if value is None else value
        if not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        q, k, v = self.project(query, key, value)
        tap = lambda *args, **kw: self.attention.tap(*args, rows=rows, **kw)
        return self._run(tap, q, k, v, self._lengths(key_padding_mask, k), inputs, keyed=True)

    # ------------------------------------------------------------------ padding
    def _lengths(self, key_padding_mask, k) -> torch.Tensor | None:
        """Valid key count per sequence, or None without padding."""
        if key_padding_mask is None:
            return None
        pad = torch.as_tensor(key_padding_mask, device=k.device)
        B, N = k.shape[0], k.shape[2]
        if pad.dtype != torch.bool or tuple(pad.shape) != (B, N):
            raise ShapeError(f"layer: key_padding_mask must be a bool tensor of shape {(B, N)} (True = padding), "
                             f"got {pad.dtype} of shape {tuple(pad.shape)}")
        lengths = (~pad).sum(1)
        if not torch.equal(pad, torch.arange(N, device=pad.device) >= lengths[:, None]):
            raise ShapeError("layer: key_padding_mask must pad only at the end of each sequence (right padding); "
                             "for other patterns declare an input in the spec, e.g. `input keep[N] : bool` "
                             "with mask(i, j) = keep[j]")
        return lengths

    def _run(self, fn, q, k, v, lengths, inputs: dict, keyed: bool = False) -> torch.Tensor:
        """fn(q, k, v, **inputs); with padding, once per group of sequences of one valid length L on
        keys [0, L); a `keyed` result (a tap, [..., L]) is padded back to the full key length."""
        if lengths is None or bool((lengths == k.shape[2]).all()):
            return fn(q, k, v, **inputs)
        pieces, order = [], []
        for length in lengths.unique().tolist():
            idx = (lengths == length).nonzero().flatten()
            part = fn(q[idx], k[idx, :, :length], v[idx, :, :length], **self._cut_inputs(inputs, idx, length, q, k))
            pieces.append(F.pad(part, (0, k.shape[2] - length)) if keyed else part)
            order.append(idx)
        return torch.cat(pieces)[torch.argsort(torch.cat(order))]

    def _cut_inputs(self, inputs: dict, idx, length: int, q, k) -> dict:
        """The spec's inputs for the sequences `idx` cut to `length` keys: batched inputs keep their
        rows idx; an axis of size N becomes `length`; any other axis that depends on N is refused."""
        core = self.attention
        dims = {"Nq": q.shape[2], "H": q.shape[1], "D": q.shape[3], "E": self.head_dim, "Hkv": k.shape[1], **core.sizes}
        cut = {}
        for name, value in inputs.items():
            spec = core.INPUTS.get(name)
            if spec is None:
                cut[name] = value  # the core module reports it
                continue
            t = torch.as_tensor(value, device=q.device)
            full = tuple(int(d) for d in spec.dims({**dims, "N": k.shape[2]}))
            short = tuple(int(d) for d in spec.dims({**dims, "N": length}))
            if t.dim() == len(full) + 1:
                t = t[idx]
            axis0 = t.dim() - len(full)
            for axis, (a, b) in enumerate(zip(full, short)):
                if a == b:
                    continue
                if (a, b) != (k.shape[2], length):
                    raise ShapeError(f"layer: input `{name}` has an axis of size {a} that depends on N but is not "
                                     "the token axis; it cannot be cut to each sequence's length under key_padding_mask")
                t = t.narrow(axis0 + axis, 0, length)
            cut[name] = t
        return cut

    def extra_repr(self) -> str:
        kv = f"num_kv_heads={self.num_kv_heads}, " if self.num_kv_heads != self.num_heads else ""
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, {kv}head_dim={self.head_dim}, "
                f"kdim={self.kdim}, vdim={self.vdim}, batch_first={self.batch_first}, dropout={self.dropout}")


def _compile(spec):
    if not isinstance(spec, (str, Path)):
        raise AttnccError(f"layer: expected a spec (path or text) or a class from attncc.compile, got "
                          f"{type(spec).__name__}")
    return compile(spec)


def layer(spec, embed_dim: int, num_heads: int, **options) -> AttentionLayer:
    """A spec (path, text, or a class from attncc.compile) as a multi-head attention layer.

    >>> mha = attncc.layer("examples/softmax.attn", embed_dim=256, num_heads=8, batch_first=True)
    >>> out, _ = mha(x)                  # x: [batch, tokens, 256]

    options: bias, kdim, vdim, batch_first, dropout, device, dtype (as torch.nn.MultiheadAttention),
    backend, num_kv_heads (grouped-query attention: k and v projected to that many heads, dividing
    num_heads), and the spec's own sizes (window=..., ...)."""
    return AttentionLayer(spec, embed_dim, num_heads, **options)


def _inputs_can_be_passed(cls, keywords: frozenset[str]) -> None:
    """Inputs reach the layer as keywords of its calls: one named like the layer's own keywords
    (`need_weights`, `attn_mask`, ...) could not be passed."""
    clashes = [info for name, info in cls.checked.inputs.items() if name in keywords]
    if clashes:
        raise SpecError(cls.checked.source, [
            Diagnostic(f"`{info.name}` is a keyword argument of attncc.layer's forward and cannot name an input of "
                       "a spec used in a layer", info.span, f"choose another name, e.g. `{info.name}_input`")
            for info in clashes])
