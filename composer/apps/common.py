"""What every console command shares: one-line user errors and the Hydra job wrapper.

Known errors (a bad pattern, an unknown key, a missing file, a diverged run) print one line
`<command>: error: ...` on stderr and exit 2; anything else is a bug and keeps its traceback.
Hydra lives in `composer.apps` and nowhere else: library code sees typed dataclasses.
"""

from __future__ import annotations

import difflib
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from composer.errors import ComposerError


def _unknown_key(cause: BaseException, prog: str) -> str:
    """An override of a key the config does not have: the nearest keys beside it, and how to list them all."""
    key = getattr(cause, "full_key", None) or str(cause).split("'")[1]
    parent = getattr(cause, "parent_node", None)
    siblings = [str(k) for k in parent.keys() if k != "hydra"] if hasattr(parent, "keys") else []
    prefix, _, leaf = key.rpartition(".")
    close = [f"{prefix}.{c}" if prefix else c for c in difflib.get_close_matches(leaf, siblings, n=2)]
    if close:
        hint = f"did you mean {' or '.join(close)}? "
    else:  # a short list, as the letters of a search space's share bounds, is named whole
        hint = f"{prefix or 'the config'} has {', '.join(siblings)}; " if 0 < len(siblings) <= 8 else ""
    return f"unknown config key {key!r} ({hint}`{prog} --cfg job` prints every key)"


def one_line(exc: BaseException, prog: str = "composer-train") -> str:
    """The error in one line. Hydra and OmegaConf errors span several lines: say which key is wrong
    (`prog`: the command whose `--cfg job` lists the keys)."""
    from hydra.errors import ConfigCompositionException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    cause = exc.__cause__ if isinstance(exc, ConfigCompositionException) else exc
    if isinstance(cause, OmegaConfBaseException) and "not in struct" in str(cause):
        return _unknown_key(cause, prog)
    if isinstance(exc, MissingConfigException):
        options = ", ".join(getattr(exc, "options", None) or [])
        return f"{str(exc).splitlines()[0]}" + (f" (available: {options})" if options else "")
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return f"{cause.full_key}: {str(cause).splitlines()[0]}"
    return " ".join(str(exc).split())


def run_command(prog: str, work: Callable[[], int | None], *, also: tuple[type[BaseException], ...] = ()) -> int:
    """Run a command's body; a user error (`ComposerError`, or one of `also`) prints one line and
    gives exit code 2. Returns the exit code (console scripts `sys.exit` what `main` returns)."""
    try:
        return work() or 0
    except (ComposerError, *also) as exc:
        print(f"{prog}: error: {one_line(exc, prog)}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------------------------- Hydra apps

_failed_jobs: list[str] = []  # run folders of sweep jobs that failed with a user error


def run_hydra(app: Callable[[], None], prog: str, argv: list[str] | None = None) -> int:
    """Run a `@hydra.main` app (on `argv` when given, else the command line) with one-line errors.
    A `-m` sweep goes on past failed jobs and exits 2 at the end, naming them."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # let errors reach us instead of Hydra's printer
    # Triton keeps its autotuning results on disk: a search's worker processes, and later commands, reuse what
    # the first tuned (fla tunes its kernels for minutes on a first bf16 call: benchmarks/RESULTS.md, issue 16)
    os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")
    if argv is not None:
        sys.argv = [prog, *argv]
    code = run_command(prog, app, also=(HydraException, OmegaConfBaseException))
    if code == 0 and _failed_jobs:
        print(f"{prog}: {len(_failed_jobs)} job(s) failed: {', '.join(_failed_jobs)}", file=sys.stderr)
        return 2
    return code


def hydra_job(prog: str, cfg: Any, work: Callable[[dict[str, Any], Path], Any]) -> None:
    """Run one Hydra job: save the resolved config into the run folder, then `work(config dict,
    run_dir)`. A user error ends a single run at once (one line, exit 2); in a `-m` sweep it is
    reported and the sweep goes on. Preemption exits as the signal would, so schedulers requeue;
    Ctrl-C says how to resume."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from composer.engine import distributed
    from composer.engine.trainer import Preempted

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        work(OmegaConf.to_container(cfg, resolve=True), run_dir)
    except Preempted as exc:  # SIGTERM/SIGUSR1: checkpointed
        if distributed.current().main:
            print(f"{prog}: {exc}", file=sys.stderr)
        sys.exit(128 + exc.signum)
    except KeyboardInterrupt:
        command = [prog, *(o for o in hc.overrides.task if not o.startswith("hydra.run.dir=")),
                   f"hydra.run.dir={hc.runtime.output_dir}"]
        print(f"{prog}: interrupted; the last checkpoint is kept. Resume with: {shlex.join(command)}", file=sys.stderr)
        sys.exit(130)
    except ComposerError as exc:
        if hc.mode != RunMode.MULTIRUN:
            print(f"{prog}: error: {one_line(exc, prog)}", file=sys.stderr)
            sys.exit(2)
        print(f"{prog}: job {hc.job.num} ({' '.join(hc.overrides.task)}) failed: {one_line(exc, prog)}", file=sys.stderr)
        _failed_jobs.append(hc.runtime.output_dir)
