"""Search throughput: proxy evaluations per GPU-hour of `composer-search`, with the GPU's utilisation.

Runs `composer-search` (random strategy, so proposal cost is nil) with `--workers` processes on the
visible GPUs for `--seconds`, stops it with SIGINT (the search's own Ctrl-C path: running trials are
marked failed, completed ones kept), then counts the evaluations the study completed between the
first trial's start and the last completion. `nvidia-smi` is sampled every second meanwhile: the median
utilisation, the peak memory, and the share of samples past the warm-up under 30% busy (the gaps between waves of
evaluations, which the median hides).

    python benchmarks/search_throughput.py --workers 8 --seconds 240 --out $OUT/search_w8 -- evaluator=mad space=long
    python benchmarks/search_throughput.py --gpu-counts 1,8 --workers 3 --out $OUT/scale -- evaluator=mad space=long
    python benchmarks/search_throughput.py --sweep 3x1,3x2,1x6 --seconds 150 --out $OUT/sweep -- evaluator=mad space=long

With `--sweep 3x1,3x2,1x6` it measures each shape (worker processes x `evaluations_per_worker`) in turn,
each for `--seconds`, and writes `<out>/sweep.json` and a table with the ratios against the first (issue 17).
A shape ending in `m` (`3x1m`) runs under CUDA MPS: the script starts `nvidia-cuda-mps-control -d` for it
(pipe and log under its folder) and quits it after, so the worker processes' kernels can run side by side
instead of taking turns on the GPU. A shape given twice (`3x1,3x1`) is measured twice, in folders of its own
(`w3e1`, `w3e1-1`): the first warms the machine's caches (compiled layers with `evaluator.trainer.compile=true`).
A search that exits with an error (a setting the tree measured lacks) is one line, naming the search's own; in a
sweep that shape's row says it and the other shapes are measured. A shape of one evaluation per worker leaves
`evaluations_per_worker` unsaid, so the script also measures a tree from before that setting.

Two rates: completed evaluations over the window from the first start to the last completion (what a search
gets, setup and all; coarse in a short window), and the steady state: tokens every run trained per second
past the warm-up (`--warmup-share` of the time, sampled from the runs' metrics.jsonl every 5 s) over one
evaluation's tokens, which leaves out each evaluation's setup, capture and final evaluation. Beside them, the
median seconds of each worker's first evaluations (which build, tune and compile what later ones reuse) and of
the later ones.

With `--gpu-counts 1,8` it runs one search on the first GPU and one on the first eight, `--workers` per GPU,
and writes `<out>/scaling.json` with each and the speed-up in evaluations per hour against the first (issue 19).

Everything after `--` is a composer-search override. Prints one JSON line and writes it to
`<out>/throughput.json`, with the budget check: for each recall task of the evaluator, how many of the completed
patterns with attention reach >= 0.9, and their ten best scores (the issue wants attention patterns to still reach
>= 0.9 on in-context recall at the budget measured).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

MPS_CONTROL = "nvidia-cuda-mps-control"


class ShapeFailed(RuntimeError):
    """One measurement could not be made: a sweep records why in that shape's row and goes on."""


class MPSUnavailable(ShapeFailed):
    """CUDA MPS could not be started here."""


class SearchFailed(ShapeFailed):
    """The search exited with an error before its window ended (e.g. a setting the measured tree lacks)."""


def sample_gpu(out: Path, gpus: str | None = None) -> subprocess.Popen | None:
    try:
        return subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                                 "-l", "1", *(["-i", gpus] if gpus else [])], stdout=out.open("w"), stderr=subprocess.DEVNULL)
    except OSError:
        return None


def completed(run_dir: Path, name: str) -> list:
    import optuna

    from search.study import resolve_storage

    study = optuna.load_study(study_name=name, storage=resolve_storage(None, run_dir=run_dir))  # the search's default
    return [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("role") == "evaluate"]


def tokens_trained(trials: Path) -> int:
    """Tokens trained so far by every run under a search's trials/ (each run's last metrics.jsonl record)."""
    total = 0
    for metrics in trials.glob("*/*/metrics.jsonl"):
        for line in reversed(metrics.read_text().splitlines()):
            try:
                total += json.loads(line)["tokens"]
                break
            except (ValueError, KeyError):  # a line being written as we read
                continue
    return total


def steady_rate(progress: list[tuple[float, int]], *, warmup: float) -> float | None:
    """Tokens per second between the first sample past `warmup` seconds and the last sample."""
    window = [(t, n) for t, n in progress if t >= warmup]
    if len(window) < 2 or window[-1][0] <= window[0][0]:
        return None
    return (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])


IDLE_PCT = 30  # a one-second GPU sample under this utilisation counts as idle


def idle_share(util: list[float], *, warmup: float, end: float) -> float | None:
    """The share of nvidia-smi's one-second samples from `warmup` to `end` seconds (the window, before the search
    is stopped) under IDLE_PCT busy: the gaps between waves of evaluations (each run's start and end), which the
    median utilisation hides."""
    steady = util[int(warmup):int(end)]
    return round(sum(u < IDLE_PCT for u in steady) / len(steady), 3) if steady else None


def tokens_per_evaluation(trials: Path) -> int | None:
    """The median tokens of one completed evaluation: the sum over its runs (every summary.json completed)."""
    sums = []
    for folder in trials.glob("*"):
        summaries = [json.loads(f.read_text()) for f in folder.glob("*/summary.json")]
        if summaries and len(summaries) == len(list(folder.glob("*/"))) and all(
                s.get("status") == "completed" for s in summaries):
            sums.append(sum(s["tokens"] for s in summaries))
    return int(statistics.median(sums)) if sums else None


def phase_names() -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The trainer's RUN_PHASES and WITHIN_PHASES; None for a tree whose runs record no phases (measured as TREE)."""
    try:
        from composer.engine.trainer import RUN_PHASES, WITHIN_PHASES
    except ImportError:
        return None
    return RUN_PHASES, WITHIN_PHASES


def run_phases(trials: Path) -> dict | None:
    """Where the completed runs' time went (each summary.json's `seconds`, composer/engine/trainer.py's RUN_PHASES):
    the median seconds a run spends in each phase and the phase's share of all runs' time (setup + train_seconds);
    `steps` is the rest, training; WITHIN_PHASES (the capture, waiting for other threads) lie within the phases."""
    if (names := phase_names()) is None:
        return None
    PHASES, WITHIN = names
    runs = []
    for summary in trials.glob("*/*/summary.json"):
        s = json.loads(summary.read_text())
        if s.get("status") == "completed" and "seconds" in s:
            times = {phase: s["seconds"].get(phase, 0.0) for phase in (*PHASES, *WITHIN)}
            times["steps"] = s["train_seconds"] - sum(times[p] for p in PHASES[1:])
            times["run"] = times["setup"] + s["train_seconds"]
            runs.append(times)
    if not runs:
        return None
    total = sum(r["run"] for r in runs)
    return {"runs": len(runs), **{phase: {"median_s": round(statistics.median(r[phase] for r in runs), 3),
                                          "share": round(sum(r[phase] for r in runs) / total, 3)}
                                  for phase in ("run", *PHASES, "steps", *WITHIN)}}


def recall_of_attention_patterns(scores: dict[str, dict[str, float]]) -> dict[str, dict]:
    """The budget check, per recall task the evaluator trains (in-context, noisy, fuzzy: `mad_fast` has only the
    noisy one): of the completed patterns with attention (`*`), how many score >= 0.9, and the ten best scores.
    `scores`: pattern -> its per-task accuracies."""
    tasks = sorted({task for accuracies in scores.values() for task in accuracies if task.endswith("recall")})
    check = {}
    for task in tasks:
        values = sorted((acc[task] for p, acc in scores.items() if "*" in p and acc.get(task) is not None), reverse=True)
        check[task] = {"patterns": len(values), "at_least_0.9": sum(v >= 0.9 for v in values), "best": values[:10]}
    return check


def first_and_later(trials: list, slots: int) -> tuple[float | None, float | None]:
    """Median seconds of the first evaluations (the `slots` that started first: each worker's first, which builds,
    tunes and compiles what later ones reuse) and of the later ones; None where there are none."""
    ordered = sorted(trials, key=lambda t: t.datetime_start)
    first, later = ([t.duration.total_seconds() for t in part] for part in (ordered[:slots], ordered[slots:]))
    return (round(statistics.median(first), 1) if first else None, round(statistics.median(later), 1) if later else None)


@contextmanager
def mps_daemon(folder: Path) -> Iterator[dict[str, str]]:
    """CUDA MPS for the processes given the returned environment: started here, quit on leaving."""
    control = shutil.which(MPS_CONTROL)
    if control is None:
        raise MPSUnavailable(f"search_throughput.py: an MPS shape needs CUDA MPS, and {MPS_CONTROL} is not on PATH")
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(folder / "mps-pipe"), "CUDA_MPS_LOG_DIRECTORY": str(folder / "mps-log")}
    for path in env.values():
        Path(path).mkdir(parents=True, exist_ok=True)
    started = subprocess.run([control, "-d"], env={**os.environ, **env}, capture_output=True, text=True)
    if started.returncode != 0:
        raise MPSUnavailable(f"search_throughput.py: {MPS_CONTROL} -d failed: {(started.stderr or started.stdout).strip()}")
    try:
        yield env
    finally:
        subprocess.run([control], input="quit\n", text=True, env={**os.environ, **env}, capture_output=True)


def measure(args: argparse.Namespace, out: Path, workers: int, gpus: str | None, *, mps: bool = False) -> dict:
    """One search of `workers` processes for `args.seconds`, on the GPUs `gpus` (CUDA_VISIBLE_DEVICES; None: all),
    under CUDA MPS if `mps`."""
    out.mkdir(parents=True, exist_ok=True)
    with mps_daemon(out) if mps else nullcontext({}) as mps_env:
        return _measure(args, out, workers, gpus, mps_env)


def _measure(args: argparse.Namespace, out: Path, workers: int, gpus: str | None, mps_env: dict[str, str]) -> dict:
    name = f"throughput-w{workers}"
    cmd = [sys.executable, "-m", "composer.apps.search", "strategy=random", "n_trials=100000", "evaluator.top_k=0",
           f"workers={workers}", f"name={name}", "leaderboard=null", f"hydra.run.dir={out / 'run'}", *args.overrides]
    env = {**os.environ, **mps_env, **({"CUDA_VISIBLE_DEVICES": gpus} if gpus is not None else {})}
    gpu = sample_gpu(out / "gpu.csv", gpus)
    started = time.time()
    progress: list[tuple[float, int]] = []  # (seconds in, tokens trained by every run so far)
    with (out / "search.log").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None and time.time() - started < args.seconds:
            time.sleep(min(5.0, max(0.1, args.seconds - (time.time() - started))))
            progress.append((time.time() - started, tokens_trained(out / "run" / "trials")))
        exited = proc.poll()  # on its own, within the window: None while it runs
        for _ in range(3):  # Ctrl-C, as a user stops a search; again if it has not stopped a minute later
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    print("search_throughput.py: the search has not stopped 60 s after SIGINT; again", flush=True)
        if proc.poll() is None:
            proc.kill()
            sys.exit(f"the search did not stop on SIGINT; killed (see {out / 'search.log'})")
    wall = time.time() - started
    if gpu:
        gpu.terminate()
    if exited:
        said = [line for line in (out / "search.log").read_text().splitlines() if line.strip()]
        raise SearchFailed(f"search_throughput.py: the search exited with code {exited} after {wall:.0f} s: "
                           f"{said[-1].strip() if said else '(no output)'} (see {out / 'search.log'})")
    trials = completed(out / "run", name)
    if not trials and not getattr(args, "sweep", None):  # a sweep goes on: its steady rate may still say much
        sys.exit(f"no evaluation completed in {wall:.0f} s; see {out / 'search.log'}")
    first = min(t.datetime_start for t in trials).timestamp() if trials else started
    last = max(t.datetime_complete for t in trials).timestamp() if trials else started
    samples = [[float(v) for v in line.split(",")] for line in (out / "gpu.csv").read_text().splitlines()
               if line.strip() and line.split(",")[0].strip().replace(".", "").isdigit()] if gpu else []
    util = [sample[0] for sample in samples]
    n_gpus = len(gpus.split(",")) if gpus else _gpus()
    per_hour = len(trials) / (last - first) * 3600 if trials else None
    per_gpu_hour = None if per_hour is None else round(per_hour / max(1, n_gpus), 1)
    steady = steady_rate(progress, warmup=args.seconds * args.warmup_share)
    per_eval = tokens_per_evaluation(out / "run" / "trials")
    each = next((int(o.split("=", 1)[1]) for o in reversed(args.overrides) if o.startswith("evaluations_per_worker=")), 1)
    first_s, later_s = first_and_later(trials, workers * each)
    result = {
        "workers": workers, "gpus": n_gpus, "mps": bool(mps_env), "overrides": args.overrides, "wall_s": round(wall, 1), "completed": len(trials),
        "window_s": round(last - first, 1), "evaluations_per_hour": per_hour and round(per_hour, 1),
        "evaluations_per_gpu_hour": per_gpu_hour,
        "mean_eval_s": round(statistics.mean(t.duration.total_seconds() for t in trials), 2) if trials else None,
        "first_eval_s": first_s, "later_eval_s": later_s,  # medians: each worker's first evaluations, the rest
        # the steady state: tokens every run trained per second past the warm-up, over one evaluation's tokens
        # (no per-evaluation setup, capture or final evaluation counted; a precise figure from a short window)
        "tokens_per_s": round(steady) if steady else None, "tokens_per_evaluation": per_eval,
        "steady_evaluations_per_gpu_hour": round(steady / per_eval * 3600 / max(1, n_gpus), 1) if steady and per_eval else None,
        "gpu_util_median_pct": statistics.median(util) if util else None,
        "gpu_idle_share": idle_share(util, warmup=args.seconds * args.warmup_share, end=args.seconds),
        "gpu_memory_max_mib": max(sample[1] for sample in samples) if samples else None,
        "recall_of_attention_patterns": recall_of_attention_patterns(
            {t.user_attrs["pattern"]: t.user_attrs.get("tasks") or {} for t in trials}),
        "run_phases": run_phases(out / "run" / "trials"),
    }
    (out / "throughput.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8, help="worker processes; per GPU with --gpu-counts")
    parser.add_argument("--gpu-counts", default=None,
                        help="e.g. 1,8: one search on the first k GPUs for each k, in this run, and the speed-up")
    parser.add_argument("--sweep", default=None,
                        help="e.g. 3x1,3x2,1x6: worker processes x evaluations_per_worker, each measured in this run, "
                             "with the ratios against the first")
    parser.add_argument("--seconds", type=float, default=240, help="per measurement")
    parser.add_argument("--warmup-share", type=float, default=0.3,
                        help="share of --seconds before the steady-state token rate is read")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.sweep is not None and args.gpu_counts is not None:
        parser.error("--sweep and --gpu-counts are measured in runs of their own; give one")
    if args.out.exists() and any(args.out.iterdir()):  # its searches would resume, and count their trials again
        parser.error(f"--out {args.out} is not empty: a measurement there would resume the searches it holds; "
                     "give a new folder")
    try:
        if args.sweep is not None:
            sweep(parser, args)
        elif args.gpu_counts is None:
            measure(args, args.out, args.workers, None)
        else:
            scale(parser, args)
    except ShapeFailed as failed:
        sys.exit(str(failed))


def scale(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--gpu-counts: one search on the first k GPUs for each k, and the speed-up against the first."""
    try:
        counts = [int(k) for k in args.gpu_counts.split(",")]
    except ValueError:
        parser.error(f"--gpu-counts must be comma-separated integers, got {args.gpu_counts!r}")
    if not counts or min(counts) < 1:
        parser.error(f"--gpu-counts must be positive, got {args.gpu_counts!r}")
    rows = [measure(args, args.out / f"gpus{k}", args.workers * k, ",".join(map(str, range(k)))) for k in counts]
    base = rows[0]["evaluations_per_hour"]
    scaling = {"workers_per_gpu": args.workers, "rows": rows,
               "speedup": {str(r["gpus"]): round(r["evaluations_per_hour"] / base, 2) for r in rows}}
    (args.out / "scaling.json").write_text(json.dumps(scaling, indent=1) + "\n")
    print(json.dumps({"speedup": scaling["speedup"]}))


def sweep(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Each `W`x`E` of --sweep: a search of W workers training E evaluations each at once, in this run."""
    items = [re.fullmatch(r"([1-9]\d*)x([1-9]\d*)(m?)", item) for item in args.sweep.split(",")]
    if not items or not all(items):
        parser.error(f"--sweep takes WORKERSxEVALUATIONS items such as 3x1,1x6 (3x1m: under CUDA MPS), got {args.sweep!r}")
    shapes = [(int(m[1]), int(m[2]), m[3] == "m") for m in items]
    if any(mps for *_, mps in shapes) and shutil.which(MPS_CONTROL) is None:
        parser.error(f"an MPS shape (ending in m) needs CUDA MPS, and {MPS_CONTROL} is not on PATH")
    overrides = [o for o in args.overrides if not o.startswith("evaluations_per_worker=")]
    rows, repeats = [], {}
    for workers, each, mps in shapes:
        # 1 is the search's default, left unsaid: so the same script measures a tree from before the setting
        # (`throughput_device.sh`'s TREE, the "before" of issue 17)
        shaped = [*overrides, f"evaluations_per_worker={each}"] if each > 1 else overrides
        run = argparse.Namespace(**{**vars(args), "overrides": shaped})
        shape = f"{workers}x{each}" + ("m" if mps else "")
        # a shape given again is measured again in a folder of its own: the first warms what the machine caches
        # (compiled kernels, autotuning; `evaluator.trainer.compile=true` compiles each layer type once per shape)
        repeats[shape] = repeat = repeats.get(shape, -1) + 1
        folder = f"w{workers}e{each}{'mps' if mps else ''}" + (f"-{repeat}" if repeat else "")
        try:
            rows.append({"shape": shape, **measure(run, args.out / folder, workers, None, mps=mps)})
        except ShapeFailed as stop:  # the other shapes are still measured
            print(stop, flush=True)
            rows.append({"shape": shape, "error": str(stop)})
    for key in ("evaluations_per_gpu_hour", "steady_evaluations_per_gpu_hour"):
        base = rows[0].get(key)
        for row in rows:
            row[f"{key}_ratio"] = round(row[key] / base, 2) if base and row.get(key) else None
    (args.out / "sweep.json").write_text(json.dumps({"overrides": overrides, "rows": rows}, indent=1) + "\n")
    print("| workers x evaluations | completed | evaluations/GPU-hour | ratio | steady: tokens/s | evaluations/GPU-hour "
          f"| ratio | first / later evaluation s | GPU util | idle past warm-up (< {IDLE_PCT}%) | memory MiB |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if "error" in r:
            print(f"| {r['shape']} | {r['error']} |")
            continue
        print(f"| {r['shape']} | {r['completed']} | {r['evaluations_per_gpu_hour']} | {r['evaluations_per_gpu_hour_ratio']} "
              f"| {r['tokens_per_s']} | {r['steady_evaluations_per_gpu_hour']} | {r['steady_evaluations_per_gpu_hour_ratio']} "
              f"| {r['first_eval_s']} / {r['later_eval_s']} | {r['gpu_util_median_pct']} | {r['gpu_idle_share']} "
              f"| {r['gpu_memory_max_mib']} |")
    if not any(r.get("run_phases") for r in rows):
        return
    RUN_PHASES, WITHIN_PHASES = phase_names()
    columns = [*(p.replace("_", " ") for p in (*RUN_PHASES, "steps")), *(f"{p} (within)" for p in WITHIN_PHASES)]
    print("\nwhere the runs' time went (median seconds a run, share of all runs' time):\n\n"
          f"| workers x evaluations | runs | {' | '.join(columns)} |\n| --- | ---: |{' ---: |' * len(columns)}")
    for r in rows:
        if phases := r.get("run_phases"):
            print(f"| {r['shape']} | {phases['runs']} | " + " | ".join(
                f"{phases[k]['median_s']:.2f} s ({100 * phases[k]['share']:.0f}%)"
                for k in phases if k not in ("runs", "run")) + " |")


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


if __name__ == "__main__":
    main()
