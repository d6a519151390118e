"""The GPU compile gate: every generated kernel compiled for sm_80 and sm_90 without a GPU (attncc/tools/gpu_compile.py).

The launches are recorded from the real launch path (the module's Triton forward and backward on CPU
tensors, every launch intercepted, every autotune candidate launched), then compiled by Triton for the
target. A kernel fails the gate on a compile error, shared memory over the target's per-block limit,
spills in a default forward configuration (candidate 0 of its autotune kind for the head rows, or a fixed launch),
or a bf16 / fp16 tl.dot that misses the tensor cores. The default suite compiles every example's default
forward launches at two slices (sm_90 bf16 d = 128, sm_80 fp32 d = 64) and a few examples' default
configurations, forward and backward; --slow compiles every example, target, dtype, head dim and candidate.
"""
from __future__ import annotations

import re

import pytest
import torch

import attncc
from attncc.cli import main
from attncc.emit.triton_linear import FMA_VALUE_TILE, VALUE_TILE
from attncc.plan import registry
from attncc.runtime import autotune, tma
from attncc.tools import gpu_compile
from attncc.tools.gpu_compile import GQA_HEADS, TARGETS, Dot, compile_launch, dots_of, kernels_path, record_launches

from .conftest import EXAMPLES, ROOT

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
HEAD_DIMS = (64, 128)
# the default suite: causal's default configurations here, hypercube's every candidate through
# `inspect --emit resources` below (about 50 s on a loaded 2-core machine, 10 s of it spawning the
# compiling process); the linear forward's default below.
FAST = [("causal", "sm_90", "bf16", 128)]


def gate_failures(name: str, target: str, dtype: str, head_dim: int, defaults_only: bool,
                  lowering: str | None = None, kv_heads: int | None = None) -> tuple[list, list]:
    """(compiled kernels, failure lines) of one example (under a forced lowering) at one target, dtype and
    head dim (kv_heads: grouped-query launches, see record_launches)."""
    return class_gate_failures(attncc.compile(ROOT / "examples" / f"{name}.attn", lowering=lowering), target, dtype,
                               head_dim, defaults_only, kv_heads)


def class_gate_failures(cls, target: str, dtype: str, head_dim: int, defaults_only: bool,
                        kv_heads: int | None = None) -> tuple[list, list]:
    """gate_failures of a compiled class."""
    launches = record_launches(cls, DTYPES[dtype], head_dim, kv_heads=kv_heads)
    if defaults_only:
        launches = [launch for launch in launches if launch.default]
    compiled, failures = [], []
    for launch in launches:
        try:
            c = compile_launch(kernels_path(cls), launch, TARGETS[target])
        except Exception as exc:  # noqa: BLE001  (a compile error is a gate failure, reported with the launch)
            failures.append(f"{launch.kernel} {launch.config}: does not compile: {type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ''}")
            continue
        compiled.append(c)
        failures += [f"{c.summary()}: {p}" for p in c.problems()]
    return compiled, failures


@pytest.mark.parametrize("name, target, dtype, head_dim", FAST)
def test_default_configurations_pass_the_gate(name, target, dtype, head_dim):
    compiled, failures = gate_failures(name, target, dtype, head_dim, defaults_only=True)
    assert not failures, "\n".join(failures)
    assert compiled and all(c.registers > 0 for c in compiled)
    if name == "causal":  # the backward's own d = 128 tiles: its dK/dV kernel spilled with the 64 x 64 ones
        assert {c.launch.kernel for c in compiled} == {"_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq"}
        assert all(c.spills == 0 for c in compiled), [c.summary() for c in compiled]
    if dtype in ("bf16", "fp16"):  # every half-precision dot reached the target's tensor cores
        half = [d for c in compiled for d in c.dots if d.operand in ("bf16", "f16")]
        assert half and {d.unit for d in half} <= {TARGETS[target].tensor_core, "mma"}


# (example, dtype, head dim, target, the program's feature columns BLOCK_D, value columns BLOCK_E, split)
LINEAR_FAST = [("linear_elu_causal", "bf16", 128, "sm_80", 128, 32, False),
               # Based's 2145 tensor-power features: 17 feature blocks (the whole width spilled 67 KB, 1 MB of smem)
               ("based", "bf16", 64, "sm_90", 128, 32, True),
               # fp32 rows of 128 features spilled 104 + 84 B: two blocks of 64
               ("linear_elu_causal", "fp32", 128, "sm_80", 64, 16, True)]


@pytest.mark.parametrize("name, dtype, head_dim, target, features, values, split", LINEAR_FAST)
def test_linear_default_forward_does_not_spill(name, dtype, head_dim, target, features, values, split):
    """Regression: the chunked linear forward kept the whole [d, e] fp32 state in one program and spilled
    in its default configuration (19 KB at d = 128 on sm_80); each program now carries one block of
    value columns and one of feature columns."""
    cls = attncc.compile(ROOT / "examples" / f"{name}.attn")
    launches = [launch for launch in record_launches(cls, DTYPES[dtype], head_dim, backward=False) if launch.default]
    assert [launch.kernel for launch in launches] == ["_linear_causal"]
    compiled = compile_launch(kernels_path(cls), launches[0], TARGETS[target])
    constexprs = dict(compiled.launch.constexprs)
    assert (constexprs["BLOCK_D"], constexprs["BLOCK_E"]) == (features, values)
    assert constexprs["SPLIT_D"] is split
    assert compiled.spills == 0 and not compiled.problems(), compiled.summary()


# fp32 feature-mapped rows (emit/rows.py chunked_rows): their whole-row FMA dots spilled 420-876 B in the
# default forward of grid_rpe, ripple, toeplitz_linear on both targets; the dots now take ROW_CHUNK columns a step
# on 32 x 16 tiles with 8 warps (32 x 32 kept 4-8 B of spills at d = 64 on sm_80)
FEATURE_ROWS_FP32 = [("ripple", "sm_80", 64), ("grid_rpe", "sm_90", 128)] + [
    pytest.param(name, target, d, marks=pytest.mark.slow)
    for name in ("grid_rpe", "ripple", "toeplitz_linear") for target in TARGETS for d in HEAD_DIMS
    if (name, target, d) not in (("ripple", "sm_80", 64), ("grid_rpe", "sm_90", 128))]


@pytest.mark.parametrize("name, target, head_dim", FEATURE_ROWS_FP32)
def test_fp32_feature_rows_default_forward_does_not_spill(name, target, head_dim):
    cls = attncc.compile(ROOT / "examples" / f"{name}.attn")
    launches = [launch for launch in record_launches(cls, torch.float32, head_dim, backward=False) if launch.default]
    assert [launch.kernel for launch in launches] == ["_attn_fwd"]
    compiled = compile_launch(kernels_path(cls), launches[0], TARGETS[target])
    constexprs = dict(compiled.launch.constexprs)
    assert constexprs["ROW_CHUNK"] == 16 < constexprs["BLOCK_D"]  # Triton 3.6 wants dots of K >= 16
    assert (constexprs["BLOCK_M"], constexprs["BLOCK_N"], dict(compiled.launch.options)["num_warps"]) == (32, 16, 8)
    assert compiled.spills == 0 and not compiled.problems(), compiled.summary()


def _example_names():
    return [p.stem for p in EXAMPLES]


# grouped-query launches (GQA_HEADS = 4 query heads, one key/value head: the kernels' GROUP = 4): the tiled
# forward and dQ as with H = Hkv; the dK/dV kernel loops over the group's query heads (measured, bf16,
# d = 128: 255 registers and 56 B (sm_80) / 32 B (sm_90) of spills, against 245 / 212 registers and none
# at GROUP = 1: backward spills the gate allows, docs/compile_gate.md)
GQA_FAST = [("causal", "sm_80"), ("causal", "sm_90"), ("linear_elu", "sm_90")]


def grouped_gate(cls, target: str, defaults_only: bool = True) -> list:
    """The grouped-query launches of a compiled class at bf16, d = 128, compiled for target: every kernel
    reading k or v takes GROUP = 4, none fails the gate (no spills in a default forward configuration)."""
    compiled, failures = class_gate_failures(cls, target, "bf16", 128, defaults_only, kv_heads=1)
    assert not failures, "\n".join(failures)
    for c in compiled:  # kernels without K (merges, layout builders with a GROUP of their own) aside
        assert "K" not in dict(c.launch.signature) or dict(c.launch.constexprs)["GROUP"] == GQA_HEADS, c.summary()
    return compiled


@pytest.mark.parametrize("name, target", GQA_FAST)
def test_grouped_query_kernels_pass_the_gate(name, target):
    compiled = grouped_gate(attncc.compile(ROOT / "examples" / f"{name}.attn"), target)
    assert compiled and all(c.spills == 0 for c in compiled if not c.launch.backward), [c.summary() for c in compiled]
    if name == "causal":
        assert {c.launch.kernel for c in compiled} == {"_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq"}


@pytest.mark.slow
@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("name", _example_names())
def test_every_grouped_query_kernel_passes_the_gate(name, target):
    cls = attncc.compile(ROOT / "examples" / f"{name}.attn")
    if getattr(cls, "MAPS", None):  # a composed spec: each map's kernels
        for part in cls.MAPS.values():
            grouped_gate(part, target)
        return
    if cls.lowering_at(256) != cls.LOWERING:  # the lowering a 256-token call runs, as above
        cls = attncc.compile(ROOT / "examples" / f"{name}.attn", lowering=cls.lowering_at(256))
    grouped_gate(cls, target)


def gated_classes(name: str) -> list:
    """The compiled classes whose kernels an example launches at the recorder's 256 tokens: each map of a
    composed spec, else the example (under the lowering its plan runs there, for plans that dispatch by length)."""
    cls = attncc.compile(ROOT / "examples" / f"{name}.attn")
    if getattr(cls, "MAPS", None):
        return list(cls.MAPS.values())
    lowering = cls.lowering_at(256)
    return [cls if lowering == cls.LOWERING else attncc.compile(ROOT / "examples" / f"{name}.attn", lowering=lowering)]


# the default suite's sweep: every example's default forward launches at two slices (half precision on the
# tensor cores, fp32 on FMA units, where the spills were); about a minute each on two cores
EVERY_EXAMPLE_FAST = [("sm_90", "bf16", 128), ("sm_80", "fp32", 64)]
WITHOUT_KERNELS = {"lara", "ra", "vars"}  # their approximations run in torch (emit/triton_approx.py)


@pytest.mark.parametrize("target, dtype, head_dim", EVERY_EXAMPLE_FAST)
def test_every_example_default_forward_passes_the_gate(target, dtype, head_dim):
    failures, launched = [], set()
    for name in _example_names():
        for cls in gated_classes(name):
            for launch in record_launches(cls, DTYPES[dtype], head_dim, backward=False):
                if launch.default:
                    launched.add(name)
                    c = compile_launch(kernels_path(cls), launch, TARGETS[target])
                    failures += [f"{name}: {c.summary()}: {p}" for p in c.problems()]
    assert not failures, "\n".join(failures)
    assert launched == set(_example_names()) - WITHOUT_KERNELS, set(_example_names()) - WITHOUT_KERNELS - launched


@pytest.mark.slow
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("name", _example_names())
def test_every_kernel_and_candidate_passes_the_gate(name, target, dtype, head_dim):
    cls = attncc.compile(ROOT / "examples" / f"{name}.attn")
    if getattr(cls, "MAPS", None):  # a composed spec: the kernels of each map (each its own compiled attention)
        for part in cls.MAPS.values():
            compiled, failures = class_gate_failures(part, target, dtype, head_dim, defaults_only=False)
            assert compiled and not failures, "\n".join(failures)
        return
    # a plan that dispatches by length (gkat: tiled up to N = 2048) runs another lowering at the recorder's
    # 256 tokens, from a sibling module: gate that one here (the primary one is gated under FORCED)
    lowering = cls.lowering_at(256) if cls.lowering_at(256) != cls.LOWERING else None
    if lowering is not None:
        cls = attncc.compile(ROOT / "examples" / f"{name}.attn", lowering=lowering)
    compiled, failures = gate_failures(name, target, dtype, head_dim, defaults_only=False, lowering=lowering)
    assert not failures, "\n".join(failures)
    launched = {c.launch.kernel for c in compiled}
    jitted = set(re.findall(r"@triton\.jit\ndef (_\w+)\(", cls.compilation.triton_source or ""))
    # every generated kernel that takes a grid is launched (helpers are called from kernels, not launched)
    grid_kernels = {k for k in jitted if re.search(rf"\b{k}\[", cls.compilation.triton_source)}
    assert launched == grid_kernels, (launched, grid_kernels)


# lowerings that no example's plan chooses at the gate's 256 tokens, gated through an example forced to
# them, with the kernels they must launch: alibi under decode; gkat's graph lowering (its plan dispatches
# to tiled up to N = 2048), whose _contract spilled 168 B (sm_90) / 240 B (sm_80) at d = 128 with 4 warps
FORCED = [("alibi", "decode", {"_attn_fwd_split", "_attn_merge"}), ("gkat", "graph", {"_contract"})]


@pytest.mark.slow
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("name, lowering, kernels", FORCED)
def test_forced_lowerings_pass_the_gate(name, lowering, kernels, target, dtype, head_dim):
    compiled, failures = gate_failures(name, target, dtype, head_dim, defaults_only=False, lowering=lowering)
    assert not failures, "\n".join(failures)
    assert {c.launch.kernel for c in compiled} >= kernels


# the tiled kernels' USE_TMA variant (the fixed tile and full tiles' rows through tensor descriptors), which
# launchers choose on sm_90 only (attncc/runtime/tma.py): recorded with the feature test forced on
TMA_FAST = [("causal", "bf16", 128)]
TMA_SLOW = [(name, dtype, d) for name in ("causal", "alibi") for dtype in ("bf16", "fp16") for d in HEAD_DIMS]
TMA_SLOW += [(name, "bf16", 128) for name in ("hypercube", "document", "sinks", "sliding_window")]  # layouts, sinks, band
# TMA bulk copies: in the TTGIR (the op's name by Triton version), in the PTX
TMA_TTGIR = re.compile(r"ttng\.async_tma_copy_global_to_local|tt\.descriptor_load")
TMA_PTX = "cp.async.bulk.tensor"


TMA_KERNELS = {"_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq"}  # the kernels with a USE_TMA variant


def tma_gate(name: str, dtype: str, head_dim: int, defaults_only: bool, monkeypatch, kv_heads=None) -> list:
    """The tiled forward and backward kernels of one example recorded with tensor descriptors chosen,
    compiled for sm_90; asserts each passes the gate (no spills in any default configuration, backward
    included) and loads its tiles by TMA. Returns them. kv_heads: grouped-query launches (the dK/dV
    kernel makes the query-side descriptors per query head of its group)."""
    monkeypatch.setattr(tma, "usable", lambda *tensors: True)
    cls = attncc.compile(ROOT / "examples" / f"{name}.attn")
    launches = [launch for launch in record_launches(cls, DTYPES[dtype], head_dim, kv_heads=kv_heads)
                if launch.kernel in TMA_KERNELS and (launch.default or not defaults_only)]
    assert {launch.kernel for launch in launches} == TMA_KERNELS
    assert all(dict(launch.constexprs)["USE_TMA"] is True for launch in launches)
    compiled = [compile_launch(kernels_path(cls), launch, TARGETS["sm_90"]) for launch in launches]
    for c in compiled:
        assert not c.problems() and (c.spills == 0 or not c.launch.default), c.summary()
        assert TMA_TTGIR.search(c.asm["ttgir"]) and TMA_PTX in c.asm["ptx"], c.summary()
        half = {d.unit for d in c.dots if d.operand in ("bf16", "f16")}
        assert half and half <= {"wgmma", "mma"}, c.summary()  # mma where a tile is too small for wgmma
    return compiled


@pytest.mark.parametrize("name, dtype, head_dim", TMA_FAST)
def test_the_tma_variant_compiles_for_sm_90(name, dtype, head_dim, monkeypatch):
    """sm_90 with descriptors, forward and backward: bulk tensor copies, tensor-core dots, no spills,
    shared memory within the limit; the pointer variant (sm_80, the interpreter) has no bulk copy."""
    tma_gate(name, dtype, head_dim, defaults_only=True, monkeypatch=monkeypatch)
    monkeypatch.undo()
    cls = attncc.compile(ROOT / "examples" / f"{name}.attn")
    plain = [launch for launch in record_launches(cls, DTYPES[dtype], head_dim)
             if launch.kernel in TMA_KERNELS and launch.default]
    assert len(plain) == 3 and all(dict(launch.constexprs)["USE_TMA"] is False for launch in plain)
    assert TMA_PTX not in compile_launch(kernels_path(cls), plain[0], TARGETS["sm_90"]).asm["ptx"]


def test_the_grouped_query_tma_variant_compiles_for_sm_90(monkeypatch):
    """GROUP = 4 (measured, causal bf16 d = 128: dK/dV 251 registers, no spills, bulk copies of its k, v
    and of each member's q, dO)."""
    compiled = tma_gate("causal", "bf16", 128, defaults_only=True, monkeypatch=monkeypatch, kv_heads=1)
    assert all(dict(c.launch.constexprs)["GROUP"] == GQA_HEADS for c in compiled)


@pytest.mark.slow
@pytest.mark.parametrize("name, dtype, head_dim", TMA_SLOW)
def test_every_tma_candidate_compiles_for_sm_90(name, dtype, head_dim, monkeypatch):
    tma_gate(name, dtype, head_dim, defaults_only=False, monkeypatch=monkeypatch)


# ---------------------------------------------------------------------- the gate's own parts
def test_recorded_launches_are_the_launchers_with_every_candidate():
    """Forward: one launch per tiled candidate for the head dim; backward: its own kind; the argument
    types are the launcher's (bf16 pointers for q, fp32 for the row statistic, i32 sizes)."""
    cls = attncc.compile(ROOT / "examples" / "alibi.attn")
    launches = record_launches(cls, torch.bfloat16, 128)
    forward = [launch for launch in launches if launch.kernel == "_attn_fwd"]
    assert [launch.config for launch in forward] == [
        {**c, "BLOCK_D": 128, "BLOCK_E": 128} for c in autotune.configs("tiled", 256)] and forward[0].candidate == 0
    assert {launch.kind for launch in launches if launch.kernel.startswith("_attn_bwd")} == {"tiled:backward"}
    signature = dict(forward[0].signature)
    assert signature["Q"] == "*bf16" and signature["Stat"] == "*fp32" and signature["N"] == "i32"
    assert signature["sm_scale"] == "fp32" and signature["BLOCK_M"] == "constexpr"
    assert dict(forward[0].constexprs)["PRECISION"] == "tf32" and "Q" in forward[0].divisible


def test_dot_units_are_read_from_the_ttgir():
    ttgir = """
    %12 = tt.dot %a, %b, %c, inputPrecision = tf32 : tensor<64x64xbf16, #ttg.dot_op<{opIdx = 0, parent = #mma}>> * tensor<64x64xbf16, #ttg.dot_op<{opIdx = 1, parent = #mma}>> -> tensor<64x64xf32, #mma>
    %13 = tt.dot %a, %b, %c : tensor<16x16xf32, #ttg.dot_op<{opIdx = 0, parent = #blocked}>> * tensor<16x16xf32, #ttg.dot_op<{opIdx = 1, parent = #blocked}>> -> tensor<16x16xf32, #blocked>
    %14 = ttng.warp_group_dot %x, %y, %z {inputPrecision = 0 : i32} : !ttg.memdesc<64x64xf16, #shared, #smem> * !ttg.memdesc<64x64xf16, #shared1, #smem> -> tensor<64x64xf32, #mma1>
    """
    assert dots_of(ttgir) == [Dot("bf16", "mma"), Dot("f32", "fma"), Dot("f16", "wgmma")]


def test_a_failing_kernel_is_reported():
    """The gate's verdicts: shared memory over the limit, spills in a default configuration, a half dot on FMA."""
    def compiled(**launch):
        launch = gpu_compile.Launch("_k", (), (), (), (("num_warps", 4),), **launch)
        return gpu_compile.Compiled(launch, TARGETS["sm_80"], 255, 96, 96, 200, 200 * 1024, (Dot("f16", "fma"),), {})
    problems = compiled(kind="tiled", candidate=0).problems()
    assert len(problems) == 3 and "over the sm_80 limit" in problems[0] and "spills" in problems[1]
    assert "fell back to FMA" in problems[2]
    assert len(compiled(kind="tiled", candidate=2).problems()) == 2  # a spilling candidate: the tuner may skip it
    assert len(compiled(backward=True).problems()) == 2  # backward spills are reported, not failed


def test_candidates_are_filtered_by_head_row_bytes():
    """A candidate marked max_row_bytes is offered only up to it; every kind keeps one for any row."""
    for lowering in registry.all():
        for kind in (lowering.name, lowering.name + autotune.BACKWARD):
            declared = autotune.configs(kind)
            if declared:
                assert autotune.configs(kind, 1 << 20), kind
                assert all("max_row_bytes" not in c for c in declared)
    assert len(autotune.configs("tiled", 512)) < len(autotune.configs("tiled", 256)) < len(autotune.configs("tiled", 128))
    assert autotune.row_bytes(dict(D=128, E=64), torch.zeros(1, dtype=torch.bfloat16)) == 256
    # a kernel whose feature maps keep rows in fp32 holds 4 bytes an element whatever q's dtype
    assert autotune.row_bytes(dict(D=128, E=128), torch.zeros(1, dtype=torch.bfloat16), 4) == 512
    # fp32 dots run on FMA units: only the small tiles (64 x 64 spilled kilobytes at d = 64), 32 x 16 with
    # 8 warps by default beyond 256-byte rows (32 x 32 spilled 1.1 KB at d = 128 on sm_90; with 4 warps,
    # mla's 80-wide rows, padded to 128, spilled 440 B at d = 64 on sm_90)
    assert autotune.configs("tiled", 256, half=False) == [dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=2),
                                                          dict(BLOCK_M=32, BLOCK_N=16, num_warps=8, num_stages=2)]
    assert autotune.configs("tiled", 512, half=False) == [dict(BLOCK_M=32, BLOCK_N=16, num_warps=8, num_stages=2)]


def test_fp32_feature_rows_are_counted_in_the_candidates_row_bytes():
    """grid_rpe's relu feature rows are fp32 in its kernels: at d = 128 in bf16 (rows of 512 bytes, not
    256) its launches are offered only the candidates that fit them (the 64 x 64, 8-warp default spilled
    576 B on sm_80); softmax's raw rows keep q's element size."""
    launches = record_launches(attncc.compile(ROOT / "examples" / "grid_rpe.attn"), torch.bfloat16, 128)
    forward = [launch.config for launch in launches if launch.kernel == "_attn_fwd"]
    assert forward == [{**c, "BLOCK_D": 128, "BLOCK_E": 128} for c in autotune.configs("tiled", 512)]
    assert len(autotune.configs("tiled", 512)) < len(autotune.configs("tiled", 256))
    assert "row_itemsize" not in attncc.compile(ROOT / "examples" / "softmax.attn").compilation.triton_source


def test_mapped_rows_and_pair_lookups_filter_the_candidates():
    """Kernels whose feature maps form fp32 rows in the loop are not offered the fp32 32 x 32 tile (it kept
    4-8 B of spills), and kernels that gather a table per (i, j) pair (t5_bias's bias table, softmax_masked's
    input mask) not the largest tiles (176-246 KB of shared memory, 0.2-23 KB of spills)."""
    assert autotune.configs("tiled", 256, half=False, mapped=True) == [
        dict(BLOCK_M=32, BLOCK_N=16, num_warps=8, num_stages=2)]
    tiles = {(c["BLOCK_M"], c["BLOCK_N"], c["num_stages"]) for c in autotune.configs("tiled", 128)}
    kept = {(c["BLOCK_M"], c["BLOCK_N"], c["num_stages"]) for c in autotune.configs("tiled", 128, pairs=True)}
    assert tiles - kept == {(128, 128, 3), (64, 128, 3), (128, 32, 4), (128, 64, 3)}
    t5_bias = attncc.compile(ROOT / "examples" / "t5_bias.attn")
    assert "pair_lookups=True" in t5_bias.compilation.triton_source
    assert "pair_lookups" not in attncc.compile(ROOT / "examples" / "alibi.attn").compilation.triton_source
    forward = [launch.config for launch in record_launches(t5_bias, torch.bfloat16, 64, backward=False)]
    assert forward == [{**c, "BLOCK_D": 64, "BLOCK_E": 64} for c in autotune.configs("tiled", 128, pairs=True)]


def test_inspect_prints_resources_and_ptx(capsys):
    """hypercube at sm_80, fp16, d = 64: every kernel and candidate passes the gate; then the PTX."""
    spec = str(ROOT / "examples" / "hypercube.attn")
    assert main(["inspect", spec, "--emit", "resources", "--target", "sm_80", "--dtype", "float16"]) == 0
    out = capsys.readouterr().out
    assert "_attn_fwd sm_80" in out and "_attn_bwd_dkdv sm_80" in out and "mma (f16)" in out and "FAILS" not in out
    assert out.count("candidate") == len(autotune.configs("block_sparse", 128)) + \
        2 * len(autotune.configs("block_sparse:backward", 128))
    assert main(["inspect", spec, "--emit", "ptx", "--target", "sm_80", "--dtype", "float16"]) == 0
    ptx = capsys.readouterr().out
    assert ".target sm_80" in ptx and "mma.sync.aligned" in ptx and ptx.count("// ===== ") == 3


# ---------------------------------------------------------------------- per-dimension gates (GLA)
class _GlaRecorder:
    """Stands in for the GLA kernels module: `recorder._gla_fwd[grid](...)` records the launch."""

    def __init__(self, module):
        self.module, self.launches, self.backward = module, [], False

    def __getattr__(self, name):
        fn, recorder = getattr(self.module, name).fn, self

        class _Kernel:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: recorder.launches.append(
                    gpu_compile.describe_launch(fn, args, kwargs, backward=recorder.backward))
        return _Kernel()


def gla_launches(tmp_path, dtype, head_dim: int):
    """(kernels file, launches) of the per-dimension gated kernels (attncc/emit/triton_gla.py) as the
    direct launchers of tests/test_gla_triton.py make them: the forward with the linear kernels' value
    columns a program (VALUE_TILE for half inputs, FMA_VALUE_TILE for fp32), the backward whole-width."""
    from .test_gla_triton import kernels_module, launch_backward, launch_forward
    module = kernels_module(tmp_path, "identity", "identity", "none")
    recorder = _GlaRecorder(module)
    q, k, v = (torch.randn(1, 2, 256, head_dim).to(dtype) for _ in range(3))
    gates, out = torch.zeros(1, 2, 256, head_dim), torch.empty_like(v)
    launch_forward(recorder, q, k, v, gates, 1.0, 0.0, value_tile=FMA_VALUE_TILE if dtype == torch.float32 else VALUE_TILE)
    recorder.backward = True
    launch_backward(recorder, q, k, v, gates, out, out, 1.0, 0.0)
    return module.__file__, recorder.launches


GLA_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
GLA_FAST = [("sm_80", 128, "bf16"), ("sm_90", 128, "fp32")]


@pytest.mark.parametrize("target, head_dim, dtype", GLA_FAST + [
    pytest.param(t, d, dt, marks=pytest.mark.slow) for t in TARGETS for d in HEAD_DIMS for dt in GLA_DTYPES
    if (t, d, dt) not in GLA_FAST])
def test_gla_kernels_compile_and_the_forward_does_not_spill(tmp_path, target, head_dim, dtype):
    """Measured (chunks of 16), registers of `_gla_fwd` on sm_80 / sm_90 at d = 128 and 64, no spills:
    bf16 (32 value columns, 4 warps) 228 / 204 and 166 / 145; fp32 (16 value columns, FMA dots, FMA_WARPS = 8)
    224 / 224 and 128 / 128 (with 4 warps: 255 and 364 / 356 B of spills on sm_80 at d = 128, 436 / 448 B
    on sm_90). The whole-width backward spills at d = 128 (bf16 dq 3.9 KB on sm_80, 0.7 KB on sm_90), as
    the gate allows for backward kernels (docs/compile_gate.md)."""
    kernels_file, launches = gla_launches(tmp_path, GLA_DTYPES[dtype], head_dim)
    assert [launch.kernel for launch in launches] == ["_gla_fwd", "_gla_bwd_dq", "_gla_bwd_dkdv"]
    for launch in launches:
        compiled = compile_launch(kernels_file, launch, TARGETS[target])
        assert not compiled.problems(), compiled.summary()
        if not launch.backward:
            assert compiled.spills == 0, compiled.summary()
