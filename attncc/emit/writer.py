"""A tiny code writer: lines and indentation blocks."""
from __future__ import annotations

from contextlib import contextmanager


class CodeWriter:
    def __init__(self, indent: str = "    "):
        self.lines: list[str] = []
        self.level = 0
        self.indent = indent

    def line(self, text: str = "") -> None:
        self.lines.append(self.indent * self.level + text if text else "")

    def lines_of(self, text: str) -> None:
        for ln in text.splitlines():
            self.line(ln)

    @contextmanager
    def block(self, header: str):
        self.line(header)
        self.level += 1
        yield
        self.level -= 1

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"
