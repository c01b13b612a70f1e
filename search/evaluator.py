"""The evaluator: train a candidate pattern as a small proxy on the MAD tasks and score it.

Each task trains a fresh proxy (the task's vocabulary, the evaluator's width and primitive
settings) with the shared trainer under a fixed token budget, then measures test accuracy. With a
learning-rate sweep (`lrs`), every rate is trained and the best accuracy counts. The score is the
mean over tasks, equally weighted; per-task accuracies are kept.

    evaluator = Evaluator(evaluator_config_from_mapping({...}), run_dir=Path("outputs/search/x"))
    evaluator("*-M-*-", seed=0)  # {"score": 0.71, "tasks": {"in_context_recall": 0.99, ...}, ...}

Every training run has its own folder, `run_dir/trials/<pattern hash>/<task>-lr<lr>/`, keyed by
pattern and seed. A run that already finished there is read back, not retrained, and an
interrupted one resumes from its checkpoint: a trial killed half-way through its tasks loses at
most `trainer.ckpt_every` steps. Checkpoints are deleted once a run is done (`keep_checkpoints`).

This is the one module of `search/` that imports torch (through the trainer).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from composer.config import ModelConfig, from_mapping, model_config_from_mapping
from composer.errors import ConfigError
from composer.tasks import TASKS, build_task_config
from search.space import pattern_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class EvaluatorConfig:
    name: str = "mad"  # a label, recorded with every result
    # task name -> overrides of its baseline setting (composer/tasks.py); {} keeps the baseline
    tasks: Mapping[str, Any] = field(default_factory=lambda: {name: {} for name in TASKS})
    # the proxy model: ModelConfig fields but pattern and vocab_size, one section per primitive
    model: Mapping[str, Any] = field(default_factory=dict)
    trainer: Any = None  # composer.trainer.TrainerConfig, or a mapping of its fields
    lrs: tuple[float, ...] = ()  # learning-rate sweep per task, best accuracy counts; () = trainer.lr
    seed: int = 0  # the search's seed: model init, data and test set
    top_k: int = 0  # after the search, re-evaluate the best k patterns over `reeval_seeds`
    reeval_seeds: tuple[int, ...] = (1, 2)
    keep_checkpoints: bool = False  # delete each finished run's checkpoint (they add up over thousands)

    def __post_init__(self) -> None:
        from composer.trainer import TrainerConfig

        if not isinstance(self.tasks, Mapping) or not self.tasks:
            raise ConfigError(f"evaluator.tasks must map task names to settings, got {self.tasks!r}")
        tasks = {}
        for name, overrides in self.tasks.items():
            if name not in TASKS:
                raise ConfigError(f"evaluator.tasks: unknown task {name!r} (valid tasks: {', '.join(TASKS)})")
            tasks[name] = overrides if not isinstance(overrides, Mapping) else build_task_config(name, overrides)
        object.__setattr__(self, "tasks", MappingProxyType(tasks))
        trainer = self.trainer if isinstance(self.trainer, TrainerConfig) else from_mapping(
            TrainerConfig, self.trainer, where="evaluator.trainer")
        object.__setattr__(self, "trainer", trainer)
        object.__setattr__(self, "model", MappingProxyType(dict(self.model)))
        for key in ("pattern", "vocab_size"):
            if key in self.model:
                raise ConfigError(f"evaluator.model.{key}: set by the search (the candidate) and the task, not here")
        self.proxy("*", vocab_size=16)  # a bad width or primitive setting fails now, not in trial 1
        lrs = tuple(self.lrs)
        if any(isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 for lr in lrs):
            raise ConfigError(f"evaluator.lrs must be positive learning rates, got {list(lrs)}")
        object.__setattr__(self, "lrs", tuple(float(lr) for lr in lrs))
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"evaluator.top_k must be an integer >= 0, got {self.top_k!r}")
        seeds = tuple(self.reeval_seeds)
        if any(isinstance(s, bool) or not isinstance(s, int) for s in seeds) or self.seed in seeds:
            raise ConfigError(f"evaluator.reeval_seeds must be integers other than seed={self.seed}, got {list(seeds)}")
        object.__setattr__(self, "reeval_seeds", seeds)

    def proxy(self, pattern: str, *, vocab_size: int) -> ModelConfig:
        """The proxy ModelConfig of `pattern` for a task with `vocab_size` tokens."""
        return model_config_from_mapping({**self.model, "pattern": pattern, "vocab_size": vocab_size},
                                         where="evaluator.model")

    @property
    def learning_rates(self) -> tuple[float, ...]:
        return self.lrs or (self.trainer.lr,)

    @property
    def d_model(self) -> int:
        return self.proxy("*", vocab_size=16).d_model


def evaluator_config_from_mapping(data: Mapping[str, Any] | None) -> EvaluatorConfig:
    return from_mapping(EvaluatorConfig, data, where="evaluator")


class Evaluator:
    """Callable `evaluator(pattern, seed=None) -> {"score", "tasks", ...}`; seed None is cfg.seed."""

    def __init__(self, cfg: EvaluatorConfig, *, run_dir: Path, device: str | None = None) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        # Search workers train quietly: the search prints one line per trial instead.
        self.trainer = replace(cfg.trainer, progress=False, **({"device": device} if device else {}))

    def __call__(self, pattern: str, seed: int | None = None) -> dict[str, Any]:
        seed = self.cfg.seed if seed is None else seed
        started = time.perf_counter()
        tasks, best_lr = {}, {}
        for name, task_cfg in self.cfg.tasks.items():
            accuracy, lr = self._task(pattern, name, task_cfg, seed)
            tasks[name], best_lr[name] = accuracy, lr
        result = {"score": sum(tasks.values()) / len(tasks), "tasks": tasks, "seed": seed,
                  "seconds": round(time.perf_counter() - started, 2)}
        if len(self.cfg.learning_rates) > 1:
            result["best_lr"] = best_lr
        return result

    def _task(self, pattern: str, name: str, task_cfg: Any, seed: int) -> tuple[float, float]:
        """Best test accuracy over the learning rates, and the rate that reached it."""
        from composer.trainer import DivergedError

        best: tuple[float, float] | None = None
        errors = []
        for lr in self.cfg.learning_rates:
            folder = self.run_dir / "trials" / pattern_hash(pattern, seed=seed) / f"{name}-lr{lr:g}"
            try:
                accuracy = self._run(pattern, name, task_cfg, seed, replace(self.trainer, lr=lr), folder)
            except DivergedError as exc:  # one rate of a sweep diverging is a result, not a failure
                errors.append(f"lr {lr:g}: {exc}")
                continue
            if best is None or accuracy > best[0]:
                best = (accuracy, lr)
        if best is None:
            raise DivergedError(f"{name} diverged at every learning rate: {'; '.join(errors)}")
        return best

    def _run(self, pattern: str, name: str, task_cfg: Any, seed: int, trainer: Any, folder: Path) -> float:
        from composer.proxy import train_on_task
        from composer.trainer import CHECKPOINT

        done = _finished(folder, pattern=pattern, task=name, seed=seed)
        if done is None:
            model_cfg = self.cfg.proxy(pattern, vocab_size=task_cfg.vocab_size)
            try:
                summary = train_on_task(model_cfg=model_cfg, task_name=name, task_cfg=task_cfg, trainer_cfg=trainer,
                                        seed=seed, run_dir=folder)
            except Exception:
                _free_accelerator_memory()  # an OOM must not poison the next trial in this worker
                raise
            done = float(summary["final"]["accuracy"])
            if not self.cfg.keep_checkpoints:
                (folder / CHECKPOINT).unlink(missing_ok=True)
        if not math.isfinite(done):
            raise FloatingPointError(f"{name}: test accuracy is {done}")
        log.debug("%s %s seed %d lr %g: accuracy %.4f", pattern, name, seed, trainer.lr, done)
        return done


def _finished(folder: Path, *, pattern: str, task: str, seed: int) -> float | None:
    """The accuracy of a run that already completed in `folder`, if it is this run."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if summary.get("status") != "completed" or (summary.get("pattern"), summary.get("task"), summary.get("seed")) != (
        pattern, task, seed):
        return None
    return float(summary["final"]["accuracy"])


def _free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
