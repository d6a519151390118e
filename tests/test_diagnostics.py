"""Golden tests: every malformed spec gets all of its located errors, rendered with carets and hints."""
from pathlib import Path

import pytest
import torch

import attncc
from attncc.api import build
from attncc.cli import clamp_warnings, main
from attncc.lang.source import SpecError

from .conftest import golden

CASES = sorted((Path(__file__).parent / "golden" / "diagnostics").glob("*.attn"))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_rendered_diagnostics(path, update_golden):
    with pytest.raises(SpecError) as info:
        build(str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path))
    text = info.value.render().replace(str(path.parent) + "/", "")
    golden(path.with_suffix(".txt"), text + "\n", update_golden)


def test_every_error_is_located_with_a_caret():
    for path in CASES:
        with pytest.raises(SpecError) as info:
            build(str(path))
        for line in info.value.render().splitlines()[::1]:
            if ": error: " in line:
                location = line.split(": error: ")[0]
                assert location.count(":") >= 2, line
        assert "^" in info.value.render()


def test_all_errors_are_reported_at_once():
    with pytest.raises(SpecError) as info:
        attncc.compile("attention a {\n mask(i, j) = j <= ii\n score(i, j) = dot(q[i], k[j]) * scal\n}")
    assert len(info.value.diagnostics) == 2
    assert "did you mean `i`?" in str(info.value) and "did you mean `scale`?" in str(info.value)


def test_cli_prints_diagnostics_without_traceback(capsys):
    path = CASES[0]
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and ": error: " in err and "^" in err


def test_missing_file_is_a_clean_error(capsys):
    assert main(["inspect", "no/such/spec.attn"]) == 2  # a bad argument, as for argparse
    assert "no such spec file" in capsys.readouterr().err


def test_spec_text_is_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    spec = f'attention a {{ mask(i, j) = __import__("os").system("touch {marker}") }}'
    with pytest.raises(SpecError):
        attncc.compile(spec)
    assert not marker.exists()


def _errors(body: str) -> list:
    with pytest.raises(SpecError) as info:
        attncc.compile("attention a {\n " + body + "\n}")
    return info.value.diagnostics


@pytest.mark.parametrize("body, hint", [
    ("mask(i, j) = (i >> 2) == (j >> 2)", "there are no shift operators: write `x // 2 ** n`"),
    ("mask(i, j) = (i << 1) > j", "there are no shift operators: write `x * 2 ** n`"),
    ("mask(i, j) = i < j && j > 2", "write `and` to combine conditions"),
    ("mask(i, j) = i < j || j > 2", "write `or` to combine conditions"),
    ("mask(i, j) = ~i == j", "there is no bitwise not: write `-x - 1`"),
    ("mask(i, j) = !(i < j)", "write `not x`"),
    ("mask(i, j) = (i & 0x1F) == 0", "write integers in decimal: `0x1F` is `31`"),
    ("mask(i, j) = (i & (0b101)) == 0", "`0b101` is `5`"),
    ("size w = 1_000  mask(i, j) = j <= i", "digits are written without `_`: `1000`"),
    ("bias(i, j) = -inf", "a bias of -inf is a mask"),
    ("bias(i, j) = pi * i", "write `3.141592653589793`"),
    ("bias(i, j) = sinh(i * 1.0)", "write `(exp(x) - exp(-x)) / 2`"),
    ("bias(i, j) = tan(i * 1.0)", "write `sin(x) / cos(x)`"),
    ("bias(i, j) = tanx(i * 1.0)", "did you mean `tanh`?"),
    ("bias(i, j) = frobnicate(i)", "the functions are abs, clamp, cos"),
    ("mask(i, j) = i < j; bias(i, j) = 0", "statements need no separator"),
])
def test_hints_for_what_other_languages_write(body, hint):
    (diagnostic,) = _errors(body)
    assert hint in diagnostic.hint, diagnostic
    assert "comparisons do not chain" not in diagnostic.hint and "ASCII" not in diagnostic.hint


def test_non_ascii_letters_still_get_the_ascii_hint():
    (diagnostic,) = _errors("bias(i, j) = ß")
    assert "ASCII" in diagnostic.hint


def test_every_error_inside_unknown_functions_and_tables_is_reported():
    """Arguments of an unknown function (and indices of an unknown table) are checked too, nested."""
    messages = [d.message for d in _errors("bias(i, j) = sinh(cosh(x)) + tanx(y) + nope[zz, sin(w)]")]
    assert messages == ["unknown function `sinh`", "unknown function `cosh`", "unknown name `x`",
                        "unknown function `tanx`", "unknown name `y`", "unknown table `nope`", "unknown name `zz`",
                        "unknown name `w`"]


def test_let_diagnostics():
    assert [d.message for d in _errors("let r = s + 1  let s = 2  bias(i, j) = r")] == \
        ["`s` is used before its `let`"]
    (used_in_size,) = _errors("let r = 2  size w = r  bias(i, j) = r")
    assert used_in_size.message == "`r` is a `let`, usable only in definitions and other lets"
    (dot_in_mask,) = _errors("let s = dot(q[i], k[j])  mask(i, j) = s > 0")
    assert "uses `dot`" in dot_in_mask.message
    renamed = _errors("let d = x - y  bias(x, y) = d")[0]
    assert renamed.message == "unknown name `x`" and "the query index is `i`" in renamed.hint
    (once,) = _errors("let r = nope + 1  bias(i, j) = r * r + r")  # a bad body is reported once, not per use
    assert once.message == "unknown name `nope`"
    (keyword,) = _errors("size let = 2")
    assert "unexpected `let`" in keyword.message or "reserved" in keyword.message


CLAMPING = "attention rpe { size max_len = 8  param rpe[H, 2 * max_len - 1]  bias(i, j) = rpe[h, i - j + max_len - 1] }"


def test_check_bounds_raises_where_a_lookup_would_clamp():
    module = attncc.compile(CLAMPING)(H=2, check_bounds=True)
    short = torch.randn(1, 2, 8, 4)
    assert module(short, short, short).shape == (1, 2, 8, 4)  # every index in range
    with pytest.raises(attncc.ShapeError, match=r"`rpe` index 2 of 2 is -1 at b=0, h=0, i=0, j=8, outside 0 \.\. 14"):
        long = torch.randn(1, 2, 9, 4)
        module(long, long, long)
    assert module.clamped_lookups(short, short, short) == []


def test_check_lists_the_lookups_that_clamp():
    (line,) = clamp_warnings(attncc.compile(CLAMPING), seed=0)
    assert line.startswith("`rpe` index 2 of 2 is -1 at b=0") and "check_bounds=True" in line
    assert clamp_warnings(attncc.compile(CLAMPING.replace("max_len = 8", "max_len = 200")), seed=0) == []


@pytest.mark.slow
def test_check_warns_when_a_lookup_clamps(tmp_path, capsys):
    path = tmp_path / "rpe.attn"
    path.write_text(CLAMPING)
    assert main(["check", str(path)]) == 0  # clamping is the language's meaning: a warning, not a failure
    out = " ".join(capsys.readouterr().out.split())
    assert "warning: `rpe` index 2 of 2 is -1" in out and "check_bounds=True" in out
