"""Records of the checked spec that the checker and its mechanism checks both build."""
from __future__ import annotations

from dataclasses import dataclass

from ..lang.expr import TExpr
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
