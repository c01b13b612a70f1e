"""tests/run.sh, the README's test command, where it cannot install what the tests need: one line
naming what is missing and how to install it, exit 1, and no pytest. Run as `nobody` (the suite
itself runs as root, so the install branch is what every CI run exercises)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("run.sh")


@pytest.fixture
def as_nobody():
    """Run the script as `nobody` from a copy in a world-readable folder; PATH as given."""
    folder = Path(tempfile.mkdtemp(prefix="composer-run-sh-"))
    (folder / "tests").mkdir()
    shutil.copy(SCRIPT, folder / "tests" / "run.sh")
    for path in (folder, folder / "tests"):
        path.chmod(0o755)

    runuser = shutil.which("runuser", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")

    def run(path: str) -> subprocess.CompletedProcess:
        return subprocess.run([runuser, "-u", "nobody", "--", "/bin/bash", str(folder / "tests" / "run.sh")],
                              capture_output=True, text=True, timeout=60, env={"PATH": path, "HOME": "/tmp"})

    yield run
    shutil.rmtree(folder)


def test_a_missing_package_without_root_is_one_line_and_no_pytest(as_nobody):
    bin_dir = Path(tempfile.mkdtemp(prefix="composer-bin-"))  # dirname and id only: no chromium on this PATH
    bin_dir.chmod(0o755)
    for tool in ("dirname", "id"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    try:
        proc = as_nobody(str(bin_dir))
    finally:
        shutil.rmtree(bin_dir)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tests/run.sh: missing Debian packages: chromium")
    assert "install them with: sudo apt-get install -y chromium" in lines[0]


def test_everything_present_but_not_root_is_one_line(as_nobody):
    proc = as_nobody("/usr/local/bin:/usr/bin:/bin")  # chromium, slurm and munge are installed (run.sh did it)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "tests/run.sh: the launcher's tests run slurmctld and slurmd as root (tests/slurm.py): "
        "run this as root, e.g. in a container"]
