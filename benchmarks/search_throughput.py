"""Search throughput: proxy evaluations per GPU-hour of `composer-search`, with the GPU's utilisation.

Runs `composer-search` (random strategy, so proposal cost is nil) with `--workers` processes on the
visible GPUs for `--seconds`, stops it with SIGINT (the search's own Ctrl-C path: running trials are
marked failed, completed ones kept), then counts the evaluations the study completed between the
first trial's start and the last completion. `nvidia-smi` is sampled every second meanwhile.

    python benchmarks/search_throughput.py --workers 8 --seconds 240 --out $OUT/search_w8 -- evaluator=mad space=long
    python benchmarks/search_throughput.py --gpu-counts 1,8 --workers 3 --out $OUT/scale -- evaluator=mad space=long

With `--gpu-counts 1,8` it runs one search on the first GPU and one on the first eight, `--workers` per GPU,
and writes `<out>/scaling.json` with each and the speed-up in evaluations per hour against the first (issue 19).

Everything after `--` is a composer-search override. Prints one JSON line and writes it to
`<out>/throughput.json`, with per-task accuracies of the completed patterns (the budget check: the
issue wants attention patterns to still reach >= 0.9 on in-context recall at the budget measured).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path


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


def measure(args: argparse.Namespace, out: Path, workers: int, gpus: str | None) -> dict:
    """One search of `workers` processes for `args.seconds`, on the GPUs `gpus` (CUDA_VISIBLE_DEVICES; None: all)."""
    out.mkdir(parents=True, exist_ok=True)
    name = f"throughput-w{workers}"
    cmd = [sys.executable, "-m", "composer.apps.search", "strategy=random", "n_trials=100000", "evaluator.top_k=0",
           f"workers={workers}", f"name={name}", "leaderboard=null", f"hydra.run.dir={out / 'run'}", *args.overrides]
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": gpus} if gpus is not None else {})}
    gpu = sample_gpu(out / "gpu.csv", gpus)
    started = time.time()
    with (out / "search.log").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            proc.wait(timeout=args.seconds)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
    wall = time.time() - started
    if gpu:
        gpu.terminate()
    trials = completed(out / "run", name)
    if not trials:
        sys.exit(f"no evaluation completed in {wall:.0f} s; see {out / 'search.log'}")
    first = min(t.datetime_start for t in trials).timestamp()
    last = max(t.datetime_complete for t in trials).timestamp()
    samples = [[float(v) for v in line.split(",")] for line in (out / "gpu.csv").read_text().splitlines()
               if line.strip() and line.split(",")[0].strip().replace(".", "").isdigit()] if gpu else []
    util = [sample[0] for sample in samples]
    recall = {t.user_attrs["pattern"]: (t.user_attrs.get("tasks") or {}).get("in_context_recall") for t in trials}
    with_attention = [v for p, v in recall.items() if "*" in p and v is not None]
    n_gpus = len(gpus.split(",")) if gpus else _gpus()
    per_hour = len(trials) / max(last - first, 1e-9) * 3600
    result = {
        "workers": workers, "gpus": n_gpus, "overrides": args.overrides, "wall_s": round(wall, 1), "completed": len(trials),
        "window_s": round(last - first, 1), "evaluations_per_hour": round(per_hour, 1),
        "evaluations_per_gpu_hour": round(per_hour / max(1, n_gpus), 1),
        "mean_eval_s": round(statistics.mean(t.duration.total_seconds() for t in trials), 2),
        "gpu_util_median_pct": statistics.median(util) if util else None,
        "gpu_memory_max_mib": max(sample[1] for sample in samples) if samples else None,
        "recall_of_attention_patterns": sorted(with_attention, reverse=True)[:10],
    }
    (out / "throughput.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8, help="worker processes; per GPU with --gpu-counts")
    parser.add_argument("--gpu-counts", default=None,
                        help="e.g. 1,8: one search on the first k GPUs for each k, in this run, and the speed-up")
    parser.add_argument("--seconds", type=float, default=240)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.gpu_counts is None:
        measure(args, args.out, args.workers, None)
        return
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


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


if __name__ == "__main__":
    main()
