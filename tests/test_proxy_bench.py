"""benchmarks/proxy_bench.py off the GPU: one run trains the task asked for through the search's own path
(`train_on_task`, compression's head included), at the Mamba-2 chunk size asked for, for the steps asked for.
Timings are not tested."""

import importlib.util
import json
from pathlib import Path

_spec = importlib.util.spec_from_file_location("proxy_bench", Path(__file__).parents[1] / "benchmarks/proxy_bench.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_a_run_trains_the_task_at_the_chunk_size_for_the_steps_asked(tmp_path):
    rate = bench.run("M-", "eager", steps=30, task="compression", folder=tmp_path / "run", mamba_impl="torch",
                     mamba_chunk_size=16)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["task"] == "compression" and summary["step"] == 30
    assert summary["model"]["primitives"]["mamba2"]["chunk_size"] == 16
    assert summary["impl"]["M"] == "torch (impl='torch')"
    assert rate > 0
