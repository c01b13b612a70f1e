"""Pretraining scaling over GPUs of one host (issue 19): tokens/s, per GPU, MFU, memory, communication share.

For each GPU count, `composer-pretrain` under `torchrun --standalone` trains the same extrapolated config
(`composer-extrapolate pattern=... target=...`) for `--steps` steps at the same per-GPU micro-batch (so the
global batch grows with the GPUs, one micro-batch per step), with `trainer.profile_steps` on. Throughput and
MFU are medians of the logged intervals after the first two (compile and warm-up left out); peak memory and
the profile's shares (communication, of it exposed, compute, idle: composer/engine/profile.py) come from
rank 0's summary.json. Writes `<out>/scaling.json` and prints a markdown table; efficiency is tokens/s per
GPU against the smallest GPU count's.

    python benchmarks/pretrain_scaling.py --pattern '*-' --gpus 1,2,4,8 --data .device/corpus-tokens --out $OUT/scaling
    python benchmarks/pretrain_scaling.py --pattern 'M-M-M*-' --gpus 1,8 --micro-batch 2 --data ... -- trainer.activation_checkpointing=true
    python benchmarks/pretrain_scaling.py --target none --gpus 1,2 --cpu --out /tmp/s -- model.d_model=32 ...  # CPU, gloo

Everything after `--` is a composer-pretrain override for every run. The data only feeds the steps: any token
cache or corpus works (`model.vocab_size` stays the target's, so the head costs what it will).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any


def extrapolate(pattern: str, target: str, seq_len: int, out: Path) -> Path:
    folder = out / "extrapolate"
    subprocess.run([sys.executable, "-m", "composer.apps.extrapolate", f"pattern={pattern}", f"target={target}",
                    f"seq_len={seq_len}", f"hydra.run.dir={folder}"], check=True, capture_output=True, text=True)
    return folder


def run(gpus: int, args: argparse.Namespace, config: Path | None, out: Path) -> dict[str, Any]:
    run_dir = out / f"gpus{gpus}"
    batch = args.micro_batch * gpus
    overrides = [f"seq_len={args.seq_len}", f"trainer.batch_size={batch}", f"trainer.micro_batch_size={args.micro_batch}",
                 f"trainer.max_tokens={args.steps * batch * args.seq_len}", f"trainer.profile_steps={args.profile_steps}",
                 "trainer.eval_every=0", "trainer.ckpt_every=0", f"trainer.log_every={args.log_every}",
                 "trainer.progress=false", "export=false", "needle=false", "leaderboard=null", f"name=scaling-{gpus}",
                 f"hydra.run.dir={run_dir}", *([f"data.path={args.data}"] if args.data else []),
                 *(["trainer.device=cpu", "trainer.compile=false"] if args.cpu else ["trainer.compile=true"]), *args.overrides]
    where = ["--config-path", str(config.resolve()), "--config-name", "pretrain"] if config else []
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus),
               "-m", "composer.apps.pretrain", *where, *overrides]
    log = out / f"gpus{gpus}.log"
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if args.cpu else {})}
    with log.open("w") as f:
        code = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=args.timeout).returncode
    if code != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        return {"gpus": gpus, "error": f"exit {code}: " + " | ".join(tail)}
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "train/tokens_per_s" in r]
    steady = logged[2:] or logged  # the first intervals hold the compile and the warm-up
    tokens_per_s = statistics.median(r["train/tokens_per_s"] for r in steady)
    mfu = [r["train/mfu"] for r in steady if r.get("train/mfu") is not None]
    profile = summary.get("profile", {})
    return {"gpus": gpus, "global_batch": batch, "steps": summary.get("step"), "tokens_per_s": round(tokens_per_s),
            "tokens_per_s_per_gpu": round(tokens_per_s / gpus), "mfu": round(statistics.median(mfu), 4) if mfu else None,
            "peak_memory_gib": summary.get("peak_memory_gib"),
            **{f"profile_{k}": profile.get(k) for k in ("comm", "exposed_comm", "compute", "idle", "wall_ms_per_step")}}


def table(rows: list[dict[str, Any]]) -> str:
    ok = [r for r in rows if "error" not in r]
    base = ok[0]["tokens_per_s_per_gpu"] if ok else None
    pct = lambda v: "" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    lines = ["| GPUs | global batch | tokens/s | per GPU | efficiency | MFU | peak GiB | comm | exposed comm | idle |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['gpus']} | {r['error']} |")
            continue
        lines.append(f"| {r['gpus']} | {r['global_batch']} | {r['tokens_per_s']:,} | {r['tokens_per_s_per_gpu']:,} | "
                     f"{pct(r['tokens_per_s_per_gpu'] / base)} | {pct(r['mfu'])} | {r['peak_memory_gib'] or ''} | "
                     f"{pct(r['profile_comm'])} | {pct(r['profile_exposed_comm'])} | {pct(r['profile_idle'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pattern", default="*-")
    parser.add_argument("--target", default="1b", help="a composer-extrapolate target, or none (configs/pretrain.yaml)")
    parser.add_argument("--gpus", default="1,2,4,8", help="comma-separated process counts")
    parser.add_argument("--micro-batch", type=int, default=4, help="sequences per GPU per step")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--data", default=None, help="data.path for every run (a token cache is enough)")
    parser.add_argument("--cpu", action="store_true", help="processes on the CPU (gloo), for the code path")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    try:
        gpus = [int(g) for g in args.gpus.split(",")]
    except ValueError:
        parser.error(f"--gpus must be comma-separated integers, got {args.gpus!r}")
    if not gpus or min(gpus) < 1:
        parser.error(f"--gpus must be positive, got {args.gpus!r}")
    args.out.mkdir(parents=True, exist_ok=True)
    config = None if args.target == "none" else extrapolate(args.pattern, args.target, args.seq_len, args.out)
    if config is None:
        args.overrides = [f"model.pattern={args.pattern}", *args.overrides]
    rows = []
    for g in gpus:
        rows.append(run(g, args, config, args.out))
        print(json.dumps(rows[-1]), flush=True)
    record = {"pattern": args.pattern, "target": args.target, "seq_len": args.seq_len, "micro_batch": args.micro_batch,
              "steps": args.steps, "device": "cpu" if args.cpu else _gpu_name(), "rows": rows}
    (args.out / "scaling.json").write_text(json.dumps(record, indent=1) + "\n")
    print(table(rows))
    if any("error" in r for r in rows):
        sys.exit(1)


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    main()
