"""benchmarks/proxy_bench.py off the GPU: one run trains the `mad` evaluator's proxy on the task asked for through the
search's own path (`train_on_task`, compression's head included), at the Mamba-2 chunk size asked for, for the steps asked for.
Timings are not tested."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))  # as a script run from there finds eval_profile
_spec = importlib.util.spec_from_file_location("proxy_bench", Path(__file__).parents[1] / "benchmarks/proxy_bench.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_a_run_trains_the_task_at_the_chunk_size_precision_and_steps_asked(tmp_path):
    evaluator = bench.proxy_settings("torch", 16)
    assert evaluator.proxy("M", vocab_size=16).d_model == 128  # the `mad` evaluator's proxy, as a search builds it
    for precision, recorded in (("auto", "fp32"), ("bf16", "bf16 autocast")):  # auto: fp32 on a CPU
        rate = bench.run("M-", "eager", steps=30, task="compression", folder=tmp_path / precision, evaluator=evaluator,
                         precision=precision)
        summary = json.loads((tmp_path / precision / "summary.json").read_text())
        assert summary["task"] == "compression" and summary["step"] == 30
        assert summary["model"]["primitives"]["mamba2"]["chunk_size"] == 16
        assert summary["impl"]["M"] == "torch (impl='torch')" and summary["impl"]["precision"] == recorded
        assert rate > 0


def test_runs_side_by_side_each_train_in_their_own_folder_and_report_the_cpu_seconds(tmp_path):
    rate, wall, cpu = bench.side_by_side("*-", "eager", 2, steps=30, task="in_context_recall", folder=tmp_path,
                                         evaluator=bench.proxy_settings("torch", 64))
    for i in range(2):
        assert json.loads((tmp_path / f"r{i}" / "summary.json").read_text())["step"] == 30
    assert rate > 0 and wall > 0 and cpu > 0


def test_inductor_settings_are_set_for_the_compiled_modes_and_bad_ones_refused_in_one_line(monkeypatch):
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor, "combo_kernels", False)
    monkeypatch.setattr(inductor, "max_fusion_size", 64)
    assert bench.inductor_settings("combo_kernels=True,max_fusion_size=128") == {"combo_kernels": True, "max_fusion_size": 128}
    assert inductor.combo_kernels is True and inductor.max_fusion_size == 128
    assert bench.inductor_settings("") == {}
    with pytest.raises(SystemExit, match="'combo_kernel=True' is not name=value of a torch._inductor.config setting"):
        bench.inductor_settings("combo_kernel=True")
    with pytest.raises(SystemExit, match="combo_kernels's value 'yes' is not a Python literal"):
        bench.inductor_settings("combo_kernels=yes")
