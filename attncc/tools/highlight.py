"""Syntax highlighting for .attn specs: a Pygments lexer and the TextMate grammar, from one word list.

Both are derived, not hand-copied: the keywords, operators and number syntax come from the
grammar (grammar/attn.lark, read through lark), the builtin names from the language's own tables
(scalar functions, feature maps, normalizers, approximations, poolings, graph kernels, parameter
initializers). Adding a feature map or a keyword to the language highlights it with no edit here.

    python -m attncc.tools.highlight > grammar/attn.tmLanguage.json   # regenerate the TextMate grammar

The lexer is registered as the Pygments entry point `attn` (pyproject.toml), so ```attn code blocks
in mkdocs and anything else that uses Pygments find it by name.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from functools import lru_cache

from lark.lexer import PatternRE, PatternStr
from pygments.lexer import RegexLexer, words
from pygments.token import Comment, Keyword, Name, Number, Operator, Punctuation, Text

from ..frontend.approx import APPROXIMATIONS
from ..frontend.check import INITIALIZERS, INPUT_DTYPES, RESERVED
from ..frontend.parse import parser
from ..lang.operators import FUNCTIONS
from ..lang.features import ALL_MAPS
from ..lang.graph_kernels import GRAPH_KERNELS
from ..lang.normalizers import NORMALIZERS
from ..lang.pool import POOLINGS

# Grammar words that are operators or constants rather than statement keywords.
OPERATOR_WORDS = {"and", "or", "not"}
CONSTANT_WORDS = {"true", "false"}
PUNCTUATION = set("{}()[],:")
# Regex terminals with their own class; every other regex terminal is an operator class (CMPOP, ...).
SYNTAX_TERMINALS = ("NUMBER", "NAME", "COMMENT")


@dataclass(frozen=True)
class Vocabulary:
    """Every class of word and symbol the highlighters know: word lists and regular expressions."""

    keywords: tuple[str, ...]
    operator_words: tuple[str, ...]
    constants: tuple[str, ...]
    builtins: tuple[str, ...]  # functions, feature maps, normalizers, approximations, ...
    implicit: tuple[str, ...]  # names every spec may use undeclared: q, k, v, i, j, h, scale, N, ...
    whitespace: str
    comment: str
    number: str
    name: str
    operators: str
    punctuation: str


@lru_cache(maxsize=1)
def vocabulary() -> Vocabulary:
    """The vocabulary read from the grammar's terminals and the language's tables."""
    strings, patterns, operator_classes = set(), {}, []
    for terminal in parser().terminals:
        if isinstance(terminal.pattern, PatternStr):
            strings.add(terminal.pattern.value)
        elif terminal.name in SYNTAX_TERMINALS:
            patterns[terminal.name] = terminal.pattern.value
        elif terminal.name.startswith("__IGNORE"):  # %ignore'd whitespace
            patterns["whitespace"] = terminal.pattern.value
        else:
            operator_classes.append(terminal.pattern.value)
    word_strings = {s for s in strings if s.isidentifier()}
    symbols = strings - word_strings - PUNCTUATION
    builtins = {"dot", *FUNCTIONS, *ALL_MAPS, *NORMALIZERS, *APPROXIMATIONS, *POOLINGS, *GRAPH_KERNELS,
                *INITIALIZERS, *INPUT_DTYPES}
    # Alternatives are tried in order: longer literals (`**`) before the classes (`*` in MULOP), the
    # classes (`==` in CMPOP) before single characters (`=`).
    operators = ([re.escape(s) for s in sorted(symbols) if len(s) > 1] + sorted(operator_classes)
                 + [re.escape(s) for s in sorted(symbols) if len(s) == 1])
    return Vocabulary(
        keywords=tuple(sorted(word_strings - OPERATOR_WORDS - CONSTANT_WORDS)),
        operator_words=tuple(sorted(word_strings & OPERATOR_WORDS)),
        constants=tuple(sorted(word_strings & CONSTANT_WORDS)),
        builtins=tuple(sorted(builtins)),
        implicit=tuple(sorted((RESERVED | {"b"}) - builtins - CONSTANT_WORDS)),  # b: the batch index (declarable)
        whitespace=patterns["whitespace"], comment=patterns["COMMENT"], number=patterns["NUMBER"],
        name=patterns["NAME"], operators="|".join(operators),
        punctuation="|".join(re.escape(s) for s in sorted(strings & PUNCTUATION)),
    )


def _lexer_rules():
    vocab = vocabulary()
    return {"root": [
        (vocab.whitespace, Text.Whitespace),
        (vocab.comment, Comment.Single),
        (words(vocab.keywords, suffix=r"\b"), Keyword),
        (words(vocab.operator_words, suffix=r"\b"), Operator.Word),
        (words(vocab.constants, suffix=r"\b"), Keyword.Constant),
        (words(vocab.builtins, suffix=r"\b"), Name.Builtin),
        (words(vocab.implicit, suffix=r"\b"), Name.Builtin.Pseudo),
        (vocab.number, Number),
        (vocab.name, Name),
        (vocab.operators, Operator),
        (vocab.punctuation, Punctuation),
    ]}


class AttnLexer(RegexLexer):
    """Pygments lexer for attncc specs (.attn)."""

    name = "attncc"
    aliases = ["attn", "attncc"]
    filenames = ["*.attn"]
    tokens = _lexer_rules()


def _word_rule(scope: str, items) -> dict:
    return {"name": f"{scope}.attn", "match": r"\b(?:" + "|".join(re.escape(s) for s in items) + r")\b"}


def textmate_grammar() -> dict:
    """The TextMate grammar (VS Code, GitHub-style highlighters) with the lexer's word classes."""
    vocab = vocabulary()
    return {
        "$schema": "https://raw.githubusercontent.com/martinring/tmlanguage/master/tmlanguage.json",
        "name": "attncc",
        "scopeName": "source.attn",
        "fileTypes": ["attn"],
        "comment": "Generated by `python -m attncc.tools.highlight` from grammar/attn.lark and the language's tables.",
        "patterns": [
            {"name": "comment.line.number-sign.attn", "match": vocab.comment},
            _word_rule("keyword.control", vocab.keywords),
            _word_rule("keyword.operator.word", vocab.operator_words),
            _word_rule("constant.language", vocab.constants),
            _word_rule("support.function.builtin", vocab.builtins),
            _word_rule("variable.language", vocab.implicit),
            {"name": "constant.numeric.attn", "match": vocab.number},
            {"name": "variable.other.attn", "match": vocab.name},
            {"name": "keyword.operator.attn", "match": vocab.operators},
            {"name": "punctuation.attn", "match": vocab.punctuation},
        ],
    }


def main() -> None:
    json.dump(textmate_grammar(), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
