"""attncc: a compiler for attention mechanisms.

    Attn = attncc.compile("examples/window.attn")   # nn.Module class
    out = Attn()(q, k, v)                            # [batch, heads, tokens, dim]
    ref = attncc.reference("examples/window.attn", q, k, v)
"""

from .version import __version__  # noqa: E402
from .api import build, compile, reference  # noqa: E402
from .nn.layers import AttentionLayer, layer  # noqa: E402
from .lang.source import AttnccError, ShapeError, SpecError  # noqa: E402

__all__ = ["compile", "reference", "build", "layer", "AttentionLayer", "AttnccError", "SpecError", "ShapeError", "__version__"]
