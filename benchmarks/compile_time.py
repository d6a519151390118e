"""Compile time: spec text -> ready nn.Module class (attncc.compile), per example, cold and warm.

attncc.compile parses, checks, lowers, runs the passes, selects a lowering, emits the torch and Triton
sources, writes the module into ATTNCC_CACHE_DIR and imports it. Triton's JIT is not involved: no
kernel is launched. Each stage is timed by wrapping the functions attncc.api.build/compile call, so
the breakdown follows whatever the pipeline does (e.g. `lower` counts both of build's lower calls).

  cold   a fresh Python process per run (after `import attncc`, timed apart) and a fresh, empty
         ATTNCC_CACHE_DIR: includes building the Lark parser and writing + importing the module.
  warm   the same process, repeated: median of --repeats calls (the generated module is already
         imported; load_module only re-reads the cached file).

  stress specs whose analysis was slow (--stress): a block-diagonal mask with chunks of 4096 and 16384
         tokens, 60 / 120 / 199 global tokens spelled out with `or`, and attention-gym's NATTEN,
         tiled NATTEN and STA masks (tests/specs). Each is compiled in a fresh process with an empty
         cache (`cold`: the analysis runs), then in a second fresh process with the same cache
         (`second`: the analysis results are read back), reporting the `passes` stage, the number of
         proofs run and read, and the process's peak resident memory.

    python benchmarks/compile_time.py [--repeats 20] [--cold-repeats 3] [--specs causal,softmax]
    python benchmarks/compile_time.py --stress
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from common import RESULTS, ROOT, example_paths, print_table, write_results

TARGET_MS = 100.0
# stage -> the attncc.api globals it covers
STAGES = {"parse": ["parse"], "check": ["check"], "lower": ["lower"], "passes": ["run_pipeline", "ctx_mask"],
          "select": ["select"], "emit": ["emit_torch", "emit_triton", "header", "module_class"],
          "load": ["load_module"]}


@contextmanager
def timed_stages(acc: dict):
    """Wrap the pipeline functions attncc.api calls; acc[stage] accumulates their seconds."""
    from attncc import api
    saved = {}

    def wrap(stage, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                acc[stage] += time.perf_counter() - t0
        return timed

    for stage, names in STAGES.items():
        for name in filter(lambda n: hasattr(api, n), names):  # the pipeline may drop a helper
            saved[name] = getattr(api, name)
            setattr(api, name, wrap(stage, saved[name]))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(api, name, fn)


def compile_once(path: Path) -> dict:
    """One attncc.compile(path), in ms: total, per stage, and `other` (hashing, class creation...)."""
    import attncc
    acc = defaultdict(float)
    with timed_stages(acc):
        t0 = time.perf_counter()
        cls = attncc.compile(path)
        total = time.perf_counter() - t0
    stages = {s: 1e3 * acc[s] for s in STAGES}
    stages["other"] = 1e3 * total - sum(stages.values())
    return {"total_ms": 1e3 * total, "stages": stages, "lowering": cls.LOWERING}


def child(path: Path) -> None:
    """Run in a fresh process: time `import attncc`, then one cold compile; print JSON (with the
    proofs the analysis ran and read back, and the peak resident memory in MiB)."""
    t0 = time.perf_counter()
    import attncc  # noqa: F401
    from attncc.analysis.session import STATS
    import_ms = 1e3 * (time.perf_counter() - t0)
    result = compile_once(path)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"import_ms": import_ms, **result, "proved": STATS["proved"], "reused": STATS["reused"],
                      "peak_mib": peak_mib}))


def cold(path: Path, cache: str | None = None) -> dict:
    """One compile in a fresh process, with an empty cache (or the given cache folder)."""
    with tempfile.TemporaryDirectory(prefix="attncc-cache-") as empty:
        env = {**os.environ, "ATTNCC_CACHE_DIR": cache or empty}
        proc = subprocess.run([sys.executable, __file__, "--child", str(path)], env=env, cwd=ROOT,
                              capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"cold compile of {path.name} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def stress_specs(folder: Path) -> list[Path]:
    """The specs whose analysis used to take seconds to minutes (see the module docstring)."""
    texts = {f"chunk_{c}": f"attention chunk_{c} {{ size chunk = {c}  mask(i, j) = i // chunk == j // chunk "
                           "and j <= i }" for c in (4096, 16384)}
    for n in (60, 120, 199):
        tokens = " or ".join(f"i == {t} or j == {t}" for t in range(3, 3 + 7 * n, 7))
        texts[f"globals_{n}"] = f"attention globals_{n} {{ mask(i, j) = abs(i - j) <= 16 or {tokens} }}"
    paths = []
    for name, text in texts.items():
        paths.append(folder / f"{name}.attn")
        paths[-1].write_text(text)
    return paths + [ROOT / "tests" / "specs" / f"{name}.attn" for name in ("natten", "tiled_natten", "sta")]


def stress(out: Path) -> None:
    results = {}
    with tempfile.TemporaryDirectory(prefix="attncc-stress-") as folder:
        for path in stress_specs(Path(folder)):
            with tempfile.TemporaryDirectory(prefix="attncc-cache-") as cache:
                runs = {"cold": cold(path, cache), "second": cold(path, cache)}
            results[path.stem] = runs
            print(f"{path.stem}: cold {runs['cold']['total_ms']:.0f} ms, second process "
                  f"{runs['second']['total_ms']:.0f} ms", file=sys.stderr)
    headers = ["spec", "lowering", "cold ms", "cold passes ms", "proofs run", "second ms", "second passes ms",
               "proofs run / read", "peak MiB"]
    rows = [[name, r["cold"]["lowering"], r["cold"]["total_ms"], r["cold"]["stages"]["passes"], r["cold"]["proved"],
             r["second"]["total_ms"], r["second"]["stages"]["passes"],
             f"{r['second']['proved']} / {r['second']['reused']}", max(r[k]["peak_mib"] for k in r)]
            for name, r in results.items()]
    sections = [("stress specs: compile time (attncc.compile, fresh process each)", headers, rows)]
    print_table(*sections[0])
    notes = ("cold = fresh process, empty ATTNCC_CACHE_DIR (the analysis runs); second = another fresh process "
             "with the same cache (the analysis results are read back). peak MiB: the process's peak resident "
             "memory, torch included.")
    print(notes)
    write_results(out, {"specs": results}, sections, notes)


def median_run(runs: list[dict]) -> dict:
    return {"total_ms": statistics.median(r["total_ms"] for r in runs),
            "stages": {s: statistics.median(r["stages"][s] for r in runs) for s in runs[0]["stages"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=20, help="warm compiles per spec (median)")
    ap.add_argument("--cold-repeats", type=int, default=3, help="fresh processes per spec (median)")
    ap.add_argument("--specs", help="comma-separated example names (default: all)")
    ap.add_argument("--out", type=Path, default=RESULTS / "compile_time.json")
    ap.add_argument("--stress", action="store_true", help="time the stress specs instead (writes compile_stress.*)")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child)
    if args.stress:
        return stress(args.out.with_name("compile_stress.json"))

    os.environ["ATTNCC_CACHE_DIR"] = tempfile.mkdtemp(prefix="attncc-cache-")  # warm runs: one fresh cache
    paths = example_paths(args.specs.split(",") if args.specs else None)
    results = {}
    for path in paths:
        cold_runs = [cold(path) for _ in range(args.cold_repeats)]
        first = compile_once(path)  # first compile of this spec in this process
        warm = median_run([compile_once(path) for _ in range(args.repeats)])
        results[path.stem] = {"lowering": first["lowering"],
                              "import_attncc_ms": statistics.median(r["import_ms"] for r in cold_runs),
                              "cold": median_run(cold_runs), "first_in_process": first, "warm": warm}
        print(f"{path.stem}: cold {results[path.stem]['cold']['total_ms']:.1f} ms, warm {warm['total_ms']:.1f} ms",
              file=sys.stderr)

    stage_names = list(STAGES) + ["other"]
    totals = ["spec", "lowering", "cold ms", "first in process ms", "warm ms", f"warm < {TARGET_MS:.0f} ms"]
    total_rows = [[name, r["lowering"], r["cold"]["total_ms"], r["first_in_process"]["total_ms"],
                   r["warm"]["total_ms"], "yes" if r["warm"]["total_ms"] < TARGET_MS else "NO"]
                  for name, r in results.items()]
    sections = [("compile time (attncc.compile: spec -> module class)", totals, total_rows)]
    for kind in ("cold", "warm"):
        rows = [[name] + [r[kind]["stages"][s] for s in stage_names] + [r[kind]["total_ms"]]
                for name, r in results.items()]
        sections.append((f"{kind} stage breakdown (ms, median)", ["spec"] + stage_names + ["total"], rows))
    for title, headers, rows in sections:
        print_table(title, headers, rows)
    import_ms = statistics.median(r["import_attncc_ms"] for r in results.values())
    notes = (f"`import attncc` (incl. torch) in a fresh process: {import_ms:.0f} ms, not counted above. "
             f"cold = fresh process + empty ATTNCC_CACHE_DIR, median of {args.cold_repeats}; "
             f"warm = median of {args.repeats} repeats in one process. "
             "`lower` includes both of build()'s lower() calls; `other` is hashing and class creation.")
    print(notes)
    write_results(args.out, {"target_ms": TARGET_MS, "repeats": args.repeats, "cold_repeats": args.cold_repeats,
                             "specs": results}, sections, notes)


if __name__ == "__main__":
    main()
