"""Editor support from the one grammar: the Pygments lexer and the TextMate grammar (grammar/)."""
from __future__ import annotations

import json
import re
from importlib.metadata import EntryPoint

import pytest
from pygments.token import Error, Keyword, Name

from attncc.frontend.parse import grammar_path
from attncc.tools.highlight import AttnLexer, textmate_grammar, vocabulary

from .markdown_blocks import ROOT, code_blocks

EXAMPLES = sorted((ROOT / "examples").glob("*.attn"))
DOC_BLOCKS = code_blocks("attn")


def error_tokens(text: str) -> list[str]:
    return [value for token, value in AttnLexer().get_tokens(text) if token in Error]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_lexes_without_errors(path):
    assert error_tokens(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("block", DOC_BLOCKS, ids=lambda b: b.where)
def test_every_attn_block_in_the_docs_lexes_without_errors(block):
    assert error_tokens(block.text) == []


def test_there_are_attn_blocks_to_check():
    assert len(EXAMPLES) >= 20 and len(DOC_BLOCKS) >= 20


def test_an_unknown_character_is_an_error_token():
    assert error_tokens("mask(i, j) = j <= i $ 1") == ["$"]


def test_word_classes_come_from_the_grammar_and_the_tables():
    tokens = dict((value, token) for token, value in AttnLexer().get_tokens(
        "normalize softmax approx mra(block = 16)\nfeature phi = favor()\nmask(i, j) = popcount(i) <= N"))
    assert tokens["normalize"] in Keyword and tokens["approx"] in Keyword and tokens["mask"] in Keyword
    for builtin in ("softmax", "mra", "favor", "popcount"):
        assert tokens[builtin] in Name.Builtin, builtin
    assert tokens["N"] in Name.Builtin.Pseudo and tokens["phi"] is Name
    grammar_words = set(re.findall(r'"([a-z]+)"', grammar_path().read_text(encoding="utf-8")))
    vocab = vocabulary()
    assert grammar_words == set(vocab.keywords) | set(vocab.operator_words) | set(vocab.constants)


def test_the_textmate_grammar_is_generated_from_the_lexers_vocabulary():
    committed = json.loads(grammar_path("attn.tmLanguage.json").read_text(encoding="utf-8"))
    assert committed == textmate_grammar(), "regenerate: python -m attncc.tools.highlight > grammar/attn.tmLanguage.json"
    by_scope = {rule["name"]: rule["match"] for rule in committed["patterns"]}
    vocab = vocabulary()
    for scope, words in (("keyword.control.attn", vocab.keywords), ("support.function.builtin.attn", vocab.builtins),
                         ("keyword.operator.word.attn", vocab.operator_words)):
        assert all(re.fullmatch(by_scope[scope], w) for w in words) and not re.fullmatch(by_scope[scope], "phi"), scope


def test_the_lexer_is_registered_as_a_pygments_entry_point():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    target = project["entry-points"]["pygments.lexers"]["attn"]
    assert EntryPoint("attn", target, "pygments.lexers").load() is AttnLexer
