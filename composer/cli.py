"""Command-line apps (Hydra lives here and nowhere else): `composer-train`.

Known errors (bad pattern, unknown key, missing file, diverged run) print one line on stderr and
exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from composer.errors import ComposerError, ConfigError

log = logging.getLogger("composer")


def _one_line(exc: BaseException) -> str:
    """Hydra and OmegaConf errors span several lines; say what key is wrong in one."""
    from hydra.errors import ConfigCompositionException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    cause = exc.__cause__ if isinstance(exc, ConfigCompositionException) else exc
    if isinstance(cause, OmegaConfBaseException) and "not in struct" in str(cause):
        key = getattr(cause, "full_key", None) or str(cause).split("'")[1]
        return f"unknown config key {key!r} (check the spelling; `composer-train --cfg job` prints every key)"
    if isinstance(exc, MissingConfigException):
        options = ", ".join(getattr(exc, "options", None) or [])
        return f"{str(exc).splitlines()[0]}" + (f" (available: {options})" if options else "")
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return f"{cause.full_key}: {str(cause).splitlines()[0]}"
    return " ".join(str(exc).split())


def run_app(app, prog: str) -> None:
    """Run a Hydra app so that user errors come back as one line and exit code 2."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # let errors reach us instead of Hydra's printer
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        app()
    except (ComposerError, HydraException, OmegaConfBaseException) as exc:
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(2)


def _plain(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def train_from_config(cfg: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The `composer-train` job on a plain config mapping (what Hydra composed)."""
    from composer.config import from_mapping, model_config_from_mapping
    from composer.proxy import train_on_task
    from composer.tasks import build_task_config
    from composer.trainer import TrainerConfig

    unknown = sorted(set(cfg) - {"model", "task", "trainer", "seed"})
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r} (valid: model, task, trainer, seed)")
    task_section = dict(cfg["task"])
    task_name = task_section.pop("name")
    task_cfg = build_task_config(task_name, task_section)
    model_section = dict(cfg["model"])
    vocab = model_section.pop("vocab_size", None) or task_cfg.vocab_size
    if vocab < task_cfg.vocab_size:
        raise ConfigError(f"model.vocab_size ({vocab}) is smaller than task {task_name}'s vocabulary ({task_cfg.vocab_size})")
    model_cfg = model_config_from_mapping({**model_section, "vocab_size": vocab})
    trainer_cfg = from_mapping(TrainerConfig, cfg["trainer"], where="trainer")
    log.info("training %r (%d layers) on %s in %s", model_cfg.pattern, model_cfg.n_layers, task_name, run_dir)
    summary = train_on_task(model_cfg=model_cfg, task_name=task_name, task_cfg=task_cfg, trainer_cfg=trainer_cfg,
                            seed=int(cfg["seed"]), run_dir=run_dir)
    final = summary["final"]
    log.info("done: %r  params %d  loss %.4f  accuracy %.4f  -> %s", model_cfg.pattern, summary["n_params"],
             final["loss"], final["accuracy"], run_dir / "summary.json")
    return summary


_failed_jobs: list[str] = []


def _job(prog: str, body) -> None:
    """Run one Hydra job. A user error ends a single run at once (one line, exit 2); in a `-m` sweep
    it is reported and the sweep goes on, exiting 2 at the end."""
    from hydra.types import RunMode

    hc = HydraConfig.get()
    try:
        body(Path(hc.runtime.output_dir))
    except KeyboardInterrupt:
        command = [prog, *(o for o in hc.overrides.task if not o.startswith("hydra.run.dir=")),
                   f"hydra.run.dir={hc.runtime.output_dir}"]
        print(f"{prog}: interrupted; the last checkpoint is kept. Resume with: {shlex.join(command)}", file=sys.stderr)
        sys.exit(130)
    except ComposerError as exc:
        if hc.mode != RunMode.MULTIRUN:
            print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
            sys.exit(2)
        print(f"{prog}: job {hc.job.num} ({' '.join(hc.overrides.task)}) failed: {_one_line(exc)}", file=sys.stderr)
        _failed_jobs.append(hc.runtime.output_dir)


@hydra.main(config_path="pkg://configs", config_name="train", version_base=None)
def _train_app(cfg: DictConfig) -> None:
    def body(run_dir: Path) -> None:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        train_from_config(_plain(cfg), run_dir)

    _job("composer-train", body)


def train_main() -> None:
    run_app(_train_app, "composer-train")
    if _failed_jobs:
        print(f"composer-train: {len(_failed_jobs)} job(s) failed: {', '.join(_failed_jobs)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    train_main()
