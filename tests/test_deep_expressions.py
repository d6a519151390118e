"""Expressions as deep as a spec is long, and expressions printed once per distinct subexpression.

Operator chains nest without brackets (`a + b + ...` 500 terms, `not not ...` 400 times): every stage
(parser, checker, lowering, analyses, the dense reference, both emitters, the Python parser reading
the generated module) must take them. Emitters print expressions as DAGs with let-bound
temporaries: shared subexpressions (table loads included) are computed once, and no line nests deeply.
"""
import io
import os
import re
import subprocess
import sys
import tokenize

import pytest
import torch

import attncc
from attncc.api import build
from attncc.tools.compare import compare, make_module, random_inputs

from .conftest import ROOT

TERMS, NOTS = 500, 400


def deep_sum_spec(terms: int = TERMS) -> str:
    bias = " + ".join(f"t[i - j + {n % 7}]" for n in range(terms))
    return f"""attention deep_sum {{
    param t[64] = 0
    score(i, j) = dot(q[i], k[j]) * scale + {bias}
    mask(i, j) = j <= i
}}"""


def deep_not_spec(nots: int = NOTS) -> str:
    return f"""attention deep_not {{
    mask(i, j) = {'not ' * nots}(j > i + 3)
}}"""


def deep_neg_spec(negations: int = TERMS) -> str:
    return f"""attention deep_neg {{
    score(i, j) = dot(q[i], k[j]) * scale + {'-' * negations}(i - j) * 0.01
}}"""


def deep_shapes_spec(terms: int = TERMS) -> str:
    """Table and input shapes and a derived size, each a long sum: printed as functions of the sizes."""
    ones = " + ".join(["1"] * terms)
    return f"""attention deep_shapes {{
    size s = 3
    size b = s{' + s' * terms}
    param t[s, H + {ones}] = normal(std=0.1)
    input x[N + {ones}]
    score(i, j) = dot(q[i], k[j]) * scale + t[(i - j) % s, h] + x[j] / b
    mask(i, j) = j <= i
}}"""


def many_tables_spec(tables: int) -> str:
    """One bias reading `tables` distinct tables (each differentiated in the Triton backward)."""
    params = "".join(f"    param t{n}[64] = normal(std=0.01)\n" for n in range(tables))
    bias = " + ".join(f"t{n}[i - j + {n % 5}]" for n in range(tables))
    return f"attention many_tables {{\n{params}    score(i, j) = dot(q[i], k[j]) * scale + {bias}\n    mask(i, j) = j <= i\n}}"


def _matches_reference(cls, backend):
    module = make_module(cls, 2, 8, 8)
    q, k, v, inputs = random_inputs(cls, 1, 2, 19, 19, 8, 8, generator=torch.Generator().manual_seed(1))
    result = compare(module, q, k, v, inputs, backend, torch.float32)
    assert result.ok, f"{cls.SPEC_NAME} {backend}: error {result.error:.3e} > {result.tolerance:.0e}"


def _max_bracket_depth(source: str) -> int:
    """How deeply the code's brackets nest (brackets inside strings and docstrings aside)."""
    depth = deepest = 0
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.OP:
            depth += token.string in "([{"
            depth -= token.string in ")]}"
            deepest = max(deepest, depth)
    return deepest


@pytest.mark.parametrize("spec", [deep_sum_spec(), deep_not_spec(), deep_neg_spec(), deep_shapes_spec(),
                                  many_tables_spec(100)], ids=["sum500", "not400", "neg500", "shapes500", "tables100"])
def test_deep_expressions_compile_and_match_reference(spec):
    comp = build(spec)
    for source in (comp.module_source, comp.triton_source):
        compile(source, "<generated>", "exec")  # the Python parser takes it
        assert _max_bracket_depth(source) < 60
    cls = attncc.compile(comp)
    for backend in ("torch", "triton"):
        _matches_reference(cls, backend)


def test_deep_sum_loads_each_distinct_lookup_once():
    """500 terms read 7 distinct entries of t: the kernel loads each once per tile (in each stage of
    its key loop: the partial and the full tiles are separate loops)."""
    kernel = _function(build(deep_sum_spec()).triton_source, "_attn_fwd")
    stages = kernel.count("for start_n in range(")
    assert stages >= 1 and kernel.count("tl.load(P_t") == 7 * stages


def _function(source: str, name: str) -> str:
    """The text of one top-level function of generated source."""
    start = source.index(f"def {name}(")
    end = re.compile(r"^\S", re.M).search(source, source.index("\n", start))
    return source[start:end.start() if end else len(source)]


def test_flash_kernel_loads_the_bias_once_and_computes_the_relu_once():
    """max(dot / c + b[i - j + c - 1], 0) ** 2: the square multiplies one temporary by itself."""
    kernel = _function(build(ROOT / "examples" / "flash.attn").triton_source, "_mixed_local")
    assert kernel.count("tl.load(P_b") == 1
    relus = kernel.count("tl.maximum(") - kernel.count("tl.minimum(tl.maximum(")  # less index clamps
    assert relus == 1
    assert re.search(r"^\s*s = \(\((t\d+)\) \* \(\1\)\)$", kernel, re.M), kernel


def test_gray_code_inlines_its_operand_once():
    """gray(x) = x ^ (x >> 1) names x once instead of printing it twice, in both backends."""
    spec = """attention gray_mask {
        size block = 4
        mask(i, j) = popcount(gray(i // block) ^ gray(j // block)) <= 1
    }"""
    comp = build(spec)
    assert _function(comp.torch_source, "mask").count("rt.floordiv(i, ctx.sizes['block'])") == 1
    # block is a kernel constexpr: the division goes through _floordiv_size (a shift for powers of two)
    assert _function(comp.triton_source, "_attn_fwd").count("_floordiv_size(offs_m[:, None], S_block,") == 1


GENERATE = """
import sys
from attncc.api import build
from tests.test_deep_expressions import deep_sum_spec
comp = build(deep_sum_spec())
sys.stdout.write(comp.module_source + comp.triton_source)
"""


def test_generated_code_is_byte_identical_across_builds():
    """Same spec, same bytes: twice in this process (the examples too), and in another process with
    other str hashes (tests/test_pipeline.py does that for the examples)."""
    for source in (ROOT / "examples" / "flash.attn", ROOT / "examples" / "hypercube.attn", deep_sum_spec()):
        first, second = build(source), build(source)
        assert (first.module_source, first.triton_source) == (second.module_source, second.triton_source)
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    other = subprocess.run([sys.executable, "-c", GENERATE], cwd=ROOT, env=env, capture_output=True, text=True,
                           check=True).stdout
    assert other == first.module_source + first.triton_source


@pytest.mark.slow
def test_many_tables_and_long_or_chains():
    """400 tables in one bias (each with its own derivative), 200 chained `or`s (the mask analysis
    runs for each alternative)."""
    chain = " or ".join(f"(j <= {n} and i > {n})" for n in range(200))
    for spec in (many_tables_spec(400), f"attention or_chain {{ mask(i, j) = {chain} or j == i }}"):
        cls = attncc.compile(spec)
        for backend in ("torch", "triton"):
            _matches_reference(cls, backend)


def test_deep_table_gradients_match_reference():
    """The Triton backward of a bias of 24 tables: every table's gradient, as the reference's."""
    cls = attncc.compile(many_tables_spec(24))
    module = make_module(cls, 1, 8, 8)
    q, k, v, _ = random_inputs(cls, 1, 1, 9, 9, 8, 8, generator=torch.Generator().manual_seed(2))
    grads = {}
    for backend in ("triton", "reference"):
        module.zero_grad()
        module.backend = "triton"
        out = module(q, k, v) if backend == "triton" else module.reference(q, k, v)
        out.sum().backward()
        grads[backend] = torch.stack([module.get_parameter(f"t{n}").grad.clone() for n in range(24)])
    assert module.last_backend == "triton" and "by atomics" in cls.TRITON_LOWERING
    torch.testing.assert_close(grads["triton"], grads["reference"].float(), atol=1e-4, rtol=1e-3)
