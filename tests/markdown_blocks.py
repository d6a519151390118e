"""The fenced code blocks of the README and docs/, for the tests that highlight, build and run them.

A block that cannot run alone (it continues an example, needs several processes, or quotes
generated code) says so on the line before its fence, in a comment that neither GitHub nor the
site shows:

    <!-- fragment: uses the teacher and student modules of the previous section -->
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FRAGMENT = re.compile(r"<!--\s*fragment:\s*(?P<reason>.*?)\s*-->\s*$", re.S)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    fragment: str  # why the block cannot run alone; "" for a self-contained block

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def code_blocks(language: str) -> list[Block]:
    """Every ```LANGUAGE block in the README and docs/**/*.md, in file order."""
    blocks = []
    for path in MARKDOWN_FILES:
        tokens = MarkdownIt().parse(path.read_text(encoding="utf-8"))
        for before, token in zip([None, *tokens], tokens):
            if token.type != "fence" or token.info.split(" ")[0] != language:
                continue
            comment = FRAGMENT.match(before.content) if before is not None and before.type == "html_block" else None
            blocks.append(Block(path, token.map[0] + 1, language, token.content, comment["reason"] if comment else ""))
    return blocks
