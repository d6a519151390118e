"""No input text makes the compiler crash, hang or run away: every failure is a located AttnccError.

Counts of fuzzed inputs are printed at the end of the run (conftest.pytest_terminal_summary);
`--slow` runs ten times as many mutated examples and CLI runs.
"""
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attncc.api import build
from attncc.cli import main
from attncc.lang.source import AttnccError, SpecError

from .conftest import EXAMPLES, FUZZ_COUNTS

TOKENS = ["attention", "a", "{", "}", "(", ")", "[", "]", ",", "=", "==", "<=", "and", "or", "not", "i", "j", "h",
          "q", "k", "v", "dot", "mask", "score", "weight", "bias", "size", "param", "input", "feature", "normalize",
          "softmax", "rows", "elu1", "N", "H", "+", "-", "*", "/", "//", "%", "**", "^", "1", "0", "2.5", "1e9",
          "99999999999", "abs", "min", "where", "popcount", "#", "\n", "é", "\\", "'", '"', "__import__", "\x00"]
SECONDS_PER_INPUT = 5.0


def scale(request, n: int) -> int:
    return n * 10 if request.config.getoption("--slow") else n


def _compiles_or_fails_cleanly(text: str, kind: str) -> None:
    FUZZ_COUNTS[kind] = FUZZ_COUNTS.get(kind, 0) + 1
    start = time.perf_counter()
    try:
        build(text)
    except SpecError as exc:
        assert exc.diagnostics
        for d in exc.diagnostics:
            head = d.render(exc.source).splitlines()[0]
            assert head.startswith("<spec>:") and ": error: " in head, head
    except AttnccError:
        pass
    assert time.perf_counter() - start < SECONDS_PER_INPUT, f"{len(text)} chars took too long"


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_random_text(text):
    _compiles_or_fails_cleanly(text, "random text")


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes(data):
    _compiles_or_fails_cleanly(data.decode("utf-8", errors="replace"), "random bytes")


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS), max_size=50))
def test_token_soup(tokens):
    _compiles_or_fails_cleanly(" ".join(tokens), "token soup")


def _mutations(text: str, seed: str, count: int):
    """Delete, duplicate and swap tokens; huge numbers; unicode; deep nesting."""
    words = text.split(" ")
    rng = random.Random(seed)
    for _ in range(count):
        w = list(words)
        a, b = rng.randrange(len(w)), rng.randrange(len(w))
        op = rng.choice(["delete", "duplicate", "swap", "number", "unicode", "nest"])
        if op == "delete":
            del w[a]
        elif op == "duplicate":
            w.insert(a, w[b])
        elif op == "swap":
            w[a], w[b] = w[b], w[a]
        elif op == "number":
            w[a] = rng.choice(["1" + "0" * rng.randint(5, 400), "1e308", "1e-400", "0.0", "-0", "4294967296"])
        elif op == "unicode":
            w[a] = w[a] + rng.choice(["é", "λ", "\u200b", "\U0001F600", "\ufeff"])
        else:
            depth = rng.randint(10, 200)
            w[a] = "(" * depth + w[a] + ")" * depth
        yield " ".join(w)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_mutated_examples(path, request):
    for text in _mutations(path.read_text(), path.stem, scale(request, 150)):
        _compiles_or_fails_cleanly(text, "mutated examples")


def test_edge_inputs():
    for text in ["", " ", "\n" * 1000, "attention", "attention a", "attention a {", "}", "{}" * 1000,
                 "attention a { mask(i, j) = " + "(" * 5000 + "i" + ")" * 5000 + " > j }",
                 "attention a { mask(i, j) = " + " + ".join(["i"] * 3000) + " > j }",
                 "attention a { mask(i, j) = " + "not " * 3000 + "j <= i }",
                 "attention a { " + "size s = 1 " * 2000 + "}", "#" * 1_100_000, "a" * 1_000_000,
                 "attention a { mask(i, j) = j <= i }" + " " * 990_000]:
        _compiles_or_fails_cleanly(text, "edge inputs")


def test_cli_never_prints_a_traceback(tmp_path, capsys, request):
    path = EXAMPLES[0]
    for n, text in enumerate(_mutations(path.read_text(), "cli", scale(request, 40))):
        spec = tmp_path / f"m{n}.attn"
        spec.write_text(text)
        FUZZ_COUNTS["CLI inspect"] = FUZZ_COUNTS.get("CLI inspect", 0) + 1
        code = main(["inspect", str(spec), "--emit", "triton"])
        err = capsys.readouterr().err
        assert code in (0, 1) and "Traceback" not in err and "internal error" not in err, err
    (tmp_path / "binary.attn").write_bytes(b"\xff\xfe\x00attention")
    assert main(["check", str(tmp_path / "binary.attn")]) == 1
    assert "cannot read spec" in capsys.readouterr().err
