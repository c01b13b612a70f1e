"""`composer-fidelity`: the rank-fidelity study of a search's proxy (search/fidelity/study.py).

    composer-fidelity search_dir=outputs/search/gp-mad-n16-s0 rungs.0.d_model=256 rungs.0.n_blocks=12
    composer-fidelity "patterns=['*-*-*-','M-M-M-','M*-M*-']" random=4
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra

from composer.apps.common import hydra_job, run_hydra

PROG = "composer-fidelity"


def fidelity_from_config(cfg: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    from search.fidelity.study import fidelity_config_from_mapping, run_fidelity

    return run_fidelity(fidelity_config_from_mapping(cfg), run_dir=run_dir)


@hydra.main(config_path="pkg://configs.search", config_name="fidelity", version_base=None)
def _app(cfg) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    hydra_job(PROG, cfg, fidelity_from_config)


def main(argv: list[str] | None = None) -> int:
    return run_hydra(_app, PROG, argv)


if __name__ == "__main__":
    raise SystemExit(main())
