"""The run folder of a composer-launch submission (`outputs/launch/<name>/` by default):

    launch.json      what was submitted: the command line, executor, resources, and per submission
                     its jobs (role, id, the command each runs, log and sbatch paths)
    config.yaml      the resolved config of the composer command the jobs run
    code/commit.txt  the code version: git commit (and "dirty" if the tree had changes)
    code/diff.patch  `git diff HEAD` of that tree (empty when clean)
    sbatch/          the sbatch scripts submitit generated, one per SLURM submission
    submitit/        submitit's pickles and the jobs' logs (<job id>_<task>_log.out / .err)
    logs/            links to those logs by role (worker0.out, finalize.err, pretrain.out, ...)
    study.journal    (search) the study all workers share, unless `storage=` names another
    search/ | pretrain/ | fidelity/   the composer command's own run folder (result.json,
                     summary.json, checkpoints; a fidelity study's rungs/ and fidelity.json)

Submitting again into the same folder resumes: the study, the pretraining checkpoint and the
fidelity study's finished runs live here.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from composer.errors import ConfigError
from composer.records import CODE_ROOT, git, head_commit, write_json

LAUNCH_FILE = "launch.json"
DEFAULT_ROOT = Path("outputs/launch")


def write_code_version(folder: Path) -> dict[str, Any]:
    """code/commit.txt and code/diff.patch from the checkout's git (reads only); what it found."""
    code = folder / "code"
    code.mkdir(parents=True, exist_ok=True)
    commit = head_commit()
    diff = git("diff", "HEAD") if commit else None
    untracked = (git("ls-files", "--others", "--exclude-standard") or "").split() if commit else []
    dirty = bool(diff) or bool(untracked)
    (code / "commit.txt").write_text(f"{commit}{' dirty' if dirty else ''}\n" if commit else f"unknown: {CODE_ROOT} is not a git checkout\n")
    (code / "diff.patch").write_text(diff or "")
    if untracked:
        (code / "untracked.txt").write_text("\n".join(untracked) + "\n")
    return {"commit": commit, "dirty": dirty if commit else None, "root": str(CODE_ROOT)}


def load(folder: Path) -> dict[str, Any]:
    path = Path(folder) / LAUNCH_FILE
    if not path.exists():
        raise ConfigError(f"{folder} is not a composer-launch run folder (no {LAUNCH_FILE})")
    return json.loads(path.read_text())


def save(folder: Path, record: dict[str, Any]) -> None:
    write_json(Path(folder) / LAUNCH_FILE, record)


def latest(root: Path = DEFAULT_ROOT) -> Path:
    """The run folder under `root` submitted last."""
    runs = sorted(root.glob(f"*/{LAUNCH_FILE}"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not runs:
        raise ConfigError(f"no composer-launch run folder under {root}; name one")
    return runs[-1].parent


def link_logs(folder: Path, role: str, stdout: Path, stderr: Path) -> None:
    """logs/<role>.out and .err, relative links to the job's submitit logs."""
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    tag = role.replace(" ", "")
    for suffix, target in (("out", stdout), ("err", stderr)):
        link = logs / f"{tag}.{suffix}"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(target, logs))


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
