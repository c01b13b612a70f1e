"""`composer-pretrain`: full pretraining of one pattern on real text (FSDP2 over torchrun).

    composer-pretrain model.pattern='M-M-M*-' name=demo                         # one GPU, or the CPU
    torchrun --nproc_per_node=8 -m composer.apps.pretrain name=run1             # 8 GPUs of one node
    composer-pretrain --config-dir outputs/extrapolate/<run> --config-name pretrain

composer/runs/pretrain.py is the job; this command adds the run to the leaderboard when it ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra

from composer.apps.common import hydra_job, run_hydra

PROG = "composer-pretrain"


def pretrain_job(cfg: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Pretrain, then (rank 0) append the run to the leaderboard when `leaderboard` names a file."""
    from composer.engine import distributed
    from composer.runs.pretrain import pretrain_from_config

    summary = pretrain_from_config(cfg, run_dir)
    if cfg["leaderboard"] and distributed.current().main:
        from search.leaderboard.records import pretrain_record
        from search.leaderboard.store import append

        append(pretrain_record(summary, run_dir=str(run_dir)), cfg["leaderboard"])
    return summary


@hydra.main(config_path="pkg://configs", config_name="pretrain", version_base=None)
def _app(cfg) -> None:
    from composer.engine import distributed

    try:
        hydra_job(PROG, cfg, pretrain_job)
    finally:
        distributed.shutdown()


def main(argv: list[str] | None = None) -> int:
    return run_hydra(_app, PROG, argv)


if __name__ == "__main__":  # torchrun ... -m composer.apps.pretrain
    raise SystemExit(main())
