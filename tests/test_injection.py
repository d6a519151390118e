"""Spec text reaches generated code only as validated identifiers and numbers; nothing in it runs."""
import keyword

import pytest
import torch

import attncc
from attncc.api import build, generated_files
from attncc.tools.compare import compare, make_module, random_inputs
from attncc.lang.source import SpecError

NAMES = sorted(set(keyword.kwlist) - {"and", "or", "not", "True", "False"}) + \
    ["True_", "print", "exec", "eval", "open", "tl", "triton", "torch", "rt", "math", "sys", "ctx", "self", "q0",
     "qk0", "offs_m", "off_h", "sm_scale", "Module", "CompiledAttention", "S_w", "P_t", "__builtins__"]


@pytest.mark.parametrize("name", NAMES)
def test_python_and_triton_names_as_spec_names(name):
    """A keyword or a name the generated code uses, as size, table, input and spec name."""
    spec = (f"attention {name} {{ size {name}_ = 3  param {name}[4] = normal(std=0.5)  input x_{name}[N] : int"
            f"  score(i, j) = dot(q[i], k[j]) * scale + {name}[(i + x_{name}[j]) % 4]"
            f"  mask(i, j) = abs(i - j) <= {name}_ }}")
    try:
        cls = attncc.compile(spec)
    except SpecError as exc:  # a name the language reserves: rejected with a located error, never run
        assert ": error: " in str(exc)
        return
    module = make_module(cls, 2, 16, 16)
    q, k, v, inputs = random_inputs(cls, 1, 2, 19, 19, 16, 16)
    for backend in ("torch", "triton"):
        assert compare(module, q, k, v, inputs, backend, torch.float32).ok


SMUGGLE = [
    'attention a { mask(i, j) = __import__("os").system("touch MARKER") }',
    "attention a { mask(i, j) = j <= i }  __import__('os').system('touch MARKER')",
    'attention a\\\n { mask(i, j) = j <= i }',
    "attention a { size w = 1 # '; import os; os.system('touch MARKER') #\n mask(i, j) = j <= i }",
    'attention a { param t["); import os; os.system(\'touch MARKER\'); ("] = 0 }',
    "attention a { size x\\u0027 = 1 }",
    'attention a { mask(i, j) = j <= i """ }',
    "attention a { score(i, j) = dot(q[i], k[j]) * scale + 1e999999 }",
]


@pytest.mark.parametrize("text", SMUGGLE)
def test_smuggled_code_never_runs(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        comp = build(text)
    except SpecError:
        comp = None
    assert not (tmp_path / "MARKER").exists()
    if comp is not None:  # it compiled: the comment carried nothing into the generated code
        for source in generated_files(comp).values():
            assert "MARKER" not in source and "import os" not in source


def test_generated_code_contains_only_template_text_and_spec_identifiers():
    plain = build("attention a { size w = 3  mask(i, j) = abs(i - j) <= w }")
    decorated = build("# header ' \" \\\\ \n attention a {\n size w = 3 # \"\"\" '''\n"
                      " mask(i, j) = abs(i - j) <= w # trailing\n}\n")
    assert generated_files(plain) == generated_files(decorated)
