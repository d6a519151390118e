"""No input text makes the compiler crash: every failure is an AttnccError with a location."""
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attncc.api import build
from attncc.source import AttnccError, SpecError

from .conftest import EXAMPLES

TOKENS = ["attention", "a", "{", "}", "(", ")", "[", "]", ",", "=", "==", "<=", "and", "or", "not", "i", "j", "h",
          "q", "k", "v", "dot", "mask", "score", "weight", "bias", "size", "param", "input", "feature", "normalize",
          "softmax", "rows", "elu1", "N", "H", "+", "-", "*", "/", "//", "%", "**", "^", "1", "0", "2.5", "1e9",
          "99999999999", "abs", "min", "where", "popcount", "#", "\n", "é", "\\", "'", '"', "__import__"]


def _compiles_or_fails_cleanly(text: str) -> None:
    try:
        build(text)
    except SpecError as exc:
        assert exc.diagnostics and all(":" in d.render(exc.source).split(": error: ")[0] for d in exc.diagnostics)
    except AttnccError:
        pass


@settings(max_examples=150)
@given(st.text(max_size=200))
def test_random_text(text):
    _compiles_or_fails_cleanly(text)


@settings(max_examples=150)
@given(st.lists(st.sampled_from(TOKENS), max_size=40))
def test_token_soup(tokens):
    _compiles_or_fails_cleanly(" ".join(tokens))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_mutated_examples(path):
    """Delete, duplicate and swap tokens of every example, deterministically."""
    words = path.read_text().split(" ")
    rng = random.Random(path.stem)
    for _ in range(60):
        w = list(words)
        a, b = rng.randrange(len(w)), rng.randrange(len(w))
        op = rng.choice(["delete", "duplicate", "swap"])
        if op == "delete":
            del w[a]
        elif op == "duplicate":
            w.insert(a, w[b])
        else:
            w[a], w[b] = w[b], w[a]
        _compiles_or_fails_cleanly(" ".join(w))


def test_deep_nesting_and_huge_inputs():
    _compiles_or_fails_cleanly("attention a { mask(i, j) = " + "(" * 5000 + "i" + ")" * 5000 + " > j }")
    _compiles_or_fails_cleanly("attention a { mask(i, j) = " + " + ".join(["i"] * 3000) + " > j }")
    _compiles_or_fails_cleanly("attention a { " + "size s = 1 " * 2000 + "}")
    _compiles_or_fails_cleanly("#" * 1_100_000)
