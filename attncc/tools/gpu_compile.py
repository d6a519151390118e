"""The GPU compile gate: the generated Triton kernels compiled for sm_80 / sm_90 on a machine without a GPU.

Triton compiles for a named target with no device present: `triton.compile(ASTSource(fn, signature,
constexprs, attrs), target=GPUTarget("cuda", 90, 32), options)` runs the whole pipeline (TTIR, TTGIR,
LLVM IR, PTX, and a cubin from Triton's bundled ptxas). This module feeds it what the launchers really
launch and reads back what a GPU engineer checks first:

  record_launches(cls, dtype, head_dim)   runs a compiled module's Triton forward and backward on small
      CPU tensors with every kernel launch intercepted and nothing executed; tuned launches go through
      a tuner that launches every CUDA candidate of their kind (attncc.runtime.autotune), and
      `autotune.on_gpu` takes the CUDA branch of the launchers. Each launch is recorded with the
      argument types and constexprs the launcher passed (not restated by hand), its warps and stages.
  compile_launch(launch, target)          that kernel compiled for the target (not interpreted, whatever
      TRITON_INTERPRET says: the generated module is loaded a second time with interpretation off, in
      a worker process when this one imported Triton for its interpreter, whose own library functions,
      tl.sum or tl.max, are then interpreted ones the code generator cannot take).
  Compiled                                registers, spill bytes and stack (`ptxas -v`), shared memory
      against the target's per-block limit, and what each tl.dot became: wgmma (sm_90), mma (tensor
      cores) or fma (no tensor cores).

Compiled kernels are cached for the process (and by Triton on disk), keyed by source and launch.
"""
from __future__ import annotations

import importlib.util
import io
import inspect
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..runtime import autotune
from ..runtime.autotune import Tuner
from .compare import make_module, random_inputs


@dataclass(frozen=True)
class Target:
    name: str
    capability: int
    smem_limit: int  # bytes of shared memory one block may use (the opt-in maximum)
    tensor_core: str  # what a tensor-core tl.dot becomes on it

    @property
    def ptxas_arch(self) -> str:
        return f"sm_{self.capability}a" if self.capability >= 90 else f"sm_{self.capability}"


TARGETS = {"sm_80": Target("sm_80", 80, 163 * 1024, "mma"), "sm_90": Target("sm_90", 90, 227 * 1024, "wgmma")}
# torch dtypes as Triton names them in signatures
TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64",
                torch.int8: "i8", torch.int16: "i16", torch.int32: "i32", torch.int64: "i64", torch.uint8: "u8",
                torch.bool: "i1"}
LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


@dataclass(frozen=True)
class Launch:
    """One kernel launch as a launcher made it: what compiling it for a GPU needs, and where it came from."""
    kernel: str
    signature: tuple  # ((argument, Triton type or "constexpr"), ...) in parameter order
    constexprs: tuple  # ((argument, value), ...)
    divisible: tuple  # arguments Triton's launcher marks divisible by 16 (aligned pointers, ints)
    options: tuple  # ((num_warps, 4), (num_stages, 3), ...) as passed
    kind: str | None = None  # the autotune kind it was launched under, None for a fixed launch
    candidate: int | None = None  # its index among the kind's candidates for these head rows (0: default)
    backward: bool = False  # launched by the backward pass

    @property
    def default(self) -> bool:
        """Launched with the configuration used when tuning is off: candidate 0, or a fixed launch."""
        return self.candidate in (0, None)

    @property
    def config(self) -> dict:
        """The launch configuration: tile constexprs and options (what a candidate chooses)."""
        shown = {n: v for n, v in self.constexprs if n.startswith("BLOCK")}
        return {**shown, **dict(self.options)}

    def compile_key(self) -> tuple:
        return self.kernel, self.signature, self.constexprs, self.divisible, self.options


def argument_type(value) -> tuple[str, bool]:
    """(Triton signature type, divisible by 16) of a launch argument, as Triton's launcher specializes it:
    tensors become typed pointers; the int 1 and None become constexprs."""
    if isinstance(value, torch.Tensor):
        return "*" + TRITON_TYPES[value.dtype], value.data_ptr() % 16 == 0
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value == 1):
        return "constexpr", False
    if isinstance(value, bool):
        return "i1", False
    if isinstance(value, int):
        return ("i32" if -2**31 <= value < 2**31 else "i64"), value % 16 == 0
    if isinstance(value, float):
        return "fp32", False
    raise TypeError(f"a kernel argument of type {type(value).__name__} ({value!r})")


def describe_launch(fn, args: tuple, kwargs: dict, kind=None, candidate=None, backward=False) -> Launch:
    """The Launch of `fn[grid](*args, **kwargs)`; fn is the Python function under the JIT decorator."""
    params = inspect.signature(fn).parameters
    options = tuple((k, kwargs[k]) for k in LAUNCH_OPTIONS if k in kwargs)
    bound = inspect.signature(fn).bind(*args, **{k: v for k, v in kwargs.items() if k not in LAUNCH_OPTIONS})
    bound.apply_defaults()
    signature, constexprs, divisible = [], [], []
    for name, value in bound.arguments.items():
        annotation = params[name].annotation
        is_constexpr = "constexpr" in str(annotation)
        kind_of, aligned = ("constexpr", False) if is_constexpr else argument_type(value)
        signature.append((name, kind_of))
        if kind_of == "constexpr":
            constexprs.append((name, value))
        elif aligned:
            divisible.append(name)
    return Launch(fn.__name__, tuple(signature), tuple(constexprs), tuple(divisible), options, kind, candidate,
                  backward)


# ---------------------------------------------------------------------- recording
class _Recorder:
    """Stands in for a kernel object of a generated module: `kernel[grid](...)` records, runs nothing."""

    def __init__(self, kernel, sweep: "_Sweep"):
        self.fn, self.sweep = kernel.fn, sweep

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.sweep.record(self.fn, args, kwargs)


class _Sweep(Tuner):
    """A tuner that launches every CUDA candidate of a kind for the launch's head rows, then answers
    the default; launches are recorded with the kind and candidate they ran under."""

    records_gpu_launches = True

    def __init__(self):
        super().__init__()
        self.launches: dict[tuple, Launch] = {}
        self.current: tuple = (None, None)
        self.backward = False  # set while the backward pass runs

    def best(self, spec_hash, kind, q, sizes, launch, row_itemsize=None, pair_lookups=False):
        candidates = autotune.candidates(kind, q, sizes, row_itemsize, pair_lookups)
        for index, config in enumerate(candidates):
            self.current = (kind, index)
            launch(**config)
        self.current = (None, None)
        return candidates[0]

    def record(self, fn, args, kwargs) -> None:
        launch = describe_launch(fn, args, kwargs, *self.current, self.backward)
        self.launches.setdefault(launch.compile_key(), launch)  # a repeat keeps its first (tuned) record


def _kernel_objects(module) -> dict:
    """The module's kernels and Triton functions (JITFunction, or InterpretedFunction under the interpreter)."""
    from triton.runtime.jit import KernelInterface
    return {n: obj for n, obj in vars(module).items() if isinstance(obj, KernelInterface)}


@contextmanager
def _intercepted(kernels_module, sweep: _Sweep):
    originals = _kernel_objects(kernels_module)
    try:
        for name, obj in originals.items():
            setattr(kernels_module, name, _Recorder(obj, sweep))
        with autotune.tuning_with(sweep):
            yield sweep
    finally:
        for name, obj in originals.items():
            setattr(kernels_module, name, obj)


GQA_HEADS = 4  # query heads of a grouped-query recording (kv_heads key/value heads)


def record_launches(cls, dtype: torch.dtype, head_dim: int, tokens: int = 256, backward: bool = True,
                    kv_heads: int | None = None) -> list[Launch]:
    """Every kernel launch of a forward (and backward) of compiled class `cls` at this dtype and head
    dim, with every autotune candidate; CPU tensors, no kernel runs (outputs are left unwritten).
    kv_heads: grouped-query attention, GQA_HEADS query heads over k, v of kv_heads heads (the kernels'
    GROUP constexpr GQA_HEADS // kv_heads); None: 2 heads, k and v as many."""
    heads = 2 if kv_heads is None else GQA_HEADS
    module = make_module(cls, heads=heads, dim=head_dim, dim_v=head_dim, seed=0)
    module.backend = "triton"
    q, k, v, inputs = random_inputs(cls, 1, heads, tokens, tokens, head_dim, head_dim)
    k, v = (t[:, :kv_heads or heads].contiguous() for t in (k, v))
    q, k, v = (t.to(dtype).requires_grad_(backward) for t in (q, k, v))
    with _intercepted(module.triton_kernels(), _Sweep()) as sweep:
        out = module(q, k, v, **inputs)
        sweep.backward = True
        if backward and out.requires_grad:
            torch.autograd.grad(out, (q, k, v), torch.ones_like(out), allow_unused=True)
    return list(sweep.launches.values())


# ---------------------------------------------------------------------- compiling
@contextmanager
def _not_interpreted():
    from triton import knobs
    saved = knobs.runtime.interpret
    knobs.runtime.interpret = False
    try:
        yield
    finally:
        knobs.runtime.interpret = saved


@contextmanager
def _ptxas_log():
    """Inside: Triton compiles afresh (its disk cache would skip ptxas) and prints its own ptxas -v log,
    which is caught into the yielded buffer: the registers and spills of the cubin it really made."""
    from triton import knobs
    saved = knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log
    knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = True, True
    log = io.StringIO()
    try:
        with redirect_stdout(log):
            yield log
    finally:
        knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = saved


_JIT_MODULES: dict[str, object] = {}


def jit_module(kernels_file: str):
    """The generated kernels module at this path loaded again with interpretation off (its kernels are
    JITFunctions, which triton.compile takes), once per process."""
    if kernels_file not in _JIT_MODULES:
        spec = importlib.util.spec_from_file_location(f"{Path(kernels_file).stem}_gpu_compile", kernels_file)
        module = importlib.util.module_from_spec(spec)
        with _not_interpreted():
            spec.loader.exec_module(module)
        _JIT_MODULES[kernels_file] = module
    return _JIT_MODULES[kernels_file]


@dataclass(frozen=True)
class Dot:
    operand: str  # element type of the operands: bf16, f16, f32...
    unit: str  # wgmma, mma or fma

    @property
    def on_tensor_cores(self) -> bool:
        return self.unit != "fma"


@dataclass(frozen=True)
class Compiled:
    launch: Launch
    target: Target
    registers: int
    spill_stores: int
    spill_loads: int
    stack: int
    shared: int
    dots: tuple  # Dot per tl.dot of the TTGIR
    asm: dict  # stage name -> text (ttgir, ptx)

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads

    @property
    def smem_fits(self) -> bool:
        return self.shared <= self.target.smem_limit

    def problems(self) -> list[str]:
        """Why this kernel fails the gate: shared memory over the limit, spills in a default forward
        configuration, a half-precision dot off the tensor cores."""
        out = []
        if not self.smem_fits:
            out.append(f"shared memory {self.shared} B over the {self.target.name} limit {self.target.smem_limit} B")
        if self.launch.default and not self.launch.backward and self.spills:
            out.append(f"spills {self.spill_stores} B stores / {self.spill_loads} B loads in a default forward "
                       "configuration")
        out += [f"a {d.operand} tl.dot fell back to FMA" for d in self.dots
                if d.operand in ("bf16", "f16") and not d.on_tensor_cores]
        return out

    def summary(self) -> str:
        counts = Counter((d.operand, d.unit) for d in self.dots)
        dots = ", ".join(f"{n} {unit} ({op})" for (op, unit), n in counts.items()) or "no tl.dot"
        return (f"{self.launch.kernel} {self.target.name} {_config_text(self.launch)}: {self.registers} registers, "
                f"spills {self.spill_stores}/{self.spill_loads} B (stores/loads), shared {self.shared / 1024:.1f} of "
                f"{self.target.smem_limit // 1024} KB; dots: {dots}")


def _config_text(launch: Launch) -> str:
    config = " ".join(f"{k.removeprefix('num_')}={v}" for k, v in launch.config.items())
    return f"[{config}]" + (f" candidate {launch.candidate} of {launch.kind}" if launch.kind else " fixed")


_COMPILED: dict[tuple, Compiled] = {}


def compile_launch(kernels_file: str, launch: Launch, target: Target) -> Compiled:
    """`launch` compiled for `target` (cached for the process by its source file and launch)."""
    key = (kernels_file, launch.compile_key(), target.name)
    if key not in _COMPILED:
        here = not _interpreted_triton()
        _COMPILED[key] = compile_here(kernels_file, launch, target) if here else \
            _worker().submit(compile_here, kernels_file, launch, target, True).result()
    return replace(_COMPILED[key], launch=launch)  # the same kernel, reported under this launch


def _interpreted_triton() -> bool:
    """Whether this process's Triton library functions are the interpreter's (imported under TRITON_INTERPRET=1)."""
    import triton.language.standard as standard
    from triton.runtime.jit import JITFunction
    return not isinstance(standard.sum, JITFunction)


_WORKER: list[ProcessPoolExecutor] = []


def _worker() -> ProcessPoolExecutor:
    """One process that compiles: spawned with TRITON_INTERPRET=0 in its environment, so that whatever
    imports Triton there first (the main module re-imported by spawn, too) gets the compiler."""
    if not _WORKER:
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        saved = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "0"
        try:
            pool.submit(_interpreted_triton).result()  # starts the process now, under this environment
        finally:
            if saved is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = saved
        _WORKER.append(pool)
    return _WORKER[0]


def compile_here(kernels_file: str, launch: Launch, target: Target, portable_errors: bool = False) -> Compiled:
    """`launch` compiled in this process (whose Triton must not be the interpreter's); portable_errors:
    a compile error is raised as a RuntimeError with its text (Triton's own may not pickle)."""
    try:
        return _compile(jit_module(kernels_file), launch, target)
    except Exception as exc:
        if not portable_errors:
            raise
        raise RuntimeError(f"{type(exc).__name__}: {exc}") from None


def _compile(module, launch: Launch, target: Target) -> Compiled:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    fn = getattr(module, launch.kernel)
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in launch.divisible}
    source = ASTSource(fn, signature=dict(launch.signature), constexprs=dict(launch.constexprs), attrs=attrs)
    with _not_interpreted(), _ptxas_log() as log:
        kernel = triton.compile(source, target=GPUTarget("cuda", target.capability, 32), options=dict(launch.options))
    ptx, ttgir = kernel.asm["ptx"], kernel.asm["ttgir"]
    usage = ptxas_usage(log.getvalue() if "Used" in log.getvalue() else run_ptxas(ptx, target))
    return Compiled(launch, target, usage["registers"], usage["spill_stores"], usage["spill_loads"], usage["stack"],
                    int(kernel.metadata.shared), tuple(dots_of(ttgir)), {"ttgir": ttgir, "ptx": ptx})


def ptxas_path(capability: int) -> str:
    """The ptxas Triton itself assembles this target's PTX with (it ships more than one)."""
    from triton.backends.nvidia import compiler
    return compiler.get_ptxas(capability).path


def run_ptxas(ptx: str, target: Target) -> str:
    """The `ptxas -v` log of the PTX (when Triton printed none of its own)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        run = subprocess.run([ptxas_path(target.capability), "-v", f"--gpu-name={target.ptxas_arch}", str(src),
                              "-o", str(Path(tmp) / "kernel.cubin")], capture_output=True, text=True, check=True)
    return run.stderr + run.stdout


def ptxas_usage(log: str) -> dict:
    """Registers, spill stores / loads and stack frame bytes of a kernel, from its `ptxas -v` log."""
    def number(pattern: str) -> int:
        found = re.search(pattern, log)
        return int(found.group(1)) if found else 0
    return {"registers": number(r"Used (\d+) registers"), "spill_stores": number(r"(\d+) bytes spill stores"),
            "spill_loads": number(r"(\d+) bytes spill loads"), "stack": number(r"(\d+) bytes stack frame")}


_DOT = re.compile(r"=\s*(tt\.dot|ttng\.warp_group_dot|ttng\.tc_gen5_mma)\s.*?:\s*(?:tensor|!ttg\.memdesc)<[\dx]*x(\w+?)[,>]")


def dots_of(ttgir: str) -> list[Dot]:
    """What each tl.dot of a TTGIR became: wgmma (warp_group_dot), mma (an #mma result layout), or fma."""
    out = []
    for line in ttgir.splitlines():
        found = _DOT.search(line)
        if found is None:
            continue
        op, operand = found.groups()
        if op != "tt.dot":
            unit = "wgmma" if op == "ttng.warp_group_dot" else "tcgen05"
        else:
            unit = "mma" if re.search(r"->\s*tensor<[^>]*#mma", line) else "fma"
        out.append(Dot(operand, unit))
    return out


def kernels_path(cls) -> str:
    """The path of a compiled class's generated Triton kernels module (beside its main module)."""
    main = Path(sys.modules[cls.__module__].__file__)
    return str(main.with_name(main.stem + "_triton.py"))


def gate(cls, targets, dtypes, head_dims, backward: bool = True) -> list[Compiled]:
    """Every recorded launch of `cls` compiled for every target, dtype and head dim."""
    path = kernels_path(cls)
    out = []
    for dtype in dtypes:
        for d in head_dims:
            for launch in record_launches(cls, dtype, d, backward=backward):
                out += [compile_launch(path, launch, TARGETS[t] if isinstance(t, str) else t) for t in targets]
    return out


def report(name: str, compiled: list[Compiled], emit: str = "resources") -> str:
    """`attncc inspect --emit resources`: one line per kernel and configuration, the gate's verdict;
    ptx / ttgir: the assembly of each kernel's default configuration."""
    if emit in ("ptx", "ttgir"):
        defaults = [c for c in compiled if c.launch.default]
        return "".join(f"// ===== {c.summary()}\n{c.asm[emit]}\n" for c in defaults)
    if not compiled:
        return f"{name}: no Triton kernel (its Triton backend runs torch)\n"
    lines = [f"{name}: {len(compiled)} kernel compilations"]
    for c in compiled:
        problems = c.problems()
        lines.append(f"  {c.summary()}" + (f"\n    FAILS: {'; '.join(problems)}" if problems else ""))
    return "\n".join(lines) + "\n"
