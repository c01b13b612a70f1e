"""`composer-search`: the main job. Search, aggregate, report, write the leaderboard.

    composer-search                                   # the default: 20 six-layer patterns on the CPU
    composer-search evaluator=mad space=long n_trials=500 workers=8
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra

from composer.apps.common import hydra_job, run_hydra

PROG = "composer-search"


def search_from_config(cfg: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The `composer-search` job on a plain config mapping (what Hydra composed)."""
    from search.runner import run_search, search_config_from_mapping

    return run_search(search_config_from_mapping(cfg), run_dir=run_dir)


@hydra.main(config_path="pkg://configs.search", config_name="search", version_base=None)
def _app(cfg) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search logs one line per trial itself
    hydra_job(PROG, cfg, search_from_config)


def main(argv: list[str] | None = None) -> int:
    return run_hydra(_app, PROG, argv)


if __name__ == "__main__":
    raise SystemExit(main())
