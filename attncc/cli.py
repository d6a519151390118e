"""The `attncc` command: compile, inspect and check specs."""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

BACKEND_RUNS = [("torch", "float32"), ("torch", "float64"), ("torch", "bfloat16"),
                ("triton", "float32"), ("triton", "float16"), ("triton", "bfloat16")]
CHECK_SHAPES = [(37, 37), (1, 1), (20, 45), (45, 20), (130, 130)]
# grouped-query attention (k, v of Hkv heads dividing q's H): (Nq, N, H, Hkv) checked in GQA_BACKENDS too
GQA_SHAPES = [(37, 37, 4, 2), (45, 20, 3, 1), (100, 100, 4, 1)]
MAX_SEED = 2**32  # seeds are drawn into torch generators (64-bit) with offsets added: 32 bits leave room


class UsageError(Exception):
    """An argument the command cannot use (a bad path, option value or device): exit code 2, as for
    argparse's own errors."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_in(text, 1, None, "a positive integer")


def seed(text: str) -> int:
    """argparse type: a seed in [0, 2^32)."""
    return _int_in(text, 0, MAX_SEED, "an integer in [0, 2**32)")


def _int_in(text: str, low: int, high: int | None, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if value < low or (high is not None and value >= high):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def spec_argument(text: str) -> str | Path:
    """A SPEC argument: spec text if it holds `{`, else a spec file (whatever its suffix)."""
    if "{" in text:
        return text
    path = Path(text)
    if path.is_dir():
        raise UsageError(f"{text}: is a directory, not a spec file", "name a .attn file")
    if not path.exists():
        raise UsageError(f"{text}: no such spec file", "name a .attn file, or pass spec text (it holds `{`)")
    return path


def output_file(text: str, option: str) -> Path:
    """A file the command will write: not a directory, and no file stands where its folder must be."""
    path = Path(text)
    if path.is_dir():
        raise UsageError(f"{option} {text}: is a directory", "name a file to write")
    _no_file_in_the_way(path.parent, text, option, "name a file in a folder")
    return path


def output_folder(text: str, option: str) -> Path:
    """A folder the command will write into, made if missing."""
    path = Path(text)
    _no_file_in_the_way(path, text, option, "name a folder (it is made if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{option} {text}: cannot create the folder: {exc.strerror or exc}") from None
    return path


def _no_file_in_the_way(folder: Path, text: str, option: str, hint: str) -> None:
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"{option} {text}: {existing} is not a folder", hint)


def write_output(path: Path, text: str, option: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise UsageError(f"{option}: cannot write {path}: {exc.strerror or exc}") from None


def device_argument(requested: str | None) -> str:
    """The device to run on: the one asked for (cpu or cuda) if this machine has it, else the best one here."""
    import torch
    if requested == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here",
                         "use --device cpu (Triton kernels then run in Triton's interpreter)")
    return requested or ("cuda" if torch.cuda.is_available() else "cpu")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attncc", description="A compiler for attention mechanisms.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compile", help="write the generated modules of a spec: <name>.py and <name>_triton.py")
    c.add_argument("spec")
    c.add_argument("-o", "--out", default=".", help="output directory (default: .)")
    c.add_argument("--lowering", help="force a lowering (tiled, linear, linear_chunked, fft)")
    i = sub.add_parser("inspect", help="print one stage of the pipeline")
    i.add_argument("spec")
    i.add_argument("--stage", choices=["ast", "ir", "optimized", "plan"], default="plan")
    i.add_argument("--emit", choices=["triton", "torch", "module", "ir", "dot", "mask-png", "ptx", "ttgir", "resources"],
                   help="print generated source (triton, torch, module) or the stage's graph (ir, dot); "
                        "mask-png draws the kept pairs and the visited tiles (needs matplotlib); ptx, ttgir: "
                        "the Triton kernels compiled for --target (no GPU needed); resources: registers, spills, "
                        "shared memory and tensor-core use of every kernel and autotune candidate")
    i.add_argument("--target", choices=["sm_80", "sm_90"], default="sm_90", help="ptx, ttgir, resources: the GPU")
    i.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16",
                   help="ptx, ttgir, resources: the dtype of q, k, v (default: bfloat16)")
    i.add_argument("--head-dim", type=positive_int, default=64, help="ptx, ttgir, resources: d = e (default: 64)")
    i.add_argument("--lowering")
    i.add_argument("-o", "--out", help="mask-png: the PNG file (default: <name>-mask.png)")
    i.add_argument("--tokens", type=positive_int, default=64, help="mask-png: the length N drawn (default: 64)")
    i.add_argument("--size", action="append", default=[], metavar="NAME=VALUE",
                   help="override a spec size, or a design size of the plan (B, H, Nq, N, D, E)")
    k = sub.add_parser("check", help="run every backend against the dense reference")
    k.add_argument("specs", nargs="+")
    k.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    k.add_argument("--lowering")
    k.add_argument("--seed", type=seed, default=0)
    f = sub.add_parser("fuzz", help="random masks and biases (or your spec family with ?? holes) vs the reference")
    f.add_argument("specs", nargs="*", help="specs or families with `??`, `??grid(w)`, `??ring(w)` holes (default: mask + bias, "
                   "grid and ring families)")
    f.add_argument("--examples", type=positive_int, default=200)
    f.add_argument("--seed", type=seed, default=0)
    f.add_argument("--out", default="fuzz-failure.attn", help="where a shrunk failing spec is written")
    b = sub.add_parser("bench", help="time specs against SDPA, FlexAttention, fla and naive torch (attncc.benchmark)")
    b.add_argument("specs", nargs="+", help="spec files; PATH@lowering forces a lowering, PATH:kv=HKV calls it "
                   "with k, v of HKV heads (grouped-query attention)")
    b.add_argument("--device", choices=["cpu", "cuda"],
                   help="cuda (Triton backend, do_bench) or cpu (torch backend vs naive); default: cuda if available")
    b.add_argument("--dims", default="64,128", help="head dims d (= e)")
    b.add_argument("--lengths", default="1024,4096,16384,65536", help="token counts N, run in this order")
    b.add_argument("--batch", type=positive_int, default=4)
    b.add_argument("--heads", type=positive_int, default=16)
    b.add_argument("--kv-heads", type=positive_int, default=0, help="k, v heads for specs without :kv= "
                   "(dividing --heads); default: --heads")
    b.add_argument("--dtype", default="", help="default: bfloat16 on CUDA, float32 on the CPU")
    b.add_argument("--baselines", default="sdpa,flex,fla,naive,fft")
    b.add_argument("--size", action="append", default=[], metavar="NAME=VALUE", help="override a spec size")
    b.add_argument("--backward", action="store_true", help="also time forward + backward")
    b.add_argument("--budget", type=float, help="seconds for the run; cases after it are reported as not run")
    b.add_argument("--min-run-time", type=float, default=0.2, help="CPU timer: seconds per measurement")
    b.add_argument("--dry-run", action="store_true", help="list the cases and implementations, run nothing")
    b.add_argument("-o", "--out", default="bench.json", help="JSON results; the markdown table goes beside it (.md)")
    return p


def _interpret_triton(device: str) -> None:
    """On the CPU, Triton kernels run in Triton's interpreter; this must precede the first @triton.jit."""
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")


def _stage_graph(comp, stage):
    return comp.optimized if stage in ("optimized", "plan") else comp.ir


def cmd_compile(args) -> int:
    from .api import build, generated_files
    out = output_folder(args.out, "-o")
    comp = build(spec_argument(args.spec), lowering=args.lowering)
    for name, source in generated_files(comp).items():
        write_output(out / name, source, "-o")
        print(f"{out / name}")
    lowerings = {comp.checked.name: comp} if not hasattr(comp, "maps") else comp.maps
    print(f"{comp.checked.name}: " + ", ".join(f"{'map ' + n + ' ' if n != comp.checked.name else ''}lowering "
                                               f"{c.plan.lowering}" for n, c in lowerings.items())
          + f" ({comp.spec_hash})")
    return 0


def inspect_mask_png(args) -> int:
    from .tools.compare import parse_sizes
    from .tools.pictures import mask_png
    spec = spec_argument(args.spec)
    out = output_file(args.out or f"{Path(args.spec).stem}-mask.png", "-o")
    try:
        sizes = parse_sizes(args.size)
    except ValueError as exc:
        raise UsageError(f"--size: {exc}") from None
    try:
        pic = mask_png(spec, out, args.tokens, sizes, args.lowering)
    except OSError as exc:
        raise UsageError(f"-o: cannot write {out}: {exc.strerror or exc}") from None
    tiles = "no score tiles" if pic.tiles is None else "{} of {} tiles visited".format(*pic.tiles.fraction)
    print(f"{out}: {pic.name} at N = {args.tokens}, lowering {pic.lowering}: {tiles}")
    return 0


def inspect_gpu(args) -> int:
    """--emit ptx|ttgir|resources: the kernels compiled for a GPU target from their real launches."""
    import torch
    from .api import compile as compile_spec
    from .tools.gpu_compile import TARGETS, gate, report
    cls = compile_spec(args.spec, lowering=args.lowering)
    for part in getattr(cls, "MAPS", {}).values() or [cls]:  # a composed spec: each map's kernels
        compiled = gate(part, [TARGETS[args.target]], [getattr(torch, args.dtype)], [args.head_dim])
        print(report(part.SPEC_NAME, compiled, args.emit), end="")
    return 0


def cmd_inspect(args) -> int:
    if args.emit == "mask-png":
        return inspect_mask_png(args)
    if args.emit in ("ptx", "ttgir", "resources"):
        return inspect_gpu(args)
    from .api import build
    from .tools.compare import parse_sizes
    try:
        sizes = parse_sizes(args.size)
    except ValueError as exc:
        raise UsageError(f"--size: {exc}") from None
    comp = build(spec_argument(args.spec), lowering=args.lowering, sizes=sizes)
    if not hasattr(comp, "maps"):
        return _inspect_one(args, comp)
    print(f"# {comp.checked.name}: output = {comp.checked.output}")
    if args.emit == "module":
        print(comp.module_source)
    for name, part in comp.maps.items():
        print(f"\n# {'=' * 24} map {name} (compiled as the spec `{part.checked.name}`) {'=' * 24}")
        _inspect_one(args, part)
    return 0


def _inspect_one(args, comp) -> int:
    """One compiled spec's stage or generated source (a map's, for a composed spec)."""
    from .frontend.ast import format_spec
    from .emit.triton_backward import backward_line
    from .plan.gradients import torch_backward_line
    from .ir.graph import print_graph, to_dot
    from .runtime.backends import cuda_triton_available
    from .plan.select import format_plan
    if args.emit in ("triton", "torch", "module"):
        print({"triton": comp.triton_source, "torch": comp.torch_source, "module": comp.module_source}[args.emit],
              end="")
        return 0
    if args.emit in ("ir", "dot") or args.stage in ("ir", "optimized"):
        graph = _stage_graph(comp, args.stage)
        print(to_dot(graph) if args.emit == "dot" else print_graph(graph))
        if args.stage == "optimized" and args.emit != "dot":
            print("\n".join(f"# [{name}] {msg}" for name, msg in comp.log))
        return 0
    if args.stage == "ast":
        print(format_spec(comp.ast))
        return 0
    print(format_plan(comp.plan, comp.log))
    here = "triton" if cuda_triton_available() else "torch"
    print(f"backend auto: triton on a CUDA device, torch elsewhere (here: {here})")
    print(f"triton lowering: {comp.triton_description.split('; backward: ')[0]}")
    print(f"triton backward: {backward_line(comp.optimized, comp.plan)}")
    print(f"torch backward: {torch_backward_line(comp.plan.lowering)}")
    return 0


def _approximation_error(cls, seed: int) -> str:
    """How far a declared approximation is from its exact target on random inputs (eval mode)."""
    import torch
    from .tools.compare import make_module, random_inputs
    module = make_module(cls, heads=3, dim=24, dim_v=20, seed=seed).eval()
    q, k, v, inputs = random_inputs(cls, 2, 3, 256, 256, 24, 20, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():  # an estimate printed as a number: no graph to keep
        approx, exact = module.reference(q, k, v, **inputs), module.target(q, k, v, **inputs)
    rel = ((approx - exact).norm(dim=-1) / exact.norm(dim=-1).clamp_min(1e-30)).mean()
    return (f"  approximation {cls.compilation.checked.approx}: mean relative row error vs exact softmax "
            f"{float(rel):.3f} at N = 256 on Gaussian inputs (an estimate, not a tolerance; see "
            f"benchmarks/approximation.py for real inputs)")


def clamp_warnings(cls, seed: int) -> list[str]:
    """The table lookups of a compiled spec that clamp an index on `check`'s inputs: the language
    clamps silently (docs/language.md, section 13), so `check` says where, once per lookup index."""
    import torch
    from .tools.compare import make_module, random_inputs, rows_beyond_input
    found: dict[str, str] = {}
    for nq, nk in CHECK_SHAPES:
        if cls.GRAPHS and nq != nk or rows_beyond_input(cls, nq, nk) is not None:
            continue
        module = make_module(cls, heads=3, dim=24, dim_v=20, seed=seed)
        q, k, v, inputs = random_inputs(cls, 2, 3, nq, nk, 24, 20,
                                        generator=torch.Generator().manual_seed(seed + nq * 1000 + nk))
        for line in module.clamped_lookups(q, k, v, **inputs):
            found.setdefault(line.split(" is ")[0], f"{line} (Nq x N = {nq} x {nk}); write the clamp in the spec "
                             "(`clamp(x, 0, n - 1)`) if it is meant, or pass check_bounds=True to raise")
    return list(found.values())


def cmd_check(args) -> int:
    import torch
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    device = device_argument(args.device)
    specs = [spec_argument(s) for s in args.specs]
    _interpret_triton(device)
    from .api import compile as compile_spec
    from .tools.compare import GQA_BACKENDS, compare, make_module, random_inputs, rows_beyond_input, triton_runnable

    console = Console()
    failed = 0
    for spec in specs:
        cls = compile_spec(spec, lowering=args.lowering)
        if getattr(cls, "MAPS", None):
            console.print(f"[bold]{spec}[/bold]: `{cls.SPEC_NAME}`, output = {escape(cls.OUTPUT)}")
            for name, part in cls.MAPS.items():
                _describe(console, part, f"  map `{name}`: ", "    ", device)
        else:
            _describe(console, cls, f"[bold]{spec}[/bold]: `{cls.SPEC_NAME}`, ", "  ", device)
        table = Table(title=f"{cls.SPEC_NAME}: every backend vs the dense float64 reference")
        for col in ("backend", "dtype", "Nq x N", "H:Hkv", "max error", "tolerance", "result"):
            table.add_column(col)
        for backend, dtype_name in BACKEND_RUNS:
            dtype = getattr(torch, dtype_name)
            if backend == "triton":
                runnable, why = triton_runnable(device)
                if not runnable or (dtype == torch.bfloat16 and device == "cpu"):
                    why = why if not runnable else "interpreter bf16 tl.dot (triton#11584)"
                    table.add_row(backend, dtype_name, "-", "-", "-", "-", f"[yellow]skipped: {why}")
                    continue
            shapes = [(nq, nk, 3, 3) for nq, nk in CHECK_SHAPES]
            shapes += GQA_SHAPES if backend in GQA_BACKENDS else []
            for nq, nk, heads, kv_heads in shapes:
                if cls.GRAPHS and nq != nk:  # a graph relates the same tokens as queries and keys
                    continue
                where = (f"{nq} x {nk}", f"{heads}:{kv_heads}")
                if (why := rows_beyond_input(cls, nq, nk)) is not None:
                    table.add_row(backend, dtype_name, *where, "-", "-", f"[yellow]skipped: {why}")
                    continue
                module = make_module(cls, heads=heads, dim=24, dim_v=20, seed=args.seed, kv_heads=kv_heads)
                gen = torch.Generator().manual_seed(args.seed + nq * 1000 + nk)
                q, k, v, inputs = random_inputs(cls, 2, heads, nq, nk, 24, 20, generator=gen, kv_heads=kv_heads)
                r = compare(module, q, k, v, inputs, backend, dtype, device)
                failed += not r.ok
                table.add_row(backend, dtype_name, *where, f"{r.error:.2e}", f"{r.tolerance:.0e}",
                              "[green]ok" if r.ok else "[red]FAIL")
        console.print(table)
        for line in clamp_warnings(cls, args.seed):
            console.print(f"[yellow]warning:[/yellow] {line}", highlight=False)
        if getattr(cls.checked, "approx", None) is not None:
            console.print(_approximation_error(cls, args.seed), markup=False)
    console.print(f"{'[red]' + str(failed) + ' failed' if failed else '[green]all backends match the reference'}")
    return 1 if failed else 0


def _describe(console, cls, title: str, indent: str, device: str) -> None:
    """What `check` says of a compiled spec (or a map) before its table: analyses and lowering."""
    comp = cls.compilation
    console.print(f"{title}{comp.checked.normalize} attention")
    for name, message in comp.log:
        console.print(f"{indent}[{name}] {message}", markup=False)
    console.print(f"{indent}lowering: {cls.LOWERING} ({comp.plan.chosen.note}); triton: {cls.TRITON_LOWERING}"
                  + ("; run by Triton's interpreter on the CPU" if device == "cpu" else ""), markup=False)


def cmd_fuzz(args) -> int:
    import torch
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    _interpret_triton("cuda" if torch.cuda.is_available() else "cpu")
    from .api import read_source
    from .tools.fuzzing import DEFAULT_FAMILIES, fuzz, write_failure

    families = [read_source(spec_argument(s)).text for s in args.specs] or DEFAULT_FAMILIES
    out = output_file(args.out, "--out")
    runs = [("torch", torch.float32), ("triton", torch.float32)]
    console = Console()
    with Progress(TextColumn("fuzzing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("fuzz", total=args.examples)
        report = fuzz(families, args.examples, runs, args.seed,
                      lambda n: progress.update(task, completed=min(n, args.examples)))
    lowerings = ", ".join(f"{k} {v}" for k, v in sorted(report.lowerings.items()))
    console.print(f"{report.examples} specs run (with shrinking), {report.rejected} rejected by the checker; "
                  f"lowerings: {lowerings or 'none'}", markup=False)
    untested = report.untested()
    if report.failure is None and untested:
        for n, error in untested.items():
            name = args.specs[n] if args.specs else f"default family {n + 1}"
            console.print(f"[red]nothing tested[/red] of {escape(name)}: the checker rejected every spec filled "
                          "from it; its first error:")
            console.print(error, markup=False)
        return 1
    if report.failure is None:
        console.print("[green]no failure: every backend matches the reference")
        return 0
    try:
        write_failure(report, out)
    except OSError as exc:
        raise UsageError(f"--out: cannot write {out}: {exc.strerror or exc}") from None
    console.print(f"[red]failure[/red] ({report.error}); minimal spec written to {out}:")
    console.print(report.failure, markup=False)
    return 1


def cmd_bench(args) -> int:
    device = device_argument(args.device)
    for spec in args.specs:
        spec_argument(str(spec).partition(":kv=")[0].partition("@")[0])
    output_file(args.out, "-o")
    _interpret_triton(device)
    from .tools.benchmark import run_cli
    return run_cli(args, device)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """attncc's own warnings (e.g. the cache falling back) as one plain line; others as Python shows them."""
    text = str(message)
    out = file or sys.stderr
    out.write(f"{text}\n" if text.startswith("attncc: ") else warnings.formatwarning(message, category, filename,
                                                                                   lineno, line))


def main(argv=None) -> int:
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _main(argv)


def _main(argv) -> int:
    from .lang.source import AttnccError
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse's usage errors (exit 2) and --help (0): a code, not an exception
        return exc.code
    try:
        commands = {"compile": cmd_compile, "inspect": cmd_inspect, "check": cmd_check, "fuzz": cmd_fuzz,
                    "bench": cmd_bench}
        return commands[args.command](args)
    except AttnccError as exc:  # a located error in the spec or its sizes: the user's input, as argparse's are
        print(str(exc), file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"attncc {args.command}: error: {exc}" + (f"\n  hint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # never a traceback for users; ATTNCC_DEBUG=1 shows it
        if os.environ.get("ATTNCC_DEBUG"):
            raise
        print(f"attncc: internal error: {type(exc).__name__}: {exc}\n"
              "  hint: this is a bug in attncc; rerun with ATTNCC_DEBUG=1 for the traceback", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
