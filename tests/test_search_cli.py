"""`composer-search` as a user runs it: a real subprocess on real SQLite storage, tiny proxies.

End to end with two worker processes, SIGKILL mid-trial then resume, the settings guard, and the
one-line errors. Each search trains 3-layer, 16-wide proxies on two tiny MAD tasks (~0.2 s a trial).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import app_argv, cli_env, observe, run_cli

optuna.logging.set_verbosity(optuna.logging.WARNING)

TINY_SEARCH = [
    "space.length=3",
    "evaluator.model.d_model=16", "evaluator.model.attention.n_heads=2",
    "evaluator.model.mamba2.head_dim=8", "evaluator.model.mamba2.d_state=8", "evaluator.model.mamba2.chunk_size=8",
    "~evaluator.tasks",
    "+evaluator.tasks={in_context_recall:{length:16,n_train:64,n_test:32},"
    "selective_copying:{length:16,n_copy:4,n_train:64,n_test:32}}",
    "evaluator.trainer.max_tokens=4096", "evaluator.trainer.batch_size=16", "evaluator.trainer.device=cpu",
]


def search_args(tmp_path: Path, *extra: str, name: str = "t") -> list[str]:
    return ["search", *TINY_SEARCH, f"name={name}", f"hydra.run.dir={tmp_path / name}",
            f"leaderboard={tmp_path / 'leaderboard.jsonl'}", *extra]


def load(tmp_path: Path, name: str = "t", study: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name=study or name, storage=f"sqlite:///{tmp_path / name / 'study.db'}")


def evaluated(study: optuna.Study) -> list[str]:
    """Patterns whose evaluation finished (COMPLETE or failed while training), one entry per training run."""
    return [t.user_attrs["pattern"] for t in study.get_trials()
            if t.user_attrs.get("role") == "evaluate"
            and (t.state == TrialState.COMPLETE or t.user_attrs.get("failure") == "error")]


def test_two_workers_search_aggregate_and_leaderboard(tmp_path):
    # 8x the tiny budget (~1 s a trial): worker 1, a spawned process, starts ~2 s after worker 0 (this
    # process) and more on a loaded machine; at 3x worker 0 had done 5 of the 8 trials by then.
    budget = "evaluator.trainer.max_tokens=32768"
    settings = ["workers=2", "n_trials=8", "strategy=random", "evaluator.top_k=2", "evaluator.reeval_seeds=[1]", budget,
                "baselines=[]"]  # top 8 of 8: no candidate set aside as a baseline (test_search_baselines.py)
    proc = run_cli(*search_args(tmp_path, *settings), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(tmp_path)
    runs = evaluated(study)
    assert len(runs) == 8 and Counter(runs).most_common(1)[0][1] == 1  # the budget, no pattern trained twice
    assert all(t.state != TrialState.RUNNING for t in study.get_trials())  # every trial accounted for
    workers = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in study.get_trials() if t.user_attrs.get("role") == "evaluate"}
    assert len(workers) == 2  # both processes trained

    result = json.loads((tmp_path / "t" / "result.json").read_text())
    assert result["n_evaluations"] == 8 and len(result["architecture"]) == 3
    assert result["architecture"] == result["aggregates"]["N0"]
    assert [row["pattern"] for row in result["top"]] == sorted(
        (r["pattern"] for r in result["top"]), key=lambda p: -next(x["score"] for x in result["top"] if x["pattern"] == p))
    aggregate = next(e for e in result["entries"] if e["role"] == "aggregate")
    assert sorted(aggregate["seeds"]) == ["0", "1"]  # evaluated at the search seed, re-evaluated at seed 1
    assert "architecture (N0)" in proc.stdout and "top 8:" in proc.stdout and "±" in proc.stdout

    lines = [json.loads(line) for line in (tmp_path / "leaderboard.jsonl").read_text().splitlines()]
    kinds = Counter(r["kind"] for r in lines)
    assert kinds["search"] == 1 and kinds["architecture"] >= 3
    arch = next(r for r in lines if r["kind"] == "architecture" and r["role"] == "aggregate")
    assert arch["pattern"] == result["architecture"] and arch["score"]["n"] == 2
    assert set(arch["tasks"]) == {"in_context_recall", "selective_copying"}

    table = subprocess.run([sys.executable, "-c", "from composer.apps.leaderboard import main; raise SystemExit(main())", "--file",
                            str(tmp_path / "leaderboard.jsonl")], capture_output=True, text=True, env=cli_env())
    assert table.returncode == 0 and result["architecture"] in table.stdout

    # The same command again resumes: nothing is trained, the same architecture comes out.
    again = run_cli(*search_args(tmp_path, *settings), timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(evaluated(load(tmp_path))) == 8
    assert json.loads((tmp_path / "t" / "result.json").read_text())["architecture"] == result["architecture"]

    # Other settings on the same study are refused in one line, naming the key.
    other = run_cli(*search_args(tmp_path, "n_trials=8", "strategy=random", budget, "evaluator.trainer.lr=0.01"))
    assert other.returncode == 2
    assert other.stderr.strip().count("\n") == 0 and "evaluator.trainer.lr" in other.stderr and "name=" in other.stderr


def test_sigkill_mid_trial_then_the_same_command_finishes(tmp_path):
    # 8x the tiny budget: a trial trains for ~2 s rather than ~0.2 s, so a poll of the study (~0.3 s
    # here, more on a loaded machine) cannot miss every trial in flight.
    args = search_args(tmp_path, "workers=1", "n_trials=6", "strategy=random", "evaluator.trainer.max_tokens=32768",
                       name="k")
    log = tmp_path / "search.log"
    with log.open("w") as out:
        proc = subprocess.Popen(app_argv(*args), stdout=out, stderr=subprocess.STDOUT, env=cli_env())
    deadline, states = time.time() + 240, []

    def stuck(why: str) -> AssertionError:
        return AssertionError(f"the search {why}; trials {states}; its output ends: {log.read_text()[-3000:]}")

    try:
        while time.time() < deadline:
            time.sleep(0.1)
            if proc.poll() is not None:
                raise stuck(f"exited ({proc.returncode}) before the kill")
            if (study := observe(tmp_path / "k" / "study.db", "k")) is None:
                continue
            trials = study.get_trials()
            states = [(t.number, t.state.name, t.user_attrs.get("role")) for t in trials]
            done = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("role") == "evaluate"]
            running = [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("role") == "evaluate"]
            if len(done) >= 2 and running:
                os.kill(proc.pid, signal.SIGKILL)
                break
        else:
            raise stuck("never had two completed trials and one in flight")
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = {t.number: (t.user_attrs["pattern"], t.values) for t in load(tmp_path, "k").get_trials()
              if t.state == TrialState.COMPLETE and t.user_attrs.get("role") == "evaluate"}
    assert 2 <= len(before) < 6

    rerun = run_cli(*args, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = load(tmp_path, "k")
    after = {t.number: (t.user_attrs["pattern"], t.values) for t in study.get_trials()
             if t.state == TrialState.COMPLETE and t.user_attrs.get("role") == "evaluate"}
    assert all(after[n] == v for n, v in before.items())  # completed trials unchanged
    runs = evaluated(study)
    assert len(runs) == 6 and len(set(runs)) == 6
    lost = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert len(lost) == 1 and lost[0].user_attrs.get("failure") != "error"  # the killed trial, not counted
    assert (tmp_path / "k" / "result.json").exists()


def test_bad_search_config_is_one_line(tmp_path):
    cases = {
        "strategy.name=annealing": "unknown search strategy 'annealing'",
        "space.alphabet=*-X": "unknown primitive 'X' at position 2",
        "+evaluator.tasks.sorting={}": "unknown task 'sorting'",
        "storage=ftp://host/db": "unknown URL scheme 'ftp'",
        "aggregator=N7": "aggregator must be one of",
        "evaluator.lrs=[0.001,-1]": "evaluator.lrs must be positive",
    }
    for override, message in cases.items():
        proc = run_cli(*search_args(tmp_path, override, name="bad"), timeout=120)
        assert proc.returncode == 2, (override, proc.stderr[-2000:])
        assert message in proc.stderr and proc.stderr.strip().count("\n") == 0, (override, proc.stderr)


def test_two_evaluations_per_worker_train_side_by_side_each_pattern_once(tmp_path):
    settings = ["workers=1", "evaluations_per_worker=2", "n_trials=6", "strategy=random", "space.length=4", "baselines=[]"]
    proc = run_cli(*search_args(tmp_path, *settings), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = evaluated(load(tmp_path))
    assert len(runs) == 6 and len(set(runs)) == 6  # the budget, no pattern trained twice
    log = proc.stdout + proc.stderr
    assert "w0.0 [" in log and "w0.1 [" in log  # both threads of the one process evaluated
    assert json.loads((tmp_path / "t" / "result.json").read_text())["n_evaluations"] == 6


@pytest.mark.parametrize("parallel, workers, group", [  # parallel 2: each evaluation's two task runs in threads
    (1, ["workers=2"], False), (2, ["workers=2"], False),
    (1, ["workers=2"], True),  # the terminal's Ctrl-C: to every process of the group, the worker's too
    (2, ["workers=1", "evaluations_per_worker=2"], False),  # two evaluations in threads of one process
])
def test_sigint_stops_every_worker_and_keeps_completed_trials(tmp_path, parallel, workers, group):
    # 4x the tiny budget: a trial trains for seconds, so the signal lands while two of them train (with
    # the tiny one, both could finish between the poll that saw them and the signal, on a loaded machine)
    args = search_args(tmp_path, *workers, "n_trials=20", "strategy=random", "space.length=4",
                       f"evaluator.parallel={parallel}", "evaluator.trainer.max_tokens=16384", name="i")
    proc = subprocess.Popen(app_argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
                            start_new_session=group)
    deadline = time.time() + 240
    while time.time() < deadline:
        time.sleep(0.1)
        if (study := observe(tmp_path / "i" / "study.db", "i")) is None:
            continue
        trials = study.get_trials()
        if sum(t.state == TrialState.COMPLETE for t in trials) >= 2 and \
                sum(t.state == TrialState.RUNNING and t.user_attrs.get("role") == "evaluate" for t in trials) == 2:
            break
    before = {t.number: t.values for t in load(tmp_path, "i").get_trials() if t.state == TrialState.COMPLETE}
    if group:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)  # to the parent only, as `kill -INT` does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Resume with: composer-search" in err
    assert err.count("Ctrl-C: the evaluations in flight stop") == 1  # said once, by the parent
    study = load(tmp_path, "i")
    assert not [t for t in study.get_trials() if t.state == TrialState.RUNNING]  # both workers' trials closed
    interrupted = [t for t in study.get_trials() if t.user_attrs.get("failure") == "interrupted"]
    assert 1 <= len(interrupted) <= 2
    after = {t.number: t.values for t in study.get_trials() if t.state == TrialState.COMPLETE}
    assert all(after[n] == v for n, v in before.items())


def test_a_search_of_a_small_space_stops_once_every_pattern_is_evaluated(tmp_path):
    # '*-' over 2 layers with a sequence mixer required: **, *-, -* (3 patterns); a budget of 50 evaluations
    settings = ["space.length=2", "space.alphabet='*-'", "n_trials=50", "strategy=random", "workers=1", "baselines=[]"]
    started = time.time()
    proc = run_cli(*search_args(tmp_path, *settings), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(tmp_path)
    assert sorted(evaluated(study)) == ["**", "*-", "-*"]
    trials = study.get_trials()
    assert trials[-1].user_attrs["role"] == "exhausted"
    assert "every one of the 3 patterns of the space is evaluated" in trials[-1].user_attrs["reason"]
    assert len(trials) < 50  # not 50 x 20 cached answers
    assert time.time() - started < 300
