"""Sequence (context) parallelism: each rank of a torch.distributed group holds a slice of the tokens.

For the linear lowerings attention passes between tokens only through key states, so ranks
exchange states instead of tokens (the ranks hold consecutive slices, in group rank order):

    linear (non-causal):   S = sum over every rank of phi(K_r)^T [V_r, 1]       (an all-reduce)
    linear_chunked:        S_r = sum_{s < r} gamma^(n_{s+1} + .. + n_{r-1}) T_s  (an exclusive scan)
                           T_s = sum_j gamma^(n_s - 1 - j) phi(k_j) [v_j, 1]^T, the state slice s leaves

(gamma = 1 without a decay) and each rank runs its chunks from its initial state S_r. The result
equals the single-process one; the collectives are differentiable (torch.distributed.nn), so
q, k, v get their full gradients on every rank. Learned tables are replicated: each rank's
gradient is its slice's share, sum them over the group (DDP over the group averages them).

Softmax and the other lowerings keep every key for every query; see docs/training.md for
torch's own context-parallel API.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn

from ..ir.graph import expr_of
from ..lang.source import AttnccError, ShapeError
from ..plan import registry
from ..rt import attention as skeletons


def context_parallel_lowerings() -> list[str]:
    """The lowerings whose tokens meet only through key states (Lowering.context_parallel)."""
    return [lowering.name for lowering in registry.all() if lowering.context_parallel]


@contextlib.contextmanager
def _quiet():
    """torch.distributed.nn's differentiable collectives warn that they are deprecated in favour of
    torch.distributed._functional_collectives, a private module: keep the public ones, quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


class StateExchange:
    """The collectives of one group (all of them differentiable)."""

    def __init__(self, group=None):
        self.group = group

    def total(self, local: torch.Tensor) -> torch.Tensor:
        """The sum of `local` over every rank."""
        with _quiet():
            return dist_nn.all_reduce(local, group=self.group)

    def prefix(self, local: torch.Tensor, tokens: int, gamma: torch.Tensor | None) -> torch.Tensor:
        """S_r = gamma^(n_{r-1}) S_{r-1} + T_{r-1} from S_0 = 0: the state of the earlier ranks' keys."""
        world, rank = dist.get_world_size(self.group), dist.get_rank(self.group)
        lengths = [torch.zeros(1, dtype=torch.int64, device=local.device) for _ in range(world)]
        dist.all_gather(lengths, torch.tensor([tokens], device=local.device), group=self.group)
        with _quiet():
            states = dist_nn.all_gather(local, group=self.group)
        out = torch.zeros_like(local)
        for s in range(world):
            if s < rank:
                out = (out if gamma is None else torch.pow(gamma, int(lengths[s])) * out) + states[s]
            else:  # weight 0, but in the graph: every rank's backward must join the all_gather's collective
                out = out + 0 * states[s]
        return out


def check_context_parallel(module) -> None:
    """Raise AttnccError unless every lowering the module may run (its DISPATCH table: a rank's slice
    length picks one) passes states between token slices."""
    name = module.SPEC_NAME
    lowerings = [lowering for lowering, _ in module.DISPATCH] or [module.LOWERING]
    other = next((lowering for lowering in lowerings if not registry.get(lowering).context_parallel), None)
    if other is not None:
        covered = " and ".join(context_parallel_lowerings())
        pin = (f"; compile it with lowering=\"{module.LOWERING}\" so that every slice runs that"
               if len(lowerings) > 1 and registry.get(module.LOWERING).context_parallel else "")
        raise AttnccError(f"{name}: context parallelism covers the {covered} lowerings, whose tokens meet only "
                          f"through key states; this module runs `{other}` at some lengths (for softmax, "
                          f"see torch.distributed.tensor.experimental.context_parallel in docs/training.md){pin}")
    graph = module.compilation.optimized
    (out,) = graph.operands(graph.output)
    for node in graph.operands(out)[2:]:  # the modulation and decay factors
        if any(e.op == "rsize" and e.value in ("N", "Nq") for e in expr_of(graph, node).walk()):
            raise AttnccError(f"{name}: its kernel reads the token count N, which a rank does not know from "
                              f"its slice; context parallelism needs a kernel free of N and Nq")


def context_parallel(module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group=None, **inputs) -> torch.Tensor:
    """module(q, k, v) for this rank's slice of the tokens, attending to every rank's keys as the
    spec says (causal: the keys of this and the earlier ranks). q, k, v are [B, H, n_r, .] with the
    ranks' slices consecutive in group rank order (any lengths); inputs are this rank's slices too.
    Runs the torch backend (the Triton kernels take no initial state). Every rank of the group must call."""
    check_context_parallel(module)
    if registry.get(module.lowering_at(k.shape[2])).causal_chunks and q.shape[2] != k.shape[2]:
        raise ShapeError(f"{module.SPEC_NAME}: causal context parallelism slices one sequence: q has {q.shape[2]} "
                         f"tokens on this rank, k has {k.shape[2]}")
    if q.shape[2] == 0 or k.shape[2] == 0:  # the module would return early, leaving the others waiting
        raise ShapeError(f"{module.SPEC_NAME}: every rank needs at least one query and one key token")
    saved = module.backend, skeletons.state_exchange
    try:
        module.backend, skeletons.state_exchange = "torch", StateExchange(group)
        return module(q, k, v, **inputs)
    finally:
        module.backend, skeletons.state_exchange = saved


__all__ = ["context_parallel", "check_context_parallel", "context_parallel_lowerings", "StateExchange"]
