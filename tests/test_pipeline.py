"""IR and plan printing (golden), verifier, determinism of generated source."""
import ast as pyast
import subprocess
import sys

import pytest

from attncc.api import build, generated_files
from attncc.frontend.ast import format_spec
from attncc.ir.graph import print_graph, to_dot, verify
from attncc.frontend.parse import parse
from attncc.plan.select import format_plan
from attncc.lang.source import Source

from .conftest import EXAMPLES, ROOT, golden

GOLDEN = ROOT / "tests" / "golden" / "ir"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_printed_ir_golden(path, update_golden):
    comp = build(str(path.relative_to(ROOT)))
    sections = []  # a composed spec: each map's, under a header
    for name, part in comp.parts().items():
        sections += [f"# map {name} of output = {comp.checked.output}"] if name else []
        sections += [print_graph(part.ir), print_graph(part.optimized), format_plan(part.plan, part.log)]
    text = "\n\n".join(sections)
    golden(GOLDEN / f"{path.stem}.txt", text + "\n", update_golden)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_graphs_verify_and_render(path):
    for part in build(str(path)).parts().values():
        verify(part.ir)
        verify(part.optimized)
        assert to_dot(part.optimized).startswith("digraph")


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_canonical_ast_round_trips(path):
    tree = parse(Source(path.read_text()))
    again = parse(Source(format_spec(tree)))
    assert format_spec(again) == format_spec(tree)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_generated_source_is_python_and_deterministic(path):
    first = generated_files(build(str(path)))
    assert first == generated_files(build(str(path)))
    for source in first.values():
        pyast.parse(source)


def test_generated_source_is_identical_across_processes():
    path = EXAMPLES[0]
    code = f"import attncc, hashlib; print(hashlib.sha256(attncc.build({str(path)!r}).module_source.encode()).hexdigest())"
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    here = __import__("hashlib").sha256(build(str(path)).module_source.encode()).hexdigest()
    assert runs == {here + "\n"}


def test_comments_and_layout_do_not_reach_generated_code():
    plain = "attention a { mask(i, j) = j <= i }"
    noisy = "# exec('rm -rf /')\nattention a {\n  # __import__('os')\n  mask(i, j) =\n    j <= i  # \"quote\"\n}\n"
    assert build(plain).module_source == build(noisy).module_source
    assert "exec" not in build(noisy).module_source


def test_verifier_catches_a_broken_graph():
    comp = build(str(EXAMPLES[0]))
    g = comp.optimized
    attend = g.operands(g.output)[0]
    g.g.remove_edge(g.operands(attend)[0], attend)
    with pytest.raises(AssertionError):
        verify(g)


def test_generated_code_calls_only_what_rt_exports():
    """Every `rt.NAME` in the generated torch and Triton sources, of every example under every
    candidate lowering, is in the rt namespace (attncc.rt: attention.__all__, transforms.__all__, ...)."""
    import re

    from attncc import rt
    from attncc.api import relower
    missing = set()
    for path in EXAMPLES:
        comps = build(str(path)).parts().values()
        for comp, candidate in [(comp, candidate) for comp in comps for candidate in comp.plan.candidates]:
            other = relower(comp, candidate.name)
            names = re.findall(r"\brt\.([A-Za-z_]\w*)", other.module_source + other.triton_source)
            missing |= {f"{path.stem}@{candidate.name}: rt.{n}" for n in names if not hasattr(rt, n)}
    assert not missing, sorted(missing)
