"""Proxy training speed on one GPU: steps/s of a 16-layer MAD proxy per step mode, then with runs side by side.

A search's proxies are tiny (width 128, 32 x 128 tokens per step): their steps are bound by kernel
launches, not FLOPs. This times the search's own path (`composer.runs.proxy.train_on_task`, the shared
trainer) on one MAD task at its baseline setting (`--task`, in-context recall by default) at the `mad` evaluator's
width and batch:
- per pattern and mode: eager, `cuda_graph` (one captured step), `compile+cuda_graph`;
- then `--concurrency` runs at once in threads, each on its own CUDA stream (what
  `evaluator.parallel` does), for the aggregate steps/s;
- with `--batch-sizes`, one run at each larger batch: a step of 4x or 16x the sequences is what one step
  of 4 or 16 candidates folded into one model's kernels would cost at best (issue 17's stacking lead).
`--inductor name=value,...` sets torch._inductor.config for the compiled modes (e.g. `combo_kernels=True`: whether the
compiler's horizontal fusion makes a step's ~900 small kernels fewer and the step faster; one setting per process);
`--precision fp32` (with `--tf32`) trains without bf16 autocast. Side by side, the process's CPU seconds are reported
beside the wall's: near the wall's with several runs, one thread's worth of host work would be the bound.
A run's speed is the median of its logged intervals after the capture (warm-up and compile
excluded); the aggregate is the sum over runs that overlapped for their whole length. The estimate
of evaluations per GPU-hour divides by the `mad` evaluator's steps per evaluation (all six tasks),
counting every task's step as one 128-token step: the search itself is measured by search_throughput.py.

    python benchmarks/proxy_bench.py --out $OUT/proxy_bench.json
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

from composer.engine.graphs import own_stream
from composer.engine.trainer import TrainerConfig
from composer.runs.proxy import task_data, train_on_task
from composer.tasks.mad import TASKS, task_config_from_mapping
from eval_profile import evaluator_config  # benchmarks/, first on the path of a script run from it
from search.evaluator import EvaluatorConfig

PATTERNS = ("*-*-*-*-*-*-*-*-", "*-M-*-M-*-M-*-M-", "MMMMMMMMMMMMMMMM")
MODES = {"eager": {}, "cuda_graph": {"cuda_graph": True}, "compile+cuda_graph": {"cuda_graph": True, "compile": True}}


def steps_per_evaluation(batch_tokens: int = 0) -> int:
    """Optimiser steps of one `mad` evaluation: 2M tokens per task at batch 32 (5,614 steps: lengths
    128 x 3, 256, 32 x 2), or at `batch_tokens` tokens per step."""
    lengths = [task_config_from_mapping(name, {}).length for name in TASKS]
    return sum(2_000_000 // (batch_tokens // n * n if batch_tokens else 32 * n) for n in lengths)


def proxy_settings(mamba_impl: str, mamba_chunk_size: int) -> EvaluatorConfig:
    """The `mad` evaluator as a search composes it (its proxy's width and primitive settings), Mamba-2's as asked."""
    return evaluator_config(["evaluator=mad", f"evaluator.model.mamba2.impl={mamba_impl}",
                             f"evaluator.model.mamba2.chunk_size={mamba_chunk_size}"])


def inductor_settings(spec: str) -> dict[str, object]:
    """`--inductor`'s "name=value,..." as torch._inductor.config settings (values as Python literals), set in this
    process before anything compiles; an unknown name is refused in one line."""
    import torch._inductor.config as inductor

    settings: dict[str, object] = {}
    for item in filter(None, spec.split(",")):
        name, sep, value = item.partition("=")
        if not sep or not hasattr(inductor, name):
            raise SystemExit(f"--inductor: {item!r} is not name=value of a torch._inductor.config setting")
        try:
            settings[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise SystemExit(f"--inductor: {name}'s value {value!r} is not a Python literal (True, 2, 'name')") from None
        setattr(inductor, name, settings[name])
    return settings


def run(pattern: str, mode: str, *, steps: int, task: str, folder: Path, evaluator: EvaluatorConfig,
        batch_size: int = 32, precision: str = "auto") -> float:
    """Steady steps/s of one run of `evaluator`'s proxy on `task` at its baseline setting, through the search's own
    path."""
    task_cfg = task_config_from_mapping(task, {})
    seq_len = task_data(task, task_cfg, 0)[0].shape[1]  # the tokens a sequence feeds in (compression: 33)
    cfg = TrainerConfig(max_tokens=steps * batch_size * seq_len, batch_size=batch_size, lr=3e-3, log_every=10,
                        ckpt_every=0, progress=False, precision=precision, **MODES[mode])
    train_on_task(model_cfg=evaluator.proxy(pattern, vocab_size=task_cfg.vocab_size), task_name=task, task_cfg=task_cfg,
                  trainer_cfg=cfg, seed=0, run_dir=folder)
    rates = [json.loads(line)["train/tokens_per_s"] / (batch_size * seq_len)
             for line in (folder / "metrics.jsonl").read_text().splitlines() if "train/tokens_per_s" in line]
    return statistics.median(rates[2:])  # the first intervals hold the warm-up, compile and capture


def side_by_side(pattern: str, mode: str, k: int, **kwargs) -> tuple[float, float, float]:
    """(aggregate steps/s, wall seconds, this process's CPU seconds over them) of k runs in threads on their own
    streams. CPU seconds near the wall's with k > 1 say one thread's worth of host work (the GIL, the driver's launch
    lock) is the bound, not the GPU."""
    rates, errors = [0.0] * k, []

    def one(i: int) -> None:
        try:
            with own_stream("auto"):
                rates[i] = run(pattern, mode, folder=kwargs["folder"] / f"r{i}", **{a: b for a, b in kwargs.items() if a != "folder"})
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    started, cpu = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(rates), time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patterns", default=",".join(PATTERNS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--concurrency", default="1,6,12,24")
    parser.add_argument("--concurrency-mode", default="cuda_graph")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--mamba-impl", default="torch")
    parser.add_argument("--mamba-chunk-size", type=int, default=64,
                        help="Mamba-2's chunk_size (a recall task's 128 tokens are one chunk of the torch scan at 128)")
    parser.add_argument("--batch-sizes", default="",
                        help="e.g. 32,128,512: one run per pattern at each batch size in --concurrency-mode, for how a "
                             "step's time grows with its work (what folding K candidates into one step's kernels could gain)")
    parser.add_argument("--task", default="in_context_recall", choices=sorted(TASKS),
                        help="the MAD task at its baseline setting (recall: 128 tokens, selective copying: 256, compression: 33)")
    parser.add_argument("--inductor", default="",
                        help="torch._inductor.config settings for the compiled modes, e.g. combo_kernels=True (one "
                             "launch for independent kernels) or aggressive_fusion=True: kernels a step, fewer or not")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                        help="the trainer's precision (auto: bf16 autocast on a GPU); fp32 has no weight casts a step")
    parser.add_argument("--tf32", action="store_true", help="fp32 matmuls and convolutions on TF32 tensor cores")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    inductor = inductor_settings(args.inductor)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    evaluator = proxy_settings(args.mamba_impl, args.mamba_chunk_size)  # composed once, not in the runs' threads
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)"
    results = {"gpu": gpu, "torch": torch.__version__, "steps": args.steps, "task": args.task,
               "mamba_impl": args.mamba_impl, "mamba_chunk_size": args.mamba_chunk_size, "inductor": inductor,
               "precision": args.precision, "tf32": args.tf32,
               "single": {}, "side_by_side": {}}
    with TemporaryDirectory() as tmp:
        for pattern in args.patterns.split(","):
            for mode in args.modes.split(","):
                rate = run(pattern, mode, steps=args.steps, task=args.task, folder=Path(tmp) / f"{mode}-{pattern}",
                           evaluator=evaluator, precision=args.precision)
                results["single"][f"{pattern} {mode}"] = round(rate, 1)
                print(f"{pattern}  {mode:>20}: {rate:8.1f} steps/s", flush=True)
            for batch in [int(b) for b in args.batch_sizes.split(",") if b]:
                rate = run(pattern, args.concurrency_mode, steps=args.steps, task=args.task, batch_size=batch,
                           folder=Path(tmp) / f"b{batch}-{pattern}", evaluator=evaluator, precision=args.precision)
                results.setdefault("batch", {})[f"{pattern} {args.concurrency_mode} b{batch}"] = {
                    "steps_per_s": round(rate, 1), "sequences_per_s": round(rate * batch)}
                print(f"{pattern}  batch {batch:4d} ({args.concurrency_mode}): {rate:8.1f} steps/s = "
                      f"{rate * batch / 32:8.1f} batch-32 steps/s", flush=True)
            for k in map(int, args.concurrency.split(",")):
                rate, wall, cpu = side_by_side(pattern, args.concurrency_mode, k, steps=args.steps, task=args.task,
                                               folder=Path(tmp) / f"k{k}-{pattern}", evaluator=evaluator,
                                               precision=args.precision)
                per_hour = rate * 3600 / steps_per_evaluation()
                results["side_by_side"][f"{pattern} {args.concurrency_mode} x{k}"] = {
                    "steps_per_s": round(rate, 1), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                    "evaluations_per_gpu_hour_est": round(per_hour),
                    "evaluations_per_gpu_hour_est_batch_tokens_4096": round(rate * 3600 / steps_per_evaluation(4096))}
                print(f"{pattern}  {k:3d} runs side by side ({args.concurrency_mode}): {rate:8.1f} steps/s "
                      f"-> ~{per_hour:.0f} evaluations/GPU-hour ({wall:.0f} s wall, {cpu:.0f} CPU-s)", flush=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
