"""Where one proxy evaluation's time goes (issue 17): its task runs, their streams, the GPU busy or idle.

One evaluation of `pattern` by the search's evaluator (composed from configs/search like
`composer-search` does, with the same overrides), in a fresh folder, timed as a search times it.
First `--warm` (1) untraced evaluations of the same pattern in this process (`<out>/warm0`), so the
profiled one sees what a search worker sees after its first: Triton's kernels built and autotuned
(mamba-ssm's backward kernels, whose configs carry pre-hooks, are tuned again in every process:
Triton keeps no disk cache for them), compiled layers reused. `--warm 0` profiles a cold process.
Two views, printed as tables and written to `<out>/profile.json`:

- the critical path, from each task run's summary.json: steps, tokens, train seconds. The runs
  of one evaluation run `evaluator.parallel` at a time (threads, one CUDA stream each; the GPU
  preset starts all six together), so `busy streams` (the sum of the runs' seconds over the
  evaluation's wall) is how many run on average: 6 when every task ends together, near 2 when two
  long tasks carry the tail alone;
- the GPU (CUDA only): a torch.profiler trace of `--trace-seconds` from `--trace-after` seconds into
  the evaluation (past the warm-up; CUPTI sees every thread's kernels, those of captured graphs too),
  from which the share of that window any kernel runs (kernel time vs idle), the share with k kernels
  at once, each stream's busy share (one stream per task run), the kernels that take the most time, where the
  kernels come from (compiled, eager PyTorch, GEMMs, attention, Mamba-2's kernels: the eager share is what
  compiling more of the step could fuse), and each run's kernels and busy share (by the thread that launched
  them, which each run's summary.json names; a thread no run names shows its Python name where it is one, from
  the threads alive in the window);
- with `--ops`, which ops launched the eager kernels: the trace then records every thread's CPU ops too
  (torch.profiler's `profile_all_threads`, which slows the traced window's CPU side a little), and each eager kernel
  is charged to its scope (a backward node, an autograd Function, the optimizer step) and the ATen op under it. A
  graph replay launches its kernels as one, naming no op: add `evaluator.trainer.cuda_graph=false`.

With `evaluator.trainer.compile=true` (the GPU presets' default) it also counts, per evaluation, what torch.compile
did: frames traced, graphs made, graph breaks (a worker's first evaluation compiles; later ones should not). For a
cold first evaluation, point TORCHINDUCTOR_CACHE_DIR at an empty folder.

    python benchmarks/eval_profile.py --out $OUT/profile -- evaluator=mad space=long
    python benchmarks/eval_profile.py --pattern 'M*-*' --out /tmp/p -- evaluator=mad_cpu space.length=4  # CPU
    python benchmarks/eval_profile.py --ops --out $OUT/ops -- evaluator=mad_fast space=long evaluator.trainer.cuda_graph=false

Everything after `--` is a composer-search override.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import statistics
import threading
import time
from pathlib import Path
from typing import Any


def evaluator_config(overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from search.evaluator import evaluator_config_from_mapping

    with initialize_config_module(config_module="configs.search", version_base=None):
        cfg = compose(config_name="search", overrides=overrides)
    return evaluator_config_from_mapping(OmegaConf.to_container(cfg.evaluator, resolve=True))


def critical_path(trials: Path, wall: float) -> dict[str, Any]:
    """Per task run: steps, tokens and train seconds (its summary.json); the busy-stream average."""
    runs = {}
    for summary in sorted(trials.glob("*/*/summary.json")):
        s = json.loads(summary.read_text())
        runs[summary.parent.name] = {"steps": s.get("step"), "tokens": s.get("tokens"), "thread": s.get("thread"),
                                     "seconds": s.get("train_seconds"), "tokens_per_s": s.get("tokens_per_s"),
                                     "phases": s.get("seconds", {})}  # RUN_PHASES, WITHIN_PHASES
    seconds = [r["seconds"] for r in runs.values() if r["seconds"]]
    return {"wall_seconds": round(wall, 2), "runs": runs,
            "busy_streams": round(sum(seconds) / wall, 2) if seconds and wall else None,
            "longest_over_median": round(max(seconds) / statistics.median(seconds), 2) if seconds else None}


# Where a kernel comes from, by its name (first match): what fusing more (compiling more of the step) could remove
# is the eager share. Names as seen in the H100 traces of 2026-12-06.
FAMILIES = (
    ("compiled (inductor)", re.compile(r"^triton_")),
    ("eager PyTorch", re.compile(r"at::native|^void at::")),
    ("attention (cuDNN, flash)", re.compile(r"sdpa|flash|fmha", re.I)),
    ("GEMM (cuBLAS)", re.compile(r"nvjet|gemm|xmma|cutlass|cublas", re.I)),
    ("Mamba-2 (mamba-ssm, causal-conv1d)", re.compile(r"causal_conv1d|^_(chunk|state_passing|bmm_chunk)")),
)


def family(name: str) -> str:
    return next((label for label, pattern in FAMILIES if pattern.search(name)), "other")


def kernel_timeline(trace: dict[str, Any], window_us: float, top: int = 12) -> dict[str, Any]:
    """From a chrome trace: the share of the window with any kernel running (the rest is idle), with k at
    once, per stream, and the kernels that take the most GPU time. The window is the traced interval: at
    least `window_us`, from the first kernel on."""
    kernels = [e for e in trace.get("traceEvents", []) if e.get("cat") == "kernel" and "dur" in e]
    if not kernels:
        return {"kernels": 0}
    start = min(e["ts"] for e in kernels)
    edges = sorted([(e["ts"], 1) for e in kernels] + [(e["ts"] + e["dur"], -1) for e in kernels])
    at_once: dict[int, float] = {}
    active, last = 0, start
    for ts, step in edges:
        if active:
            at_once[active] = at_once.get(active, 0.0) + (ts - last)
        active, last = active + step, ts
    span = max(window_us, last - start)
    at_once[0] = span - sum(at_once.values())  # no kernel: between kernels and after the last one
    per_stream: dict[str, float] = {}
    by_name: dict[str, list[float]] = {}
    for e in kernels:
        stream = str(e.get("args", {}).get("stream", "?"))
        per_stream[stream] = per_stream.get(stream, 0.0) + e["dur"]
        n = by_name.setdefault(e.get("name", "?"), [0, 0.0])
        n[0], n[1] = n[0] + 1, n[1] + e["dur"]
    total = sum(d for _, d in by_name.values())
    families: dict[str, list[float]] = {}
    for name, (c, d) in by_name.items():
        f = families.setdefault(family(name), [0, 0.0])
        f[0], f[1] = f[0] + c, f[1] + d
    return {"kernels": len(kernels), "window_s": round(span / 1e6, 3),
            "busy": round(1 - at_once[0] / span, 3),
            "share_with_k_kernels": {k: round(v / span, 3) for k, v in sorted(at_once.items())},
            "stream_busy": {s: round(v / span, 3) for s, v in sorted(per_stream.items(), key=lambda kv: -kv[1])},
            "mean_kernel_us": round(total / len(kernels), 2),
            "top_kernels": [{"name": name, "count": c, "ms": round(d / 1e3, 2), "share": round(d / total, 3),
                             "mean_us": round(d / c, 2)}
                            for name, (c, d) in sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]],
            "families": {label: {"count": c, "count_share": round(c / len(kernels), 3), "share": round(d / total, 3),
                                 "mean_us": round(d / c, 2)}
                         for label, (c, d) in sorted(families.items(), key=lambda kv: -kv[1][0])}}


def trace_tid(ident: int) -> int:
    """A thread as a GPU trace names it: the low 32 bits of its pthread id read as a signed 32-bit number, without
    the sign. So an id whose bit 31 is set appears as 2**32 minus its low bits: every run that went unnamed in the
    H100 traces of 2026-12-06 and 2026-12-07 had bit 31 set (e.g. 0x94ff96c0 as 0x6b006940), every named run had it
    clear. Applied to a trace's own tid, it leaves it as it is (and would turn a negative one into the same form)."""
    low = ident & 0xFFFFFFFF
    return 2**32 - low if low >= 2**31 else low


def kernels_by_run(trace: dict[str, Any], threads: dict[int, str], window_us: float,
                   alive: dict[int, str] | None = None) -> dict[str, dict[str, Any]]:
    """Each kernel's run: a kernel's launch (the runtime or driver call with its correlation id: a graph's kernels
    share their replay's, Triton's kernels are driver launches) was made by one thread, and each run's summary.json
    names the thread that stepped it (`threads`: Python thread id -> run). The trace names a thread by the low 32 bits
    of that id (pthread_self), unsigned (`trace_tid`). (The trainer's `step <run>` ranges cannot say it here:
    a profiler started on this thread records no ranges of the evaluator's threads.) Per run: kernels, their GPU
    time, their mean, and its share of the window (busy: one run's kernels run on its own stream, one at a time).
    A thread no run names is shown by its id, and by its name where it is one of the Python threads `alive` in the
    window (id -> name: `threading.enumerate()`), as a clue to whose launches it made."""
    events = trace.get("traceEvents", [])
    launches = {e["args"]["correlation"]: e.get("tid") for e in events
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    by_tid = {trace_tid(ident): name for ident, name in threads.items()}
    alive_by_tid = {trace_tid(ident): name for ident, name in (alive or {}).items()}
    runs: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") != "kernel" or "dur" not in e:
            continue
        tid = launches.get(e.get("args", {}).get("correlation"))
        low = trace_tid(tid) if isinstance(tid, int) else tid
        name = ("(launch not traced)" if tid is None else by_tid.get(low) or
                (f"(thread {tid}: {alive_by_tid[low]})" if low in alive_by_tid else f"(thread {tid})"))
        runs.setdefault(name, []).append(e["dur"])
    return {name: {"kernels": len(d), "ms": round(sum(d) / 1e3, 2), "mean_us": round(sum(d) / len(d), 2),
                   "busy": round(sum(d) / window_us, 3)} for name, d in sorted(runs.items())}


def _parents(ops: list[dict[str, Any]]) -> dict[int, dict[str, Any] | None]:
    """Each CPU op's enclosing op on its thread (by id(op)), from their nesting in time: outer ones first at a tie."""
    parent: dict[int, dict[str, Any] | None] = {}
    by_tid: dict[Any, list[dict[str, Any]]] = {}
    for op in ops:
        by_tid.setdefault(op.get("tid"), []).append(op)
    for thread_ops in by_tid.values():
        stack: list[dict[str, Any]] = []
        for op in sorted(thread_ops, key=lambda o: (o["ts"], -o.get("dur", 0))):
            while stack and stack[-1]["ts"] + stack[-1].get("dur", 0) < op["ts"] + op.get("dur", 0):
                stack.pop()  # ended before this one ends: not around it
            parent[id(op)] = stack[-1] if stack else None
            stack.append(op)
    return parent


def kernels_by_op(trace: dict[str, Any], of: str = "eager PyTorch", top: int = 15) -> list[dict[str, Any]]:
    """Which ops launched the kernels of family `of`, from a trace that recorded every thread's CPU ops (`--ops`:
    torch.profiler's `profile_all_threads`). A kernel names the op that launched it by its `External id`; the row is
    that op's scope, the nearest enclosing op that is not an ATen op (a backward node such as
    `autograd::engine::evaluate_function: MambaChunkScanCombinedFnBackward`, an autograd Function, the optimizer
    step), and the outermost ATen op inside the scope (`aten::contiguous` rather than the `aten::copy_` it calls).
    Kernels of a graph replay name no op: run with `evaluator.trainer.cuda_graph=false` to see them (the same
    kernels, launched one by one). Rows by GPU time: kernels, ms, share of the family's time, mean us."""
    events = trace.get("traceEvents", [])
    # ops and ranges, but the trainer's `step <run>` range: it names a run (the runs table's business), not a scope
    ops = [e for e in events if e.get("cat") in ("cpu_op", "user_annotation") and "dur" in e
           and not e.get("name", "").startswith("step ")]
    by_ext = {e["args"]["External id"]: e for e in ops if "External id" in e.get("args", {})}
    parent = _parents(ops)
    rows: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") != "kernel" or "dur" not in e or family(e.get("name", "")) != of:
            continue
        op = by_ext.get(e.get("args", {}).get("External id"))
        chain = []  # innermost first
        while op is not None:
            chain.append(op)
            op = parent.get(id(op))
        scoped = next((i for i, o in enumerate(chain) if not o["name"].startswith("aten::")), len(chain))
        if not chain:
            key = "(no op recorded: a graph replay, or a launch outside the trace)"
        else:
            scope = chain[scoped]["name"] if scoped < len(chain) else "(no enclosing op)"
            key = f"{scope} > {chain[scoped - 1]['name']}" if scoped else scope
        row = rows.setdefault(key, [0, 0.0])
        row[0], row[1] = row[0] + 1, row[1] + e["dur"]
    total = sum(d for _, d in rows.values()) or 1.0
    return [{"op": key, "kernels": c, "ms": round(d / 1e3, 2), "share": round(d / total, 3), "mean_us": round(d / c, 2)}
            for key, (c, d) in sorted(rows.items(), key=lambda kv: -kv[1][1])[:top]]


def compile_counts() -> dict[str, int]:
    """What torch.compile did in this process since the last call: frames traced, graphs made, graph breaks."""
    from torch._dynamo.utils import counters

    counts = {"frames": counters["frames"]["total"], "graphs": counters["stats"]["unique_graphs"],
              "graph_breaks": sum(counters["graph_break"].values())}
    counters.clear()
    return counts


def profile(pattern: str, overrides: list[str], out: Path, trace_seconds: float, trace_after: float,
            warm: int = 1, ops: bool = False) -> dict[str, Any]:
    import torch

    from search.evaluator import Evaluator
    from search.runner import worker_device

    cfg = evaluator_config(overrides)
    warmed, compiles = [], []
    compile_counts()
    for i in range(warm):  # a search worker's steady state: kernels built and autotuned, layers compiled
        started = time.perf_counter()
        Evaluator(cfg, run_dir=out / f"warm{i}", device=worker_device(0))(pattern)
        warmed.append(round(time.perf_counter() - started, 2))
        compiles.append(compile_counts())
        print(f"eval_profile.py: warm-up evaluation {i + 1}/{warm} (untraced, {out / f'warm{i}'}): {warmed[-1]:.1f} s",
              flush=True)
    evaluator = Evaluator(cfg, run_dir=out / "run", device=worker_device(0))
    cuda = torch.cuda.is_available()
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(evaluator(pattern)), name="evaluation")
    started = time.perf_counter()
    thread.start()
    traced = False
    if cuda:
        thread.join(trace_after)  # past the warm-up: data, model, autotuning and graph capture
        if thread.is_alive():
            activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            every_thread = torch.profiler._ExperimentalConfig(profile_all_threads=True) if ops else None
            with torch.profiler.profile(activities=activities, experimental_config=every_thread) as prof:
                alive = {trace_tid(t.ident): t.name for t in threading.enumerate()}  # as the trace names them
                thread.join(trace_seconds)
            prof.export_chrome_trace(str(out / "trace.json.gz"))  # gzipped: a few MB
            traced = True
        else:
            print(f"eval_profile.py: the evaluation ended within --trace-after {trace_after} s; no GPU trace")
    thread.join()
    wall = time.perf_counter() - started
    record = {"pattern": pattern, "overrides": overrides, "evaluator": cfg.name, "parallel": cfg.parallel,
              "warm_up_seconds": warmed, "score": result.get("score"), "device": torch.cuda.get_device_name() if cuda else "cpu",
              "critical_path": critical_path(out / "run" / "trials", wall)}
    if cfg.trainer.compile:  # per evaluation, the warm-ups' then the profiled one's
        record["compiles"] = [*compiles, compile_counts()]
    if traced:
        with gzip.open(out / "trace.json.gz", "rt") as f:
            trace = json.load(f)
        record["gpu"] = kernel_timeline(trace, trace_seconds * 1e6)
        record["gpu"]["trace_after_s"] = trace_after
        threads = {r["thread"]: name for name, r in record["critical_path"]["runs"].items() if r["thread"] is not None}
        record["gpu"]["runs"] = kernels_by_run(trace, threads, record["gpu"].get("window_s", trace_seconds) * 1e6, alive)
        record["gpu"]["threads_alive"] = alive
        if ops:
            record["gpu"]["eager_ops"] = kernels_by_op(trace)
    return record


def markdown(record: dict[str, Any]) -> str:
    from composer.engine.trainer import RUN_PHASES, WITHIN_PHASES

    cp, phases = record["critical_path"], (*RUN_PHASES, *WITHIN_PHASES)
    lines = [f"{record['pattern']} ({record['evaluator']}, parallel {record['parallel']}, {record['device']}): "
             f"score {record['score']:.3f}, {cp['wall_seconds']:.1f} s, busy streams {cp['busy_streams']}, "
             f"longest run {cp['longest_over_median']}x the median",
             "", "| run | steps | tokens | seconds | tokens/s | " + " | ".join(f"{p.replace('_', ' ')} s" for p in phases)
             + " |", "| --- |" + " ---: |" * (4 + len(phases))]
    lines += [f"| {name} | {r['steps']} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens_per_s']:,.0f} | "
              + " | ".join(f"{r['phases'].get(k, 0.0):.2f}" for k in phases)
              + " |" for name, r in cp["runs"].items()]
    if "compiles" in record:
        lines += ["", "compiled layers, per evaluation (warm-ups, then the profiled one): " + "; ".join(
            f"{c['frames']} frames traced into {c['graphs']} graphs, {c['graph_breaks']} graph breaks"
            for c in record["compiles"])]
    gpu = record.get("gpu")
    if gpu and gpu.get("kernels"):
        lines += ["", f"GPU, {gpu['window_s']} s from {gpu['trace_after_s']} s in: kernels running "
                  f"{100 * gpu['busy']:.0f}% of the time, {gpu['kernels']:,} kernels of {gpu['mean_kernel_us']} us "
                  "on average; with k at once: "
                  + ", ".join(f"{k}: {100 * v:.0f}%" for k, v in gpu["share_with_k_kernels"].items()),
                  "streams busy (one per task run): "
                  + ", ".join(f"{s}: {100 * v:.0f}%" for s, v in gpu["stream_busy"].items()),
                  "", "| kernel | count | ms | share of kernel time | mean us |", "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {k['name'][:90]} | {k['count']} | {k['ms']} | {100 * k['share']:.1f}% | {k['mean_us']} |"
                  for k in gpu["top_kernels"]]
        lines += ["", "| kernels from | count | share of kernels | share of kernel time | mean us |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {label} | {f['count']} | {100 * f['count_share']:.1f}% | {100 * f['share']:.1f}% | {f['mean_us']} |"
                  for label, f in gpu.get("families", {}).items()]
        lines += ["", "| run (kernels in the trace) | kernels | GPU ms | mean us | busy |", "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {name} | {r['kernels']} | {r['ms']} | {r['mean_us']} | {100 * r['busy']:.0f}% |"
                  for name, r in gpu.get("runs", {}).items()]
        if "eager_ops" in gpu:
            lines += ["", "| eager kernels launched by (scope > op) | kernels | GPU ms | share of eager time | mean us |",
                      "| --- | ---: | ---: | ---: | ---: |"]
            lines += [f"| {r['op'][:110]} | {r['kernels']} | {r['ms']} | {100 * r['share']:.1f}% | {r['mean_us']} |"
                      for r in gpu["eager_ops"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pattern", default="M*-*-M**M*-*M**-")  # issue 15's aggregate
    parser.add_argument("--trace-seconds", type=float, default=3.0)
    parser.add_argument("--trace-after", type=float, default=8.0, help="seconds into the evaluation the trace starts")
    parser.add_argument("--warm", type=int, default=1,
                        help="untraced evaluations of the pattern first, in this process (0: profile a cold process)")
    parser.add_argument("--ops", action="store_true",
                        help="record every thread's CPU ops too and name the ops that launched the eager kernels "
                             "(with evaluator.trainer.cuda_graph=false: a graph replay's kernels name no op)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    record = profile(args.pattern, args.overrides, args.out, args.trace_seconds, args.trace_after, args.warm, args.ops)
    (args.out / "profile.json").write_text(json.dumps(record, indent=2) + "\n")
    print(markdown(record))


if __name__ == "__main__":
    main()
