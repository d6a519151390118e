"""Split-K (flash-decoding) softmax attention for few queries against many keys.

The keys a query chunk sees are cut into S splits; each split gives the softmax of its own keys
applied to their values, O_s, and its log-sum-exp L_s (-inf: no visible key). They merge exactly:

    L = log sum_s exp(L_s),   out = sum_s exp(L_s - L) O_s

since exp(L_s - L) is the share of the row's softmax mass that split s holds. A softmax sink c
(`softmax(sink = ...)`) is one more split with L_s = c and O_s = 0 (merge_sink). The Triton kernels
(attncc/emit/triton_decode.py) run one program per (query tile, head, split) and merge in a second
launch; this torch skeleton computes the same partials and merge, every split at once.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..lang.normalizers import NORMALIZERS
from ..plan.cost import BLOCK, SPLIT_MIN_TILES, SPLIT_WAVES
from .attention import QUERY_CHUNK, no_keys, pair_scores, query_chunks, sink_rows
from .heads import grouped_matmul

__all__ = ["decode_attention", "decode_splits", "merge_sink", "merge_splits", "multiprocessors"]

CPU_MULTIPROCESSORS = 132  # off CUDA: the cost model's reference machine (attncc.plan.cost.MACHINE)


def multiprocessors(device) -> int:
    """Streaming multiprocessors of a CUDA device; the reference machine's count elsewhere."""
    device = torch.device(device)
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" \
        else CPU_MULTIPROCESSORS


def decode_splits(programs: int, keys: int, tile: int, sms: int) -> int:
    """How many splits the keys of each of `programs` (query tile, head) programs are cut into: enough
    for SPLIT_WAVES programs per multiprocessor, each split at least SPLIT_MIN_TILES tiles of keys."""
    most = max(1, -(-keys // (SPLIT_MIN_TILES * tile)))
    wanted = -(-SPLIT_WAVES * sms // max(1, programs))
    return max(1, min(most, wanted))


def merge_splits(parts: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, L) from the splits' outputs parts [.., S, E] and log-sum-exps lse [.., S] (-inf: empty):
    out = sum_s exp(L_s - L) O_s, L = log sum_s exp(L_s); rows with no visible key give 0, -inf."""
    top = lse.amax(-1, keepdim=True).detach()
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    share = torch.exp(lse - top)  # 0 for empty splits
    total = share.sum(-1, keepdim=True)
    out = (share.unsqueeze(-1) * parts).sum(-2) / torch.where(total == 0, torch.ones_like(total), total)
    return out, (top + torch.log(total)).squeeze(-1)


def merge_sink(out: torch.Tensor, lse: torch.Tensor, sink: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, L) of merged rows (out [B, H, rows, E], L [B, H, rows]) with the sink logits c [B|1, H, rows]
    merged in as one more split of output 0: L' = log(e^L + e^c), out' = e^(L - L') out (0 where L' = -inf)."""
    total = torch.logaddexp(lse, sink.to(lse.dtype))
    share = torch.where(total == float("-inf"), torch.zeros_like(total), torch.exp(lse - total))
    return out * share.unsqueeze(-1).to(out.dtype), total


def _split_partials(s: torch.Tensor, vc: torch.Tensor, splits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(O_s [B, H, cq, S, E], L_s [B, H, cq, S]) of masked logits s [B, H, cq, n] (-inf where masked)
    cut into `splits` consecutive runs of keys."""
    B, H, cq, n = s.shape
    size = -(-n // splits)
    pad = size * splits - n
    s = torch.nn.functional.pad(s, (0, pad), value=float("-inf")).view(B, H, cq, splits, size)
    vc = torch.nn.functional.pad(vc, (0, 0, 0, pad)).view(*vc.shape[:2], splits, size, vc.shape[-1])
    top = s.amax(-1, keepdim=True).detach()
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    w = torch.exp(s - top)
    z = w.sum(-1)
    parts = grouped_matmul(w.transpose(2, 3), vc).transpose(2, 3)  # [B, H, cq, S, E]; vc per key/value head
    parts = parts / torch.where(z == 0, torch.ones_like(z), z).unsqueeze(-1)
    return parts, top.squeeze(-1) + torch.log(z)


def decode_attention(q, k, v, ctx, *, scores: Callable, mask: Callable | None, key_range: Callable,
                     normalize: str, eps: float, chunk: int = QUERY_CHUNK, sink: Callable | None = None) -> torch.Tensor:
    """out = softmax(mask o scores) V by split-K: per query chunk, the keys [k0, k1) it can see
    (key_range) cut into decode_splits runs (as the Triton launcher would on this device, with
    tiles of BLOCK keys), each split's output and log-sum-exp, merged (merge_splits).
    Differentiable by autograd; the holes are those of rt.tiled_attention (normalize: softmax; eps unused;
    a sink merged in last, merge_sink)."""
    if not NORMALIZERS[normalize].online_softmax:
        raise ValueError(f"split-K decoding merges softmax rows by log-sum-exp, not `normalize {normalize}`")
    B, H, Nq, _ = q.shape
    sms = multiprocessors(q.device)
    outs = []
    for q0, q1, keys in query_chunks(q, k, ctx, key_range, chunk):
        if keys is None:
            outs.append(no_keys(q, v, q0, q1))
            continue
        s, m, vc = pair_scores(q, k, v, ctx, q0, q1, keys, scores=scores, mask=mask)
        if m is not None:
            s = s.masked_fill(~m, float("-inf"))
        splits = decode_splits(B * H * -(-Nq // chunk), keys.stop - keys.start, BLOCK, sms)
        parts, lse = _split_partials(s, vc, splits)
        out, lse = merge_splits(parts, lse)
        if sink is not None:
            out, lse = merge_sink(out, lse, sink_rows(sink, ctx, q, q0, q1)[..., 0])
        outs.append(out)
    return torch.cat(outs, dim=2).to(v.dtype)
