"""One module per lowering, each registering one attncc.plan.registry.Lowering when imported.

The import order is the order of the candidates in a plan (and of `attncc inspect`), and breaks
cost ties: the first of equally cheap candidates wins.
"""
from . import tiled, sdpa, block_sparse, token_blocks, linear, linear_chunked, linear_gated, fft, graph  # noqa: F401
from . import fft2, rings, mixed_chunk  # noqa: F401
from . import mra, lara, ra, ista, decode  # noqa: F401
