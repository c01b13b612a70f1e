"""What the trainer reports while it runs: throughput, MFU, the progress bar (or a log line every 10%
of the run off a terminal), and the records of `metrics.jsonl` (and Weights & Biases).

The trainer decides when to read the loss (a host sync); the meter only times, formats and writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from composer.engine import distributed

# The trainer's own lines, under its name: search.runner quiets "composer.engine.trainer" by it.
log = logging.getLogger("composer.engine.trainer")


class Records:
    """metrics.jsonl (append-only, truncated back to the checkpoint on resume) and optional wandb."""

    def __init__(self, run_dir: Path, *, resume_step: int | None, cfg: Any, config: dict[str, Any],
                 enabled: bool = True) -> None:
        self.path, self.enabled, self.wandb = run_dir / "metrics.jsonl", enabled, None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():  # drop records past the checkpoint
            text = self.path.read_text()
            text = text[:text.rfind("\n") + 1]  # and a line a kill cut short
            kept = [line for line in text.splitlines() if json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None:
            self.path.write_text("")
        if cfg.wandb:
            import wandb

            self.wandb = wandb.init(project=cfg.wandb_project, dir=str(run_dir), config=config, resume="allow",
                                    id="composer-" + hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12])

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log(record, step=record["step"])

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


class Meter:
    """One run's clocks, progress bar and records. `start` begins timing at the first step to run;
    `train` and `eval` record what the trainer measured after a step; `close` ends the bar and records.

    `cfg` is the run's TrainerConfig (log_every, progress); MFU needs both `flops_per_token` and `peak`
    (FLOP/s per device)."""

    def __init__(self, records: Records, *, cfg: Any, total_steps: int, tokens_per_step: int,
                 flops_per_token: float | None, peak: float | None, world: distributed.World) -> None:
        self.records, self.cfg, self.world = records, cfg, world
        self.total_steps, self.tokens_per_step = total_steps, tokens_per_step
        self.flops_per_token, self.peak = flops_per_token, peak
        self.report_every = max(1, total_steps // 10)

    def start(self, step: int) -> None:
        self.interactive = self.cfg.progress and self.world.main and sys.stderr.isatty()
        self.bar = tqdm(total=self.total_steps, initial=step, disable=not self.interactive, desc="train",
                        unit="step", dynamic_ncols=True)
        self.started, self.tic, self.start_step = time.perf_counter(), time.perf_counter(), step

    def close(self) -> None:
        self.bar.close()
        self.records.close()

    def logged(self, step: int) -> bool:
        """Whether step `step` (1-based: steps done) writes a metrics.jsonl record."""
        return step % self.cfg.log_every == 0 or step == self.total_steps

    def reported(self, step: int) -> bool:
        """Whether step `step` shows its loss on the bar's log-line stand-in (every 10% of the run)."""
        return self.cfg.progress and (step % self.report_every == 0 or step == self.total_steps)

    def due(self, step: int) -> bool:
        """Whether step `step` needs its loss and gradient norm read from the device."""
        return self.logged(step) or self.reported(step)

    def mfu(self, tokens_per_s: float) -> float | None:
        """Model FLOPs utilisation over all ranks; None without the FLOPs per token or the device's peak."""
        if self.flops_per_token and self.peak:
            return tokens_per_s * self.flops_per_token / (self.world.world_size * self.peak)
        return None

    def train(self, step: int, *, loss: float, lr: float, grad_norm: float, extra: dict[str, float] | None = None) -> None:
        """The record of a logged step (throughput since the last one; `extra`: more keys, such as the
        layers' auxiliary terms) and the periodic log line."""
        if self.logged(step):
            toc = time.perf_counter()
            n_steps = self.cfg.log_every if step % self.cfg.log_every == 0 else step % self.cfg.log_every
            tokens_per_s = n_steps * self.tokens_per_step / (toc - self.tic)
            record = {"step": step, "tokens": step * self.tokens_per_step, "train/loss": loss, "train/lr": lr,
                      "train/grad_norm": grad_norm, "train/tokens_per_s": tokens_per_s}
            if (mfu := self.mfu(tokens_per_s)) is not None:
                record["train/mfu"] = mfu
            self.records.write({**record, **(extra or {})})
            self.bar.set_postfix(loss=f"{loss:.4f}")
            self.tic = toc
        if self.reported(step) and not self.interactive and self.world.main:
            log.info("step %d/%d  loss %.4f  lr %.2e  %.0f tokens/s", step, self.total_steps, loss, lr,
                     (step - self.start_step) * self.tokens_per_step / (time.perf_counter() - self.started))

    def eval(self, step: int, metrics: dict[str, float]) -> None:
        self.records.write({"step": step, "tokens": step * self.tokens_per_step,
                            **{f"eval/{k}": v for k, v in metrics.items()}})
        if self.world.main:
            log.info("step %d: eval loss %.4f, accuracy %.4f", step, metrics["loss"], metrics["accuracy"])

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def throughput(self, step: int, elapsed: float) -> dict[str, float]:
        """The summary's mean tokens/s and MFU over the steps this process ran (none: nothing to add)."""
        if step <= self.start_step:
            return {}
        tokens_per_s = round((step - self.start_step) * self.tokens_per_step / elapsed, 1)
        mfu = self.mfu(tokens_per_s)
        return {"tokens_per_s": tokens_per_s} if mfu is None else {"tokens_per_s": tokens_per_s, "mfu": mfu}
