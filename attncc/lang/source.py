"""Source text, spans and diagnostics.

Every user-facing error of attncc is a `Diagnostic` rendered as

    file:line:col: error: message
      <source line>
      ^~~~~
    hint: ...

and all diagnostics of one spec are raised together in one `SpecError`.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Source:
    text: str
    filename: str = "<spec>"

    def line_col(self, offset: int) -> tuple[int, int]:
        """1-based line and column of a character offset."""
        offset = max(0, min(offset, len(self.text)))
        line = self.text.count("\n", 0, offset) + 1
        start = self.text.rfind("\n", 0, offset) + 1
        return line, offset - start + 1

    def line_text(self, line: int) -> str:
        lines = self.text.split("\n")
        return lines[line - 1] if 0 < line <= len(lines) else ""


@dataclass(frozen=True)
class Span:
    """Half-open character range [start, end) in a Source."""

    start: int
    end: int

    def __or__(self, other: "Span") -> "Span":
        return Span(min(self.start, other.start), max(self.end, other.end))


NO_SPAN = Span(0, 0)


@dataclass(frozen=True)
class Diagnostic:
    message: str
    span: Span
    hint: str | None = None
    severity: str = "error"

    def render(self, source: Source) -> str:
        line, col = source.line_col(self.span.start)
        text = source.line_text(line)
        line_end = len(text) + 1 - col
        width = max(1, min(self.span.end - self.span.start, line_end))
        out = [
            f"{source.filename}:{line}:{col}: {self.severity}: {self.message}",
            f"  {text}",
            "  " + " " * (col - 1) + "^" + "~" * (width - 1),
        ]
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)


class AttnccError(Exception):
    """Base of every error attncc reports to a user (never a Python traceback)."""


class SpecError(AttnccError):
    """One or more diagnostics about a spec, rendered with locations."""

    def __init__(self, source: Source, diagnostics: list[Diagnostic]):
        self.source = source
        self.diagnostics = sorted(diagnostics, key=lambda d: (d.span.start, d.message))
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(d.render(self.source) for d in self.diagnostics)


class ShapeError(AttnccError, ValueError):
    """A call-time input of the wrong shape, dtype or device."""


@dataclass
class DiagnosticBag:
    """Collects diagnostics so that all errors of a spec are reported at once."""

    source: Source
    items: list[Diagnostic] = field(default_factory=list)

    def error(self, message: str, span: Span, hint: str | None = None) -> None:
        self.items.append(Diagnostic(message, span, hint))

    def raise_if_any(self) -> None:
        if self.items:
            raise SpecError(self.source, self.items)


def did_you_mean(name: str, candidates) -> str | None:
    """The closest candidate by similarity; ties go to one that extends the name, then the shorter."""
    def score(c: str):
        return (difflib.SequenceMatcher(None, name, c).ratio(), c.startswith(name), -len(c), c)
    best = max(candidates, key=score, default=None)
    if best is None or score(best)[0] < 0.6:
        return None
    return f"did you mean `{best}`?"
