"""benchmarks/search_throughput.py as a user runs it, on the CPU with a tiny search: one measurement, and
`--gpu-counts` measuring each count in the same run with the speed-up against the first (structure, not timings)."""

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import cli_env
from tests.test_search_cli import TINY_SEARCH

SCRIPT = Path(__file__).parents[1] / "benchmarks/search_throughput.py"


def throughput(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, env=cli_env())


def test_counts_are_measured_in_one_run_with_their_speedup(tmp_path):
    proc = throughput("--gpu-counts", "1,2", "--workers", "1", "--seconds", "20", "--out", str(tmp_path), "--",
                      *TINY_SEARCH, "evaluator=mad_cpu")
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    record = json.loads((tmp_path / "scaling.json").read_text())
    one, two = record["rows"]
    assert (one["workers"], one["gpus"], two["workers"], two["gpus"]) == (1, 1, 2, 2)  # --workers per GPU
    assert one["completed"] > 0 and two["completed"] > 0
    assert abs(two["evaluations_per_gpu_hour"] - two["evaluations_per_hour"] / 2) <= 0.1  # each rounded
    assert record["speedup"] == {"1": 1.0, "2": round(two["evaluations_per_hour"] / one["evaluations_per_hour"], 2)}
    assert json.loads((tmp_path / "gpus2" / "throughput.json").read_text()) == two


def test_bad_counts_are_refused_in_one_line(tmp_path):
    proc = throughput("--gpu-counts", "0,8", "--out", str(tmp_path))
    assert proc.returncode == 2 and "--gpu-counts must be positive, got '0,8'" in proc.stderr
