"""The pass pipeline: plain functions Graph, PassContext -> None, run in order, verified between.

Each pass's docstring states its algebra (before -> after).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..analysis.session import default_budget, session
from ..ir.graph import Graph, verify
from .block_layout import analyse_blocks, analyse_token_layout
from .favor import kernelize_favor
from .mask_structure import analyse_mask
from .ista import lower_ista
from .mixed_chunk import mixed_chunk
from .polynomial import expand_polynomial_kernel
from .reassociate import reassociate_kernel
from .row_gates import find_row_gates
from .rows import prepare_rows
from .stable_exp import stabilize_exp_rows


@dataclass
class PassContext:
    """What passes share besides the graph: the sympy size symbols and the log of notes. Passes read
    everything about the spec from the graph (its nodes, their attributes, `graph.signature`).
    The analyses they call run under `budget` seconds and read and fill `memo` (analysis.session)."""
    symbols: dict
    log: list[tuple[str, str]] = field(default_factory=list)
    budget: float = field(default_factory=default_budget)
    memo: dict = field(default_factory=dict)
    memo_added: int = 0  # results proven by this run (the memo is worth storing)

    def note(self, pass_name: str, message: str) -> None:
        self.log.append((pass_name, message))


PIPELINE = [find_row_gates, prepare_rows, kernelize_favor, stabilize_exp_rows, analyse_mask, analyse_blocks,
            analyse_token_layout, lower_ista, mixed_chunk, expand_polynomial_kernel, reassociate_kernel]


def run_pipeline(graph: Graph, ctx: PassContext, check: bool = True) -> Graph:
    with session(ctx.budget, ctx.memo) as analysis:
        for p in PIPELINE:
            p(graph, ctx)
            graph.remove_dead()
            if check:
                verify(graph)
    if analysis.spent:
        ctx.note("analysis", analysis.budget_note(what="structure not proven by then is"))
    ctx.memo_added += analysis.added
    return graph
