"""Train one pattern on one MAD task with the shared trainer: what `composer-train` and the search's
evaluator both run."""

from __future__ import annotations

import platform
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from composer.config import ModelConfig
from composer.data import ArrayBatches
from composer.model import build_model
from composer.pattern import count_primitives
from composer.tasks import TASKS
from composer.trainer import Objective, TrainerConfig, resolve_device, train
from scaling.accounting import count_parameters


def environment() -> dict[str, Any]:
    """Code version and environment, recorded in every run folder."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": bool(dirty) if commit else None,
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "host": platform.node()}


def train_on_task(
    *, model_cfg: ModelConfig, task_name: str, task_cfg: Any, trainer_cfg: TrainerConfig, seed: int, run_dir: Path
) -> dict[str, Any]:
    """Build the model (deterministic for `seed`), train it on the task, return the summary.

    The training and test sets are drawn from disjoint seed streams (2·seed and 2·seed + 1).
    """
    task = TASKS[task_name]
    train_x, train_y = task.generate(task_cfg, n_examples=task_cfg.n_train, seed=2 * seed)
    test_x, test_y = task.generate(task_cfg, n_examples=task_cfg.n_test, seed=2 * seed + 1)
    model = build_model(model_cfg, seed=seed).to(resolve_device(trainer_cfg.device))
    head = None
    if task.build_head is not None:
        with torch.random.fork_rng():
            torch.manual_seed(seed + 1)
            head = task.build_head(task_cfg, model_cfg.d_model)
    micro = trainer_cfg.batch_size // trainer_cfg.grad_accum
    eval_batches = [(test_x[i : i + micro], test_y[i : i + micro]) for i in range(0, len(test_x), micro)]
    # What defines the run: a checkpoint is only resumed under the same signature.
    signature = {"pattern": model_cfg.pattern, "task": task_name, "seed": seed, "model": asdict(model_cfg),
                 "task_config": asdict(task_cfg)}
    summary = {
        **count_parameters(model_cfg),
        "n_layers": model_cfg.n_layers,
        "layers": count_primitives(model_cfg.pattern),
        "impl": model.impl_report(),
        "environment": environment(),
    }
    return train(
        Objective(model, head),
        train_batches=ArrayBatches(train_x, train_y, batch_size=micro, seed=seed),
        eval_batches=eval_batches,
        seq_len=train_x.shape[1],
        cfg=trainer_cfg,
        run_dir=run_dir,
        signature=signature,
        summary=summary,
    )
