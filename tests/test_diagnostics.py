"""Golden tests: every malformed spec gets all of its located errors, rendered with carets and hints."""
from pathlib import Path

import pytest

import attncc
from attncc.api import build
from attncc.cli import main
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
    assert main(["check", str(path)]) == 1
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
