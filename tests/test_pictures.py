"""`attncc inspect SPEC --emit mask-png`: the mask picture and the tiles it says are visited."""
import pytest

from attncc.cli import main

from .conftest import ROOT

pytest.importorskip("matplotlib", reason="mask pictures need matplotlib (the `plot` extra)")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def draw(name, tmp_path, *extra):
    out = tmp_path / f"{name}.png"
    assert main(["inspect", str(ROOT / "examples" / f"{name}.attn"), "--emit", "mask-png", "-o", str(out),
                 *extra]) == 0
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    return data


@pytest.mark.parametrize("name, line", [
    ("causal", "10 of 16 tiles visited"),  # a band [0, oo) at N = 64 over 16-token tiles: 1 + 2 + 3 + 4
    ("hypercube", "12 of 16 tiles visited"),  # 16-token blocks; each of 4 rows lists log2(4) + 1 = 3
    ("linear_elu", "no score tiles"),  # kernelized: the scores are never formed
])
def test_mask_png_reports_the_visited_tiles(name, line, tmp_path, capsys):
    draw(name, tmp_path)
    assert line in capsys.readouterr().out


def test_visited_tiles_follow_the_plan():
    from attncc import compile as compile_spec
    from attncc.tools.pictures import picture
    window = picture(compile_spec(ROOT / "examples" / "sliding_window.attn"), tokens=128, sizes={"window": 8})
    # |i - j| <= 8 over 16-token tiles: each query tile reaches its neighbours only
    assert window.tiles.fraction == (8 + 2 * 7, 64)
    assert window.kept.sum() == sum(min(127, i + 8) - max(0, i - 8) + 1 for i in range(128))


def test_mask_png_is_deterministic_and_takes_sizes(tmp_path, capsys):
    first = draw("sliding_window", tmp_path, "--tokens", "48", "--size", "window=4")
    assert draw("sliding_window", tmp_path, "--tokens", "48", "--size", "window=4") == first
    assert b"Software" not in first and b"Matplotlib" not in first
    assert "7 of 9 tiles visited" in capsys.readouterr().out  # 3 x 3 tiles, |i - j| <= 4: neighbours only
    # a table initialized at random (normal(std=0.1)) is drawn from a fixed seed too
    assert draw("toeplitz_linear", tmp_path, "--tokens", "32") == draw("toeplitz_linear", tmp_path, "--tokens", "32")
