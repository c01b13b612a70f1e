"""composer-train end to end, as a user runs it."""

import json

import yaml

from conftest import run_cli


def test_single_run_writes_the_run_folder(tmp_path, tiny):
    run = run_cli(*tiny, "model.pattern=*-M-", "trainer.max_tokens=8192", f"hydra.run.dir={tmp_path}")
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["pattern"] == "*-M-" and summary["n_layers"] == 4 and summary["status"] == "completed"
    assert {k: n for k, n in summary["layers"].items() if n} == {"*": 1, "M": 1, "-": 2}
    assert summary["n_params"] > summary["n_non_embedding_params"] > 0
    assert set(summary["final"]) == {"loss", "accuracy"} and 0 <= summary["final"]["accuracy"] <= 1
    assert summary["impl"]["M"].startswith("torch")  # reported, not silent
    assert summary["environment"]["torch"]
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["model"]["pattern"] == "*-M-" and config["task"]["name"] == "in_context_recall"
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == [10, 16]  # log_every 10, and the last step
    assert records[-1]["eval/accuracy"] == summary["final"]["accuracy"]
    assert (tmp_path / "checkpoint.pt").exists()


def test_multirun_sweeps_patterns(tmp_path, tiny):
    run = run_cli("-m", *tiny, "model.pattern=*-,--", "trainer.max_tokens=2048", f"hydra.sweep.dir={tmp_path}")
    assert run.returncode == 0, run.stderr
    patterns = {json.loads((tmp_path / str(i) / "summary.json").read_text())["pattern"] for i in (0, 1)}
    assert patterns == {"*-", "--"}


def test_a_failed_sweep_job_is_reported_and_the_sweep_goes_on(tmp_path, tiny):
    run = run_cli("-m", *tiny, "model.pattern=*Q,--", "trainer.max_tokens=2048", f"hydra.sweep.dir={tmp_path}")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "job 0" in run.stderr and "'Q' at position 1" in run.stderr and "1 job(s) failed" in run.stderr
    assert json.loads((tmp_path / "1" / "summary.json").read_text())["status"] == "completed"


def test_other_tasks_and_trainer_settings(tmp_path, tiny):
    run = run_cli(*tiny, "task=compression", "task.length=8", "trainer.schedule=wsd", "trainer.grad_accum=2",
                  "trainer.max_tokens=2000", "model.pattern=M*", "trainer.cuda_graph=true", f"hydra.run.dir={tmp_path}")
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["task"] == "compression" and summary["task_config"]["length"] == 8
    # a CUDA graph asked for on a CPU: the step ran eagerly, and the record says so
    assert summary["impl"]["step"] == "eager" and summary["impl"]["optimizer"] == "AdamW"


def _one_line_error(run) -> str:
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    return lines[0]


def test_bad_pattern_is_one_line(tmp_path):
    line = _one_line_error(run_cli("model.pattern=*-Q-", f"hydra.run.dir={tmp_path}"))
    assert "'Q' at position 2" in line and "'M' (mamba2)" in line


def test_unknown_key_is_one_line(tmp_path):
    line = _one_line_error(run_cli("trainer.learning_rate=0.1", f"hydra.run.dir={tmp_path}"))
    assert "unknown config key 'trainer.learning_rate'" in line and "`composer-train --cfg job`" in line
    line = _one_line_error(run_cli("trainer.lrr=0.1", f"hydra.run.dir={tmp_path}"))  # a near miss: the key named
    assert "unknown config key 'trainer.lrr' (did you mean trainer.lr?" in line


def test_unknown_task_and_bad_value_are_one_line(tmp_path):
    assert "in_context_recall" in _one_line_error(run_cli("task=recall", f"hydra.run.dir={tmp_path}"))
    assert "trainer.lr must be float" in _one_line_error(run_cli("trainer.lr=fast", f"hydra.run.dir={tmp_path}"))


def test_divergence_stops_with_a_recorded_error(tmp_path, tiny):
    run = run_cli(*tiny, "model.pattern=*-", "trainer.lr=1e30", "trainer.warmup=0", "trainer.grad_clip=0",
                  "trainer.max_tokens=20000", f"hydra.run.dir={tmp_path}")
    line = _one_line_error(run)
    assert "loss became" in line
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and "loss became" in summary["error"]


def test_wandb_logging_when_enabled(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # the real client, writing its run file locally
    run = run_cli(*tiny, "model.pattern=*-", "trainer.max_tokens=2048", "trainer.wandb=true", f"hydra.run.dir={tmp_path}")
    assert run.returncode == 0, run.stderr
    [record] = list((tmp_path / "wandb").glob("offline-run-*/*.wandb"))
    data = record.read_bytes()
    assert b"train/loss" in data and b"eval/accuracy" in data and b"*-" in data  # metrics and the config


def test_wandb_is_off_by_default(tmp_path, tiny):
    assert run_cli(*tiny, "model.pattern=*-", "trainer.max_tokens=2048", f"hydra.run.dir={tmp_path}").returncode == 0
    assert not (tmp_path / "wandb").exists()


def test_bad_trainer_value_is_one_line(tmp_path, tiny):
    line = _one_line_error(run_cli(*tiny, "trainer.lr=-1", f"hydra.run.dir={tmp_path}"))
    assert "trainer: lr must be > 0" in line and "-1" in line


def test_every_command_keeps_tritons_autotuning_results_unless_told_otherwise(monkeypatch):
    import os

    from composer.apps.common import run_hydra

    seen = []
    monkeypatch.delenv("TRITON_CACHE_AUTOTUNING", raising=False)
    assert run_hydra(lambda: seen.append(os.environ.get("TRITON_CACHE_AUTOTUNING")), "composer-x", []) == 0
    monkeypatch.setenv("TRITON_CACHE_AUTOTUNING", "0")  # the user's own setting stays
    assert run_hydra(lambda: seen.append(os.environ.get("TRITON_CACHE_AUTOTUNING")), "composer-x", []) == 0
    assert seen == ["1", "0"]
