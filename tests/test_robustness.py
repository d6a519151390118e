"""No input text makes the compiler crash, hang or run away: every failure is a located AttnccError.

Random text and bytes, token soups, mutated examples, deep and wide operator chains, extreme sizes
and constants, and random options of every CLI command. Counts of fuzzed inputs are printed at the
end of the run (conftest.pytest_terminal_summary); `--slow` runs ten times as many mutated
examples, chains, extremes and CLI runs.
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
SECONDS_PER_INPUT = 5.0  # of this process's CPU time: wall time flakes on a loaded 2-core machine


def scale(request, n: int) -> int:
    return n * 10 if request.config.getoption("--slow") else n


def _compiles_or_fails_cleanly(text: str, kind: str) -> None:
    FUZZ_COUNTS[kind] = FUZZ_COUNTS.get(kind, 0) + 1
    start = time.process_time()
    try:
        build(text)
    except SpecError as exc:
        assert exc.diagnostics
        for d in exc.diagnostics:
            head = d.render(exc.source).splitlines()[0]
            assert head.startswith("<spec>:") and ": error: " in head, head
    except AttnccError:
        pass
    assert time.process_time() - start < SECONDS_PER_INPUT, f"{len(text)} chars took too long"


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
        assert code in (0, 2) and "Traceback" not in err and "internal error" not in err, err
    (tmp_path / "binary.attn").write_bytes(b"\xff\xfe\x00attention")
    assert main(["check", str(tmp_path / "binary.attn")]) == 2
    assert "cannot read spec" in capsys.readouterr().err


ATOMS = ["i", "j", "h", "N", "scale", "t[i - j]", "abs(i - j)", "1", "0.5", "min(i, j)", "x[j]"]


def _deep_and_wide(seed: str, count: int, longest: int):
    """Bracket-free operator chains as long as `longest`: sums, products, unary minus and `not` runs,
    bitwise and comparison chains, in biases, masks, table shapes and sizes."""
    rng = random.Random(seed)
    head = "attention deep {\n    size w = 3\n    param t[64] = 0\n    input x[N]\n"
    for _ in range(count):
        n = rng.randint(2, longest)
        terms = [rng.choice(ATOMS) for _ in range(n)]
        chain = terms[0] + "".join(f" {rng.choice(['+', '-', '*'])} {a}" for a in terms[1:])
        yield rng.choice([
            head + f"    bias(i, j) = {chain}\n}}",
            head + f"    bias(i, j) = {'-' * n}(i - j) * 0.01\n}}",
            head + f"    mask(i, j) = {'not ' * n}(j <= i)\n}}",
            head + f"    mask(i, j) = ({' ^ '.join(rng.choice(['i', 'j', 'w', '1']) for _ in range(n))}) % 5 <= 2\n}}",
            head.replace("param t[64]", f"param t[{' + '.join(['w'] * n)}]") + "    bias(i, j) = t[i - j]\n}",
            head.replace("size w = 3", f"size w = {' + '.join(['1'] * n)}") + "    mask(i, j) = abs(i - j) <= w\n}",
            head + f"    mask(i, j) = {' or '.join(f'j == i - {m}' for m in range(min(n, 12)))}\n}}",
        ])


def test_deep_and_wide_expressions(request):
    """Every one of them is a valid spec: it must compile, in bounded time."""
    for text in _deep_and_wide("deep", scale(request, 12), 300 if not request.config.getoption("--slow") else 600):
        FUZZ_COUNTS["deep and wide"] = FUZZ_COUNTS.get("deep and wide", 0) + 1
        start = time.process_time()
        build(text)
        assert time.process_time() - start < SECONDS_PER_INPUT, f"{len(text)} chars took too long"


EXTREMES = ["0", "-0", "1", "-1", "2147483647", "2147483648", "-2147483649", "4294967296", "9223372036854775807",
            "99999999999999999999999", "1e308", "-1e308", "1e309", "1e-308", "5e-324", "1e-400", "3.4e38", "6.5e4",
            "0.0", "-0.0", "1e300", "0.1"]


def _extreme(seed: str, count: int):
    """Extreme sizes (declared, derived, table and input shapes) and constants (in every position)."""
    rng = random.Random(seed)
    for _ in range(count):
        a, b = rng.choice(EXTREMES), rng.choice(EXTREMES)
        yield rng.choice([
            f"attention e {{ size w = {a}\n mask(i, j) = abs(i - j) <= w }}",
            f"attention e {{ size a = {a}\n size b = a * a\n mask(i, j) = j <= i + b }}",
            f"attention e {{ size w = {a}\n param t[w] = normal(std={b})\n bias(i, j) = t[i - j] }}",
            f"attention e {{ input x[N, {a}]\n bias(i, j) = x[j, 0] }}",
            f"attention e {{ score(i, j) = dot(q[i], k[j]) * scale - {a}\n mask(i, j) = j <= i - {b} }}",
            f"attention e {{ feature phi = elu1\n weight(i, j) = dot(phi(q[i]), phi(k[j])) * {a} ** (i - j)\n"
            f" normalize rows }}",
            f"attention e {{ bias(i, j) = exp({a} * (i - j)) / {b} }}",
            f"attention e {{ mask(i, j) = (i ^ {a}) % {b} <= {a} // {b} }}",
        ])


def test_extreme_sizes_and_constants(request):
    for text in _extreme("extreme", scale(request, 60)):
        _compiles_or_fails_cleanly(text, "extreme sizes and constants")


# Options of each command: inspect and compile take valid and invalid ones; check, fuzz and bench,
# which run backends, only invalid ones (each must be refused before any work), so the test stays fast.
OPTIONS = {
    "inspect": [["--stage", "ast"], ["--stage", "plan"], ["--stage", "bogus"], ["--emit", "torch"], ["--emit", "dot"],
                ["--lowering", "fft"], ["--lowering", "nope"], ["--tokens", "0"], ["--tokens", "-5"],
                ["--tokens", "x"], ["--size", "w=3"], ["--size", "=="], ["-o", "/dev/null/x.png"]],
    "compile": [["-o", "{tmp}/out"], ["-o", "/dev/null"], ["-o", "/dev/null/x"], ["-o", "{tmp}/file"],
                ["--lowering", "tiled"], ["--lowering", "zzz"]],
    "check": [["--device", "tpu"], ["--device", ""], ["--seed", "-1"], ["--seed", "2**70"], ["--seed", str(2**64)],
              ["--seed", "1e3"]],
    "fuzz": [["--examples", "0"], ["--examples", "-3"], ["--examples", "many"], ["--seed", str(2**70)],
             ["--out", "{tmp}"], ["--out", "/dev/null/f.attn"]],
    "bench": [["--heads", "0"], ["--batch", "-1"], ["--device", "tpu"], ["--dims", "a,b"], ["--lengths", ""],
              ["--baselines", "nope"], ["-o", "{tmp}"], ["-o", "/dev/null/b.json"]],
}


def _cli_runs(tmp_path, seed: str, count: int):
    rng = random.Random(seed)
    specs = [str(EXAMPLES[0]), str(tmp_path), str(tmp_path / "missing.attn"), str(tmp_path / "file"),
             "attention a { mask(i, j) = j <= i }", "attention a { mask(i, j) = j <== i }"]
    for _ in range(count):
        command = rng.choice(sorted(OPTIONS))
        options = rng.sample(OPTIONS[command], rng.randint(1, 3))
        yield [command, rng.choice(specs)] + [a.replace("{tmp}", str(tmp_path)) for o in options for a in o]


def test_cli_options(tmp_path, capsys, request):
    """Random options of every command: a result or a clean error (exit 1 or 2), never an internal error."""
    (tmp_path / "file").write_text("not a spec")
    for argv in _cli_runs(tmp_path, "cli-options", scale(request, 40)):
        FUZZ_COUNTS["CLI options"] = FUZZ_COUNTS.get("CLI options", 0) + 1
        code = main(argv)
        err = capsys.readouterr().err
        assert code in (0, 1, 2) and "Traceback" not in err and "internal error" not in err, (argv, err)
        assert argv[0] in ("inspect", "compile") or code != 0, argv
