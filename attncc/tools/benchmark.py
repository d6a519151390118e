"""`attncc bench`: time compiled specs against the baselines of attncc.baselines, in one run.

For each spec, head dim d (= e) and length N: random normal q [B, H, N, d] and k, v [B, Hkv, N, d]
(Hkv = H unless `PATH:kv=Hkv` or BenchConfig.kv_heads says fewer: grouped-query attention; bf16 on
CUDA, float32 on the CPU), the spec's inputs (bench_inputs), the module (Triton backend on CUDA,
torch backend on the CPU) and every baseline that applies to the spec's family. Forward times are
medians: triton.testing.do_bench on CUDA, torch.utils.benchmark's blocked_autorange on the CPU;
`--backward` adds forward + backward.

  useful flops  2 * pairs * (d + e) where pairs counts the (b, h, i, j) the mask keeps (the
                reference mask, evaluated in row chunks); the dense-equivalent count for kernelized
                specs too, so TFLOP/s compares implementations of one function; x 3.5 for fwd + bwd
  speedup       baseline ms / attncc ms (> 1: attncc is faster)
  rel diff      max |out - attncc| / max |attncc| (a baseline that computes something else shows here)
  bytes/token   CUDA: memory allocated during one call (output included) over B * N tokens
A case that runs out of memory, a baseline that fails to import or run, and cases left when the
time budget is spent are reported as rows with a note, never dropped.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..api import compile as compile_spec
from ..lang.evaluate import Env, evaluate
from . import baselines as bl
from .compare import parse_sizes

BASELINES = ("sdpa", "flex", "fla", "naive", "fft")
SPEC_SIZES = {"sliding_window": {"window": 256}, "block_diagonal": {"chunk": 256},  # issue 5's targets
              "sinks": {"window": 128}}  # GPT-OSS's banded layers
FWD_BWD_FLOPS = 3.5  # backward = 2.5 forwards (two products recomputed or transposed per forward product)


@dataclass
class BenchConfig:
    device: str = "cuda"
    dtype: str = ""  # default: bfloat16 on CUDA, float32 elsewhere
    batch: int = 4
    heads: int = 16
    dims: tuple = (64, 128)
    lengths: tuple = (1024, 4096, 16384, 65536)  # run in this order (put the important ones first)
    baselines: tuple = BASELINES
    backward: bool = False
    budget_s: float | None = None  # seconds for the whole run; later cases are reported as not run
    sizes: dict = field(default_factory=dict)  # spec size overrides, applied where a spec declares them
    doc_len: int = 1000  # tokens per document for `input doc[N]`
    min_run_time: float = 0.2  # CPU timer: seconds per measurement
    seed: int = 0
    kv_heads: int = 0  # heads of k and v for specs without a `:kv=` suffix; 0: q's heads (no grouping)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype or ("bfloat16" if self.device.startswith("cuda") else "float32"))


def instantiate(cls, *, heads: int, tokens: int, dim: int = 64, **kwargs):
    """Cls(...) with the sizes a benchmark shape needs: H (D) for specs whose tables (random features)
    are sized by it, and any `max_*` size raised to cover `tokens` (relative-position tables)."""
    sizes = {n: v for n, v in (("H", heads), ("D", dim)) if n in cls.NEEDS}
    for name, value in cls.SIZES.items():
        if name.startswith("max_") and value < tokens:
            sizes[name] = tokens
    return cls(**sizes, **kwargs)


GATES = ("g", "G")  # float inputs named so are cumulative log-gates (the examples' and fla's convention)
GATE_NORMALIZER = 16  # GLA's gate_logit_normalizer: per-step log-gates logsigmoid(x) / 16, about -0.05


def bench_inputs(cls, batch: int, tokens: int, doc_len: int, device, heads: int = 1, dim: int = 64,
                 dtype=torch.float32, seed: int = 0) -> dict:
    """Call-time inputs, each with its batch axis [B, *declared shape]: `doc` = documents of doc_len
    tokens (the same in every batch row); a float input named g or G = cumulative log-gates along its
    token axis, cumsum(logsigmoid(x) / 16) for normal x (realistic: decays of a few % per token); any
    other float input (mla's q_rope, k_rope) random normal, rounded to `dtype` (the baselines read
    them in q's dtype; the module then sees the same values)."""
    unknown = sorted(n for n, spec in cls.INPUTS.items() if n != "doc" and spec.dtype != "float") + sorted(cls.GRAPHS)
    if unknown:
        raise ValueError(f"no benchmark data for input `{unknown[0]}`")
    sizes = lambda n: {**cls.SIZES, "N": n, "Nq": n, "H": heads, "Hkv": heads, "D": dim, "E": dim}  # noqa: E731
    gen = torch.Generator().manual_seed(seed + 1)
    out = {}
    for name, spec in cls.INPUTS.items():
        if name == "doc":
            out[name] = (torch.arange(tokens, device=device) // doc_len).int().expand(batch, tokens)
            continue
        shape = tuple(int(x) for x in spec.dims(sizes(tokens)))
        x = torch.randn(batch, *shape, generator=gen)
        if name in GATES:  # the token axis: the one that follows N
            axis = 1 + [a != b for a, b in zip(shape, spec.dims(sizes(tokens + 1)))].index(True)
            x = torch.cumsum(F.logsigmoid(x) / GATE_NORMALIZER, dim=axis)
        out[name] = x.to(dtype).float().to(device)
    return out


def reference_mask(module, inputs: dict, batch: int, heads: int, nq: int, n: int, device, rows=None, dim: int = 1):
    """The spec's mask as the dense reference evaluates it (attncc.lang.evaluate, float32 arithmetic) on
    query rows `rows` (a slice; default all): bool, broadcastable to [B, H, len(rows), N]. dim: the head
    width of the call (inputs sized by D, gla's G [H, N, D], must match it)."""
    d, e = module.fixed.get("D", dim), module.fixed.get("E", dim)  # zero-stride stand-ins for q, k, v
    ctx = module.call_context(*(torch.zeros((), device=device).expand(batch, heads, t, w)
                            for t, w in ((nq, d), (n, d), (n, e))), inputs)
    ar = lambda k: torch.arange(k, device=device, dtype=torch.int32)  # noqa: E731
    i = ar(nq)[rows] if rows is not None else ar(nq)
    env = Env(sizes=ctx.sizes, rsizes={"N": n, "Nq": nq, "H": heads, "D": 1, "E": 1}, i=i.view(1, 1, -1, 1),
              j=ar(n).view(1, 1, 1, n), h=ar(heads).view(1, heads, 1, 1), b=ar(batch).view(-1, 1, 1, 1),
              params=ctx.params,
              inputs=ctx.inputs, float_dtype=torch.float32)
    return torch.as_tensor(evaluate(module.checked.mask, env), device=device)


def count_pairs(module, inputs: dict, batch: int, heads: int, nq: int, n: int, device, dim: int = 1) -> int:
    """(b, h, i, j) kept by the spec's reference mask, counted in chunks of rows (no N x N buffer); for a
    composed spec, the sum over its maps (each computes its own)."""
    if hasattr(module, "map_modules"):
        return sum(count_pairs(m, inputs, batch, heads, nq, n, device, dim) for m in module.map_modules())
    if module.checked.mask is None:
        return batch * heads * nq * n
    chunk = max(1, (1 << 24) // max(1, n))
    total = 0
    for start in range(0, nq, chunk):
        m = reference_mask(module, inputs, batch, heads, nq, n, device, slice(start, start + chunk), dim)
        while m.dim() < 4:
            m = m.unsqueeze(0)
        m = m.expand(m.shape[0], m.shape[1], min(chunk, nq - start), n)
        total += int(m.sum()) * (batch // m.shape[0]) * (heads // m.shape[1])
    return total


def planned(fam: bl.Family | None, baselines: tuple) -> list[str]:
    """The baselines that apply to a family, in report order (a variant's: those it builds or explains)."""
    if fam is None:
        return []
    if fam.custom is not None:
        return [b for b in baselines if b in fam.offers]
    applies = {"sdpa": fam.softmax and (fam.sdpa_causal is not None or fam.sdpa_bias), "flex": fam.softmax,
               "fla": fam.fla is not None, "naive": True, "fft": fam.modulation == "toeplitz"}
    return [b for b in baselines if applies[b]]


def split_spec(spec) -> tuple[str, str, int]:
    """`PATH[@lowering][:kv=Hkv]` -> (path, lowering or "", Hkv or 0)."""
    text, _, kv = str(spec).partition(":kv=")
    path, _, lowering = text.partition("@")
    if kv and not kv.isdigit():
        raise ValueError(f"`{spec}`: `:kv=` takes the number of key/value heads, e.g. `gqa.attn:kv=4`")
    return path, lowering, int(kv or 0)


class Runner:
    def __init__(self, cfg: BenchConfig, log=None):
        self.cfg = cfg
        self.cuda = cfg.device.startswith("cuda")
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.deadline = time.monotonic() + cfg.budget_s if cfg.budget_s else None
        self.classes: dict = {}

    # ------------------------------------------------------------------ timing
    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def time_ms(self, fn, grads=()) -> float:
        if self.cuda:
            from triton.testing import do_bench
            return do_bench(fn, grad_to_none=list(grads) or None, return_mode="median")
        from torch.utils.benchmark import Timer
        return Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=self.cfg.min_run_time).median * 1e3

    def bytes_per_call(self, fn) -> int | None:
        if not self.cuda:
            return None
        self.sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        self.sync()
        del out
        return torch.cuda.max_memory_allocated() - base

    # ------------------------------------------------------------------ cases
    def compiled(self, spec, n: int, d: int):
        """The module class for this shape: the lowering named by a `PATH@lowering` spec, else the one
        the cost model picks for B, H, N, d and the spec's sizes (what a user would get)."""
        path, lowering, _ = split_spec(spec)
        key = (path, lowering, n, d)
        if key not in self.classes:
            backend = "triton" if self.cuda else "torch"
            cls = compile_spec(Path(path), backend=backend)
            design = {"B": self.cfg.batch, "H": self.cfg.heads, "Nq": n, "N": n, "D": d, "E": d,
                      **self.overrides(cls)}
            self.classes[key] = compile_spec(Path(path), backend=backend, sizes=design, lowering=lowering or None)
        return self.classes[key]

    def overrides(self, cls) -> dict:
        return {k: v for k, v in {**SPEC_SIZES.get(cls.SPEC_NAME, {}), **self.cfg.sizes}.items() if k in cls.SIZES}

    def cases(self, specs) -> list[tuple]:
        return [(spec, d, n) for n in self.cfg.lengths for d in self.cfg.dims for spec in specs]

    def plan(self, specs) -> list[dict]:
        """What a run would do, without running anything but the compiler."""
        out = []
        for spec, d, n in self.cases(specs):
            cls = self.compiled(spec, n, d)
            impls = ["attncc"] + planned(bl.FAMILIES.get(cls.SPEC_NAME), self.cfg.baselines)
            out.append({"spec": _label(cls, spec), "d": d, "N": n, "lowering": cls.LOWERING, "impls": impls})
        return out

    def run(self, specs, on_case=None) -> list[dict]:
        """Every case in order; on_case(rows so far) after each (e.g. to write partial results)."""
        rows = []
        for spec, d, n in self.cases(specs):
            first = len(rows)
            if self.deadline is not None and time.monotonic() > self.deadline:
                rows.append({"spec": _name(spec), "d": d, "N": n, "impl": "attncc",
                             "mode": "fwd", "note": "not run: time budget spent"})
                continue
            try:
                rows += self.case(spec, d, n)
            except Exception as exc:  # noqa: BLE001  (one failing case must not end the suite)
                rows.append({"spec": _name(spec), "d": d, "N": n, "impl": "attncc",
                             "mode": "fwd", "note": _failure(exc)})
            finally:
                if self.cuda:
                    torch.cuda.empty_cache()
            for r in rows[first:]:
                self.log(format_row(r))
            if on_case is not None:
                on_case(rows)
        return rows

    def case(self, spec, d: int, n: int) -> list[dict]:
        cfg = self.cfg
        cls = self.compiled(spec, n, d)
        fam = bl.FAMILIES.get(cls.SPEC_NAME)
        overrides = self.overrides(cls)
        # eval(): inference, and random features keep their draw (training mode redraws per call)
        module = instantiate(cls, heads=cfg.heads, tokens=n, dim=d, **overrides).to(cfg.device).eval()
        inputs = bench_inputs(cls, cfg.batch, n, cfg.doc_len, cfg.device, heads=cfg.heads, dim=d,
                              dtype=cfg.torch_dtype, seed=cfg.seed)
        hkv = self.kv_heads(spec)
        gen = torch.Generator().manual_seed(cfg.seed)
        q, k, v = (torch.randn(cfg.batch, heads, n, d, generator=gen).to(cfg.device, cfg.torch_dtype)
                   for heads in (cfg.heads, hkv, hkv))
        pairs = count_pairs(module, inputs, cfg.batch, cfg.heads, n, n, cfg.device, d)
        base = {"spec": _label(cls, spec), "d": d, "N": n, "kv_heads": hkv, "lowering": cls.LOWERING, "pairs": pairs,
                "density": pairs / (cfg.batch * cfg.heads * n * n), "flops": 2 * pairs * (d + d)}
        rows = []
        with torch.no_grad():
            rows.append(self.measure(base, "attncc", lambda: module(q, k, v, **inputs), ref=None))
            ref = rows[0].pop("_out", None)
            if ref is None:
                return rows
            for name in planned(fam, cfg.baselines):
                rows += self.baseline(base, name, fam, module, inputs, q, k, v, ref)
            if fam is None:
                rows[0]["note"] = f"no baseline written for spec `{cls.SPEC_NAME}`"
        del ref
        if cfg.backward:
            rows += self.backward(base, fam, module, inputs, q, k, v)
        _speedups(rows)
        return rows

    def measure(self, base: dict, impl: str, fn, ref, unpack=lambda o: o, mode: str = "fwd", grads=()) -> dict:
        row = {**base, "impl": impl, "mode": mode}
        try:
            t0 = time.perf_counter()
            out = fn()
            self.sync()
            row["first_call_s"] = time.perf_counter() - t0
            if ref is not None and mode == "fwd":
                row["rel_diff"] = _rel_diff(unpack(out), ref)
            elif mode == "fwd":
                row["_out"] = out
            del out
            row["bytes_per_token"] = _per(self.bytes_per_call(fn), self.cfg.batch * base["N"])
            row["ms"] = self.time_ms(fn, grads)
            row["tflops"] = base["flops"] * (FWD_BWD_FLOPS if mode != "fwd" else 1) / row["ms"] / 1e9
        except Exception as exc:  # noqa: BLE001  (report and go on)
            row["note"] = _failure(exc)
            row.pop("_out", None)
        return row

    def kv_heads(self, spec) -> int:
        """k and v heads for this spec: its `:kv=` suffix, else BenchConfig.kv_heads, else q's heads."""
        hkv = split_spec(spec)[2] or self.cfg.kv_heads or self.cfg.heads
        if self.cfg.heads % hkv:
            raise ValueError(f"{hkv} key/value heads do not divide {self.cfg.heads} query heads")
        return hkv

    def baseline(self, base, name, fam, module, inputs, q, k, v, ref) -> list[dict]:
        try:
            if fam.custom is not None:  # a variant: its baselines written out in attncc.tools.baselines
                fn, unpack, note = fam.custom(name, module, inputs, q, k, v, self.cuda)
                return [{**self.measure(base, name, fn, ref, unpack), "note": note}]
            if name == "sdpa":
                fn, kind = bl.sdpa(fam, q, k, v, module, inputs)
                return [{**self.measure(base, "sdpa", fn, ref), "note": f"backend: {kind}"}]
            if name == "flex":
                fn, make_mask = bl.flex(fam, module, inputs, q, k, v, compiled=self.cuda)
                rows = [self.measure(base, "flex", fn, ref)]
                if make_mask is not None:
                    rows.append({**base, "impl": "flex create_block_mask", "mode": "fwd",
                                 "ms": self.time_ms(make_mask), "note": "per-call mask construction"})
                if not self.cuda:
                    rows[0]["note"] = "eager (not compiled) off CUDA"
                return rows
            if name == "fla":
                fn, unpack = bl.fla(fam, q, k, v)
                return [self.measure(base, "fla", fn, ref, unpack)]
            if name == "naive":
                return [self.measure(base, "naive", lambda: bl.naive(fam, module, inputs, q, k, v), ref)]
            return [self.measure(base, "fft", lambda: bl.fft_naive(fam, module, q, k, v), ref)]
        except ImportError as exc:
            return [{**base, "impl": name, "mode": "fwd", "note": f"skipped: import failed ({exc})"}]
        except bl.Unavailable as exc:
            return [{**base, "impl": name, "mode": "fwd", "note": f"n/a: {exc}"}]
        except Exception as exc:  # noqa: BLE001
            return [{**base, "impl": name, "mode": "fwd", "note": _failure(exc)}]

    def backward(self, base, fam, module, inputs, q, k, v) -> list[dict]:
        """Forward + backward of attncc and of the softmax / fla baselines, on leaves that need grad."""
        qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
        grad = torch.randn_like(q)
        impls = [("attncc", lambda: module(qg, kg, vg, **inputs))]
        fam = fam if fam is not None and fam.custom is None else None  # variants: attncc's backward only
        if fam is not None and "sdpa" in planned(fam, self.cfg.baselines):
            impls.append(("sdpa", bl.sdpa(fam, qg, kg, vg, module, inputs)[0]))
        if fam is not None and "flex" in planned(fam, self.cfg.baselines):
            impls.append(("flex", bl.flex(fam, module, inputs, qg, kg, vg, compiled=self.cuda)[0]))
        rows = []
        for name, fn in impls:
            step = lambda fn=fn: fn().backward(grad)  # noqa: E731
            rows.append(self.measure(base, name, step, None, mode="fwd+bwd", grads=(qg, kg, vg)))
        return rows


def _label(cls, spec) -> str:
    """The spec's name, with `@lowering` when the lowering was forced and `:kv=Hkv` when given."""
    _, forced, kv = split_spec(spec)
    return cls.SPEC_NAME + (f"@{forced}" if forced else "") + (f":kv={kv}" if kv else "")


def _name(spec) -> str:
    """The label of a spec that did not compile: its file name and suffixes."""
    path, forced, kv = split_spec(spec)
    return Path(path).stem + (f"@{forced}" if forced else "") + (f":kv={kv}" if kv else "")


def _speedups(rows: list[dict]) -> None:
    """speedup = impl ms / attncc ms of the same mode."""
    ours = {r["mode"]: r.get("ms") for r in rows if r["impl"] == "attncc"}
    for r in rows:
        if r.get("ms") and ours.get(r["mode"]) and r["impl"] != "flex create_block_mask":
            r["speedup"] = r["ms"] / ours[r["mode"]]


def _rel_diff(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float(), ref.float()
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def _per(nbytes, tokens):
    return None if nbytes is None else nbytes / tokens


def _failure(exc: Exception) -> str:
    oom = "out of memory" in str(exc).lower() or isinstance(exc, getattr(torch.cuda, "OutOfMemoryError", ()))
    return "skipped: out of memory" if oom else f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"


# ---------------------------------------------------------------------- report
HEADERS = ["spec", "d", "N", "impl", "mode", "ms", "TFLOP/s", "speedup of attncc", "rel diff", "bytes/token", "note"]


def table_rows(rows: list[dict]) -> list[list]:
    order = {"fwd": 0, "fwd+bwd": 1}
    rows = sorted(rows, key=lambda r: (r["spec"], r["d"], r["N"], order.get(r.get("mode"), 2)))
    return [[r["spec"], r["d"], r["N"], r["impl"], r.get("mode"), r.get("ms"), r.get("tflops"), r.get("speedup"),
             r.get("rel_diff"), r.get("bytes_per_token"), r.get("note", "")] for r in rows]


def fmt(x, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            return str(x)
        return f"{x:.{digits}e}" if x != 0 and (abs(x) < 1e-2 or abs(x) >= 1e5) else f"{x:.{digits}f}"
    return str(x)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def format_row(r: dict) -> str:
    parts = [f"{r['spec']} d={r['d']} N={r['N']} {r['impl']} {r.get('mode', '')}:"]
    parts += [f"{k}={fmt(r[k])}" for k in ("ms", "tflops", "speedup", "rel_diff") if r.get(k) is not None]
    return " ".join(parts + ([r["note"]] if r.get("note") else []))


def environment() -> dict:
    import os
    import platform
    env = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
           "processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    for name in ("triton", "fla"):
        try:
            env[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001  (absent or broken: not part of this environment)
            pass
    env["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return env


def write_report(path: Path, cfg: BenchConfig, rows: list[dict], title: str = "attncc bench",
                 extra: dict | None = None, extra_md: str = "") -> None:
    """JSON (config, environment, rows, extra) at path and the markdown table (+ extra_md) beside it (.md)."""
    import json
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    env = environment()
    config = {**asdict(cfg), "dtype": str(cfg.torch_dtype).removeprefix("torch.")}
    path.write_text(json.dumps({"config": config, "environment": env, "results": rows, **(extra or {})},
                                     indent=1, default=str) + "\n")
    head = (f"# {title}\n\nEnvironment: {', '.join(f'{k} {v}' for k, v in env.items() if v is not None)}.\n\n"
            f"B={cfg.batch}, H={cfg.heads}, {config['dtype']}, e = d. speedup of attncc = impl ms / attncc ms "
            f"(> 1: attncc faster); TFLOP/s counts useful flops (unmasked pairs only); rel diff = "
            f"max |out - attncc| / max |attncc|.\n\n")
    path.with_suffix(".md").write_text(head + markdown_table(HEADERS, table_rows(rows)) + "\n" + extra_md)


def run_cli(args, device: str) -> int:
    """`attncc bench` (arguments parsed by attncc.cli): run, write JSON + markdown, print the table."""
    ints = lambda text: tuple(int(x) for x in text.split(",") if x)  # noqa: E731
    try:
        sizes = parse_sizes(args.size)
        baselines = tuple(b for b in args.baselines.split(",") if b)
        unknown = sorted(set(baselines) - set(BASELINES))
        if unknown:
            raise ValueError(f"unknown baseline `{unknown[0]}`; use {', '.join(BASELINES)}")
        if not ints(args.dims) or not ints(args.lengths):
            raise ValueError("--dims and --lengths need at least one value")
        cfg = BenchConfig(device=device, dtype=args.dtype, batch=args.batch, heads=args.heads, dims=ints(args.dims),
                          lengths=ints(args.lengths), baselines=baselines, backward=args.backward,
                          budget_s=args.budget, sizes=sizes, min_run_time=args.min_run_time,
                          kv_heads=getattr(args, "kv_heads", 0))
        cfg.torch_dtype  # noqa: B018  (an unknown dtype fails here, before any work)
    except (ValueError, AttributeError) as exc:
        print(f"attncc bench: bad option: {exc}", file=sys.stderr)
        return 2
    runner = Runner(cfg)
    try:
        for spec in args.specs:  # a bad spec, lowering or head count is an error here, not a failed row later
            runner.compiled(spec, cfg.lengths[0], cfg.dims[0])
            runner.kv_heads(spec)
    except ValueError as exc:
        print(f"attncc bench: bad option: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        for case in runner.plan(args.specs):
            print(f"{case['spec']} d={case['d']} N={case['N']} ({case['lowering']}): {', '.join(case['impls'])}")
        return 0
    rows = runner.run(args.specs)
    write_report(Path(args.out), cfg, rows)
    print(markdown_table(HEADERS, table_rows(rows)))
    return 0
