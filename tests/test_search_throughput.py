"""benchmarks/search_throughput.py as a user runs it, on the CPU with a tiny search: one measurement, and
`--gpu-counts` measuring each count in the same run with the speed-up against the first (structure, not timings)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env
from tests.test_search_cli import TINY_SEARCH

SCRIPT = Path(__file__).parents[1] / "benchmarks/search_throughput.py"
_spec = importlib.util.spec_from_file_location("search_throughput", SCRIPT)
st = importlib.util.module_from_spec(_spec)  # the script's functions, for the tests that call them directly
_spec.loader.exec_module(st)


def throughput(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          env=env or cli_env())


def mps_control(tmp_path: Path, script: str) -> Path:
    """A stand-in nvidia-cuda-mps-control running `script` (sh), in a bin folder of its own: the real one needs a GPU."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    control = bin_dir / "nvidia-cuda-mps-control"
    control.write_text(f"#!/bin/sh\n{script}\n")
    control.chmod(0o755)
    return bin_dir


def failing_mps(tmp_path: Path) -> dict:
    """An environment whose nvidia-cuda-mps-control cannot start a daemon (as in a container without MPS)."""
    bin_dir = mps_control(tmp_path, "echo 'Cannot find MPS control daemon process' >&2; exit 1")
    env = cli_env()
    return {**env, "PATH": f"{bin_dir}:{env.get('PATH', os.environ['PATH'])}"}


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


def test_a_search_that_fails_is_one_line_and_a_sweep_goes_on(tmp_path):
    """A search that exits with an error (a key the measured tree lacks, as a tree from before a setting would):
    alone, one line naming the search's own error and a non-zero exit; in a sweep, that shape's row says it."""
    proc = throughput("--seconds", "60", "--out", str(tmp_path / "one"), "--", *TINY_SEARCH, "evaluator=mad_cpu",
                      "evaluator.no_such_key=1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("search_throughput.py: the search exited with code 2 after ") and "no_such_key" in line
    assert line.endswith(f"(see {tmp_path / 'one' / 'search.log'})")
    proc = throughput("--sweep", "1x1,1x1", "--seconds", "60", "--out", str(tmp_path / "sweep"), "--", *TINY_SEARCH,
                      "evaluator=mad_cpu", "evaluator.no_such_key=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"]
    assert len(rows) == 2 and all("no_such_key" in row["error"] for row in rows)


def test_a_sweep_measures_each_shape_with_a_steady_rate(tmp_path):
    out = tmp_path / "sweep"
    proc = throughput("--sweep", "1x1,1x2,1x1m,1x1", "--seconds", "20", "--warmup-share", "0.2", "--out", str(out), "--",
                      *TINY_SEARCH, "space.length=5",  # 243 patterns: not all evaluated in the 20 s
                      "evaluator=mad_cpu", "evaluations_per_worker=5",  # the sweep's own setting wins
                      env=failing_mps(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    record = json.loads((out / "sweep.json").read_text())
    assert [r["shape"] for r in record["rows"]] == ["1x1", "1x2", "1x1m", "1x1"]
    # a shape given again is measured again, in a folder of its own
    assert record["rows"][3]["completed"] > 0 and (out / "w1e1-1" / "throughput.json").is_file()
    assert json.loads((out / "w1e1" / "throughput.json").read_text())["completed"] == record["rows"][0]["completed"]
    # MPS would not start: that shape says why, the others were measured all the same
    assert record["rows"][2]["error"] == ("search_throughput.py: nvidia-cuda-mps-control -d failed: "
                                          "Cannot find MPS control daemon process")
    assert "| 1x1m | search_throughput.py: nvidia-cuda-mps-control -d failed" in proc.stdout
    record["rows"] = record["rows"][:2]
    assert "evaluations_per_worker=5" not in record["overrides"]
    for row, each in zip(record["rows"], (1, 2)):
        # 1 is the search's default and left unsaid (a tree from before the setting is measured the same way)
        shaped = [o for o in row["overrides"] if o.startswith("evaluations_per_worker=")]
        assert shaped == ([f"evaluations_per_worker={each}"] if each > 1 else []) and row["workers"] == 1
        # one evaluation's tokens: both tasks' runs, read from their summaries
        runs = [json.loads(f.read_text()) for f in (out / f"w1e{each}" / "run" / "trials").glob("*/*/summary.json")]
        assert row["tokens_per_evaluation"] in {sum(s["tokens"] for s in runs[i:i + 2]) for i in range(len(runs) - 1)}
        assert row["tokens_per_s"] > 0 and row["steady_evaluations_per_gpu_hour"] > 0
        assert row["first_eval_s"] > 0 and f"| {row['first_eval_s']} / {row['later_eval_s']} |" in proc.stdout
        # where the runs' time went: the phases and the steps partition it; every run sets up and evaluates
        phases = row["run_phases"]
        assert phases["runs"] == len([r for r in runs if r["status"] == "completed"])
        assert abs(sum(phases[k]["share"] for k in ("setup", "to_graph", "checkpoints", "final", "steps")) - 1) < 0.01
        assert phases["setup"]["median_s"] > 0 and phases["final"]["median_s"] > 0 and phases["steps"]["share"] > 0
        assert f"| 1x{each} | {phases['runs']} | {phases['setup']['median_s']:.2f} s (" in proc.stdout
        # the budget check names the one recall task searched, over the completed patterns with attention
        check = row["recall_of_attention_patterns"]
        assert set(check) == {"in_context_recall"} and check["in_context_recall"]["patterns"] <= row["completed"]
    first = record["rows"][0]
    assert first["evaluations_per_gpu_hour_ratio"] == 1.0 and first["steady_evaluations_per_gpu_hour_ratio"] == 1.0
    assert "| 1x2 |" in proc.stdout


def test_idle_samples_are_counted_past_the_warm_up_only():
    # ten seconds of warm-up (idle while compiling: not counted), a window of five samples, two of them under 30%
    # busy, then the search stopping (idle: not counted either)
    util = [0.0] * 10 + [5.0, 50.0, 29.0, 30.0, 100.0] + [0.0] * 3
    assert st.idle_share(util, warmup=10, end=15) == 0.4  # 5 and 29 of the five
    assert st.idle_share(util, warmup=0, end=15) == pytest.approx(12 / 15, abs=1e-3)
    assert st.idle_share(util, warmup=10, end=30) == pytest.approx(5 / 8, abs=1e-3)  # a window cut short: all there is
    assert st.idle_share(util, warmup=30, end=40) is None and st.idle_share([], warmup=0, end=10) is None  # no GPU


def test_first_evaluations_are_the_ones_each_worker_started_first():
    from datetime import datetime, timedelta
    from types import SimpleNamespace

    t0 = datetime(2026, 12, 6)
    # two workers: their first evaluations start at 0 s and 1 s and take 200 s and 180 s (compiling); later ones 20-30 s
    trials = [SimpleNamespace(datetime_start=t0 + timedelta(seconds=start), duration=timedelta(seconds=took))
              for start, took in ((181, 20), (0, 200), (201, 30), (1, 180), (211, 25))]
    assert st.first_and_later(trials, slots=2) == (190.0, 25.0)
    assert st.first_and_later(trials[1:2], slots=2) == (200.0, None) and st.first_and_later([], 2) == (None, None)


def test_the_budget_check_counts_attention_patterns_per_recall_task():
    # mad_fast's tasks: only the noisy recall task; patterns without attention are left out of the check
    scores = {"*-M": {"noisy_in_context_recall": 1.0, "compression": 0.3}, "M*-": {"noisy_in_context_recall": 0.19},
              "-*-": {"noisy_in_context_recall": 0.9}, "M-M": {"noisy_in_context_recall": 1.0}, "*--": {"compression": 0.2}}
    assert st.recall_of_attention_patterns(scores) == {
        "noisy_in_context_recall": {"patterns": 3, "at_least_0.9": 2, "best": [1.0, 0.9, 0.19]}}
    assert st.recall_of_attention_patterns({"*-M": {"compression": 0.3}}) == {}


def test_the_steady_rate_skips_the_warmup_and_reads_every_run(tmp_path):
    # 100 tokens/s during the warm-up, then 1,000 tokens/s
    progress = [(5, 500), (10, 1000), (15, 6000), (20, 11000), (25, 16000)]
    assert st.steady_rate(progress, warmup=12) == 1000
    assert st.steady_rate(progress, warmup=24) is None  # one sample past it
    for run, tokens in (("a/recall-lr0.001", [40, 80]), ("a/copy-lr0.001", [64]), ("b/recall-lr0.001", [])):
        (tmp_path / run).mkdir(parents=True)
        (tmp_path / run / "metrics.jsonl").write_text("".join(json.dumps({"step": 1, "tokens": t}) + "\n" for t in tokens))
    assert st.tokens_trained(tmp_path) == 80 + 64


def test_a_bad_sweep_is_refused_in_one_line(tmp_path):
    proc = throughput("--sweep", "3x", "--out", str(tmp_path))
    assert proc.returncode == 2 and "--sweep takes WORKERSxEVALUATIONS items such as 3x1,1x6 (3x1m: under CUDA MPS), got '3x'" in proc.stderr


def test_an_mps_shape_without_mps_is_refused_in_one_line(tmp_path):
    env = {**cli_env(), "PATH": str(Path(sys.executable).parent)}  # python, and no nvidia-cuda-mps-control
    proc = subprocess.run([sys.executable, str(SCRIPT), "--sweep", "1x1,1x1m", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "an MPS shape (ending in m) needs CUDA MPS, and nvidia-cuda-mps-control is not on PATH" in proc.stderr
    assert not (tmp_path / "w1e1").exists()  # refused before any measurement


def test_the_mps_daemon_starts_for_a_shape_and_quits_after(tmp_path, monkeypatch):
    """The start and stop sequence of CUDA MPS (`-d`, then `quit` on its stdin), with the pipe folder the search
    processes are given; a stand-in control program records what it was asked, as the real one takes no GPU here."""
    calls = tmp_path / "calls.txt"
    bin_dir = mps_control(tmp_path, f'if [ "$1" = -d ]; then echo "start $CUDA_MPS_PIPE_DIRECTORY" >> {calls}; '
                                    f'else read line; echo "$line $CUDA_MPS_PIPE_DIRECTORY" >> {calls}; fi')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    with st.mps_daemon(tmp_path / "w3e1mps") as env:
        pipe = tmp_path / "w3e1mps" / "mps-pipe"
        assert env["CUDA_MPS_PIPE_DIRECTORY"] == str(pipe) and pipe.is_dir()
        assert calls.read_text() == f"start {pipe}\n"
    assert calls.read_text() == f"start {pipe}\nquit {pipe}\n"
    mps_control(tmp_path, "echo 'An instance of this daemon is already running' >&2; exit 1")
    with pytest.raises(st.MPSUnavailable, match="nvidia-cuda-mps-control -d failed: An instance of this daemon is "
                                                "already running"):
        with st.mps_daemon(tmp_path / "again"):
            raise AssertionError("a daemon that failed to start must stop the measurement")


def test_a_folder_that_holds_a_measurement_is_refused_in_one_line(tmp_path):
    """A search in it would resume, so its completed trials would count again (a warm device machine's second call
    measured 7 "completed" in a window of 275 s from an 87-s run, 2026-12-06)."""
    (tmp_path / "w3e1" / "run").mkdir(parents=True)
    proc = throughput("--sweep", "3x1", "--out", str(tmp_path))
    assert proc.returncode == 2 and f"--out {tmp_path} is not empty: a measurement there would resume" in proc.stderr
    assert not (tmp_path / "sweep.json").exists() and list(tmp_path.iterdir()) == [tmp_path / "w3e1"]
