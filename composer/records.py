"""What run folders record, without torch (composer-launch imports it): files written atomically,
and the version of the code that wrote them."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

CODE_ROOT = Path(__file__).resolve().parent.parent  # the checkout composer runs from


def write_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """write(tmp_path), then rename: a crash mid-write never leaves a torn file behind."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def git(*args: str, timeout: float = 60) -> str | None:
    """`git args…` in CODE_ROOT: its stdout, or None when git or the checkout is missing."""
    try:
        out = subprocess.run(["git", "-C", str(CODE_ROOT), *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def head_commit(timeout: float = 60) -> str | None:
    """The checkout's HEAD commit, or None outside a git checkout."""
    return (git("rev-parse", "HEAD", timeout=timeout) or "").strip() or None
