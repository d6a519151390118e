"""Records of the checked spec that the checker and its mixins (mechanism and approximation checks) build."""
from __future__ import annotations

from dataclasses import dataclass

from ..lang.expr import TExpr
from ..lang.favor import FAVOR
from ..lang.features import RANDOM_MAPS
from ..lang.source import Span


@dataclass(frozen=True)
class ParamInfo:
    name: str
    shape: tuple[TExpr, ...]
    init: str
    init_args: tuple[tuple[str, float], ...]
    span: Span


@dataclass(frozen=True)
class InputInfo:
    name: str
    dims: tuple[TExpr, ...]
    dtype: str
    span: Span


class KeywordOptions:
    """A checked construct's keyword arguments, `kwargs` (name, value) pairs in order, as a dict."""
    kwargs: tuple

    @property
    def options(self) -> dict:
        return dict(self.kwargs)


@dataclass(frozen=True)
class ApproxInfo(KeywordOptions):
    """`approx METHOD(...)`: its method and every option, defaults filled in (see approx.py)."""
    method: str
    kwargs: tuple[tuple[str, object], ...]

    def __str__(self) -> str:
        return f"{self.method}(" + ", ".join(f"{k}={v}" for k, v in self.kwargs) + ")"

    def favor_map(self) -> FeatureInfo:
        """approx favor(...): the random feature map `favor` it draws, with the same options."""
        return FeatureInfo(FAVOR, FAVOR, self.kwargs)


@dataclass(frozen=True)
class FeatureInfo(KeywordOptions):
    name: str
    fn: str
    kwargs: tuple[tuple[str, float], ...]

    @property
    def random(self) -> bool:
        """A random-feature map: it has a projection buffer and is referred to by its declared name."""
        return self.fn in RANDOM_MAPS

    @property
    def out_dim(self) -> int:
        return RANDOM_MAPS[self.fn].out_dim(int(self.options["features"])) if self.random else 0
