"""attncc.rt: what generated code calls at run time, as one namespace (`from attncc import rt`).

The skeletons of the torch backend (attention.py; kernelized attention through FFT, graph and
ring maps over tokens: transforms.py), of the named mechanisms (mechanisms.py: FLASH
mixed chunks, VARS ISTA), gated linear attention (gated.py) and ContextPool's pooling (pool.py),
split-K decoding (decode.py), the tile lists of layouts built per call (blocks.py). The declared approximations'
algorithms are attncc.rt.approx (`ax` in generated code).
"""
from .attention import *  # noqa: F401,F403  (exactly attention.__all__: the skeletons and index helpers)
from .transforms import *  # noqa: F401,F403  (exactly transforms.__all__: the FFT, graph and ring paths)
from .mechanisms import chunk_states, ista_attention, mixed_chunk_attention, mixed_linear_sums  # noqa: F401
from .pool import context_pool  # noqa: F401
from .gated import gated_linear_attention, lookup_grad, row_input_grad  # noqa: F401
from .decode import decode_attention, decode_splits, merge_sink, merge_splits, multiprocessors  # noqa: F401
from ..lang.rows import check_widths, concat_rows, full_rows, input_rows, row_slice  # noqa: F401  (prepare_rows)
from .blocks import TokenTiles, device_csr, token_tiles  # noqa: F401
