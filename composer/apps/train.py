"""`composer-train`: one proxy on one MAD task with the shared trainer.

    composer-train model.pattern='*-M-*-M-' task=in_context_recall
    composer-train -m model.pattern='*-*-','M-M-'       # a sweep: one run folder per pattern
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra

from composer.apps.common import hydra_job, run_hydra
from composer.errors import ConfigError

PROG = "composer-train"
log = logging.getLogger("composer")


def train_from_config(cfg: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The `composer-train` job on a plain config mapping (what Hydra composed)."""
    from composer.config import from_mapping, model_config_from_mapping
    from composer.engine.trainer import TrainerConfig
    from composer.runs.proxy import train_on_task
    from composer.tasks.mad import task_config_from_mapping

    unknown = sorted(set(cfg) - {"model", "task", "trainer", "seed"})
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r} (valid: model, task, trainer, seed)")
    task_section = dict(cfg["task"])
    task_name = task_section.pop("name")
    task_cfg = task_config_from_mapping(task_name, task_section)
    model_cfg = model_config_from_mapping(cfg["model"], vocab_size=task_cfg.vocab_size)
    if model_cfg.vocab_size < task_cfg.vocab_size:
        raise ConfigError(f"model.vocab_size ({model_cfg.vocab_size}) is smaller than task {task_name}'s vocabulary "
                          f"({task_cfg.vocab_size})")
    trainer_cfg = from_mapping(TrainerConfig, cfg["trainer"], where="trainer")
    log.info("training %r (%d layers) on %s in %s", model_cfg.pattern, model_cfg.n_layers, task_name, run_dir)
    summary = train_on_task(model_cfg=model_cfg, task_name=task_name, task_cfg=task_cfg, trainer_cfg=trainer_cfg,
                            seed=int(cfg["seed"]), run_dir=run_dir)
    final = summary["final"]
    log.info("done: %r  params %d  loss %.4f  accuracy %.4f  -> %s", model_cfg.pattern, summary["n_params"],
             final["loss"], final["accuracy"], run_dir / "summary.json")
    return summary


@hydra.main(config_path="pkg://configs", config_name="train", version_base=None)
def _app(cfg) -> None:
    hydra_job(PROG, cfg, train_from_config)


def main(argv: list[str] | None = None) -> int:
    return run_hydra(_app, PROG, argv)


if __name__ == "__main__":
    raise SystemExit(main())
