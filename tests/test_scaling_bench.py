"""benchmarks/pretrain_scaling.py (issue 19) as a user runs it, on the CPU: real torchrun processes over gloo, one and
two ranks of the same pretraining config, their throughput and communication share read back (structure and
the comparison that must hold, not timings)."""

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import cli_env
from tests.test_pretrain import make_corpus

SCRIPT = Path(__file__).parents[1] / "benchmarks/pretrain_scaling.py"
TINY = ["model.d_model=32", "model.attention.n_heads=2", "model.mamba2.head_dim=16", "model.mamba2.d_state=16",
        "model.mamba2.chunk_size=32", "data.val_tokens=4000"]


def scaling(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, env=cli_env())


def test_one_and_two_ranks_are_measured_side_by_side(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    proc = scaling("--target", "none", "--pattern", "*-M-", "--gpus", "1,2", "--cpu", "--seq-len", "32", "--micro-batch",
                   "2", "--steps", "12", "--log-every", "2", "--profile-steps", "2", "--out", str(out), "--",
                   *TINY, f"data.path={corpus}", f"data.cache_dir={tmp_path / 'cache'}")
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    record = json.loads((out / "scaling.json").read_text())
    one, two = record["rows"]
    assert (one["gpus"], one["global_batch"], two["gpus"], two["global_batch"]) == (1, 2, 2, 4)  # the same micro-batch
    assert one["steps"] == two["steps"] == 12 and one["tokens_per_s"] > 0 and two["tokens_per_s"] > 0
    assert abs(two["tokens_per_s_per_gpu"] - two["tokens_per_s"] / 2) <= 1  # each rounded from the same figure
    assert two["profile_comm"] > one["profile_comm"]  # two ranks all-gather and reduce-scatter; one has no peer
    assert (out / "gpus2" / "profile" / "rank1.json").exists()
    assert "| 1 | 2 |" in proc.stdout and "100.0%" in proc.stdout  # the table, efficiency against one rank


def test_bad_gpu_counts_are_refused_in_one_line(tmp_path):
    proc = scaling("--gpus", "1,x", "--out", str(tmp_path))
    assert proc.returncode == 2 and "--gpus must be comma-separated integers, got '1,x'" in proc.stderr
