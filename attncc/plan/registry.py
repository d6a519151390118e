"""The lowering registry: one `Lowering` record per way of computing an attention node.

A lowering module (attncc/lowerings/<name>.py) builds one `Lowering` and `register`s it; importing
the package `attncc.lowerings` fills the registry (attncc.api does, so importing attncc does: the
registry, below the lowerings in the pipeline, never imports them). Consumers
(select, the emitters' dispatch, runtime, tools.compare, gradients, distributed, autotune, the CLI) ask
the registry instead of matching lowering names. Candidates are listed in registration order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..lang.registry import Registry
from ..lang.source import AttnccError

# Writers take (w: CodeWriter, graph: Graph, plan: Plan): the optimized graph is all they read.
TorchWriter = Callable[..., None]
TritonWriter = Callable[..., str]  # returns the description of the Triton forward it wrote


@dataclass(frozen=True)
class Lowering:
    """Everything attncc knows about one lowering.

    accepts(query) -> bool        the attend-node forms it computes (attncc.plan.cost.CostQuery)
    cost(query) -> Candidate      its sympy flops and bytes, and the note `inspect` shows
    emit_torch(w, graph, plan)    writes the torch backend (holes and `forward_torch`)
    emit_triton(w, graph, plan) -> str   writes the Triton forward kernels and `triton_forward`, returns
                                  their description (the dispatch adds the backward); None: torch
    triton_fallback               why the Triton backend runs the torch forward (a string, or a
                                  function of the optimized graph giving one or None); None: Triton kernels
    triton_backward               generated Triton backward kernels (attncc.emit.triton_backward.
                                  TritonBackward) or None: recomputation through torch's autograd
    torch_backward                how torch autograd differentiates it (`inspect`'s torch backward line)
    triton_runs                   the lowering whose Triton kernels (and autotune kind) it runs, if
                                  not its own (sdpa: Triton has no SDPA, it runs the tiled kernel)
    autotune_configs              CUDA launch candidates of its kernel, the default first; one with
                                  `max_head_dim` only for padded head dims up to it (attncc.runtime.autotune)
    interpreter_config            the launch configuration under Triton's interpreter
    backward_autotune_configs     the same two for its generated backward kernels (autotune kind
    backward_interpreter_config   `<name>:backward`), when they take a launch configuration
    tolerance                     {torch dtype: max relative error} where not attncc.tools.compare.TOLERANCE
    context_parallel              attncc.runtime.distributed can split its tokens over ranks (key states)
    forms_graph_tables            G = kernel(A) is formed as a table before it runs (not: graph)
    block_sparse                  its tiles are the ones a block layout lists
    token_tiles                   its tiles are the ones a layout built per call from the inputs lists
                                  (partial and full tiles apart; attncc/analysis/token_layout.py)
    band_tiles                    its Triton kernel walks every key tile inside the proven band
    causal_chunks                 linear attention walked chunk by chunk with a carried prefix state
    forced_only                   a candidate only when a spec or caller forces it by name
    """
    name: str
    accepts: Callable
    cost: Callable
    emit_torch: TorchWriter
    torch_backward: str
    emit_triton: TritonWriter | None = None
    triton_fallback: str | Callable | None = None
    triton_backward: object = None
    triton_runs: str | None = None
    autotune_configs: tuple = ()
    interpreter_config: dict | None = None
    backward_autotune_configs: tuple = ()
    backward_interpreter_config: dict | None = None
    tolerance: dict | None = None
    context_parallel: bool = False
    forms_graph_tables: bool = True
    block_sparse: bool = False
    token_tiles: bool = False
    band_tiles: bool = False
    causal_chunks: bool = False
    forced_only: bool = False

    def __post_init__(self):
        if self.emit_triton is None and self.triton_fallback is None:
            raise AttnccError(f"lowering `{self.name}`: give emit_triton or a triton_fallback")

    @property
    def autotune_kind(self) -> str:
        """The kernel kind its Triton launchers tune under (attncc.runtime.autotune)."""
        return self.triton_runs or self.name

    def torch_fallback_reason(self, graph) -> str | None:
        """Why the Triton backend runs this graph's torch forward, or None when it has kernels."""
        why = self.triton_fallback
        return why(graph) if callable(why) else why


LOWERINGS: Registry = Registry("lowering")
register = LOWERINGS.register
unregister = LOWERINGS.unregister
registered = LOWERINGS.registered  # a `with` block's worth of registration (tests, experiments)


def get(name: str) -> Lowering:
    return LOWERINGS.lookup(name)


def all() -> list[Lowering]:  # noqa: A001 (the registry's vocabulary: register / get / all)
    return list(LOWERINGS.values())


def names() -> tuple[str, ...]:
    return tuple(LOWERINGS)
