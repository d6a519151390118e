"""The fenced code blocks of the README and docs/, for the tests that highlight, build and run them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    marker: str  # the words after the language on the fence line, e.g. `fragment`
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def code_blocks(language: str) -> list[Block]:
    """Every ```LANGUAGE block in the README and docs/**/*.md, in file order."""
    blocks = []
    for path in MARKDOWN_FILES:
        for token in MarkdownIt().parse(path.read_text(encoding="utf-8")):
            if token.type != "fence":
                continue
            lang, _, marker = token.info.strip().partition(" ")
            if lang == language:
                blocks.append(Block(path, token.map[0] + 1, lang, marker.strip(), token.content))
    return blocks
