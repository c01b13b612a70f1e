"""search.study on real storages (SQLite, journal file): resume, cache, failures, SIGKILL, concurrent workers."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest

import search.study
from optuna.trial import TrialState

from composer.errors import ConfigError
from search.study import (completed_results, count_evaluations, failed_patterns, open_study, run_trials,
                          stop_at_next_step)
from tests.conftest import observe

REPO = Path(__file__).parents[1]
PATTERNS = ["".join(p) for p in itertools.product("*-", repeat=3)]  # 8 patterns

optuna.logging.set_verbosity(optuna.logging.WARNING)


def score(pattern: str) -> float:
    """Cheap and deterministic: the share of attention, minus a penalty for attention last."""
    return pattern.count("*") / len(pattern) - 0.5 * (pattern[-1] == "*")


def propose_positions(trial: optuna.Trial) -> str:
    return "".join(trial.suggest_categorical(f"layer_{i}", ["*", "-"]) for i in range(3))


class Counting:
    """An evaluate that counts its calls per pattern."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def __call__(self, pattern: str) -> dict:
        self.calls[pattern] += 1
        return {"score": score(pattern), "n_attention": pattern.count("*")}


@pytest.mark.parametrize("storage", [None, "study.journal"])
def test_results_survive_reopening_and_resume_finishes_the_total(tmp_path, storage):
    storage = None if storage is None else tmp_path / storage
    run_dir = tmp_path / "run"
    study = open_study(name="s", storage=storage, run_dir=run_dir, sampler=optuna.samplers.RandomSampler(seed=0))
    evaluate = Counting()
    run_trials(study, propose=propose_positions, evaluate=evaluate, n_trials=3, max_trials=6)
    first = completed_results(study)
    assert first and count_evaluations(study) <= 3
    if storage is None:
        assert (run_dir / "study.db").is_file()

    again = open_study(name="s", storage=storage, run_dir=run_dir, sampler=optuna.samplers.RandomSampler(seed=1))
    assert {p: r["values"] for p, r in completed_results(again).items()} == {p: r["values"] for p, r in first.items()}
    assert completed_results(again)[next(iter(first))]["n_attention"] == next(iter(first)).count("*")
    run_trials(again, propose=propose_positions, evaluate=evaluate, n_trials=100, max_trials=6)
    assert count_evaluations(again) == 6
    assert len(completed_results(again)) == 6
    assert max(evaluate.calls.values()) == 1  # never trained twice, across both calls
    run_trials(again, propose=propose_positions, evaluate=evaluate, n_trials=100, max_trials=6)  # already done
    assert sum(evaluate.calls.values()) == 6


def test_a_pattern_proposed_twice_is_evaluated_once(tmp_path):
    study = open_study(name="s", storage=None, run_dir=tmp_path, sampler=optuna.samplers.RandomSampler(seed=0))
    evaluate = Counting()
    proposals = iter(["**-", "-*-", "**-"])
    trials = run_trials(study, propose=lambda trial: next(proposals), evaluate=evaluate, n_trials=3)
    assert evaluate.calls == {"**-": 1, "-*-": 1}
    cached = trials[2]
    assert cached.state == TrialState.COMPLETE and cached.values == trials[0].values
    assert cached.user_attrs["cached"] is True and cached.user_attrs["cached_from"] == trials[0].number
    assert completed_results(study)["**-"]["trial"] == trials[0].number


def test_a_raising_evaluate_fails_the_trial_and_the_loop_goes_on(tmp_path):
    study = open_study(name="s", storage=tmp_path / "s.log", run_dir=tmp_path, sampler=None)

    def evaluate(pattern: str) -> dict:
        if pattern == "*M*":
            raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")
        if pattern == "MMM":
            return {"score": float("nan")}
        return {"score": score(pattern)}

    proposals = iter(["*M*", "---", "MMM", "*M*"])
    trials = run_trials(study, propose=lambda trial: next(proposals), evaluate=evaluate, n_trials=4)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]
    assert trials[0].user_attrs["error"] == "RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"
    assert trials[3].user_attrs["cached_from"] == trials[0].number  # a failed pattern is not retrained
    assert failed_patterns(study) == {"*M*": trials[0].user_attrs["error"], "MMM": trials[2].user_attrs["error"]}
    assert "non-finite" in trials[2].user_attrs["error"]
    assert count_evaluations(study) == 3


@pytest.mark.parametrize("storage", [None, "s.journal"])
def test_retry_failures_trains_earlier_failures_once_more_and_later_ones_stay_final(tmp_path, storage):
    from search.strategies import ListStrategy
    from search.study import retry_failures

    storage = None if storage is None else tmp_path / storage
    study = open_study(name="s", storage=storage, run_dir=tmp_path, sampler=None)
    calls: Counter[str] = Counter()
    flaky = {"*-*"}  # fails until the "library" is fixed

    def evaluate(pattern: str) -> dict:
        calls[pattern] += 1
        if pattern in flaky:
            raise TypeError("'NoneType' object is not a mapping")
        return {"score": score(pattern)}

    listed = ListStrategy(name="list", space=None, seed=0, sampler=optuna.samplers.RandomSampler(0), patterns=("*-*", "---"))
    trials = run_trials(study, propose=listed.propose, evaluate=evaluate, n_trials=30)
    assert calls == {"*-*": 1, "---": 1} and "*-*" in failed_patterns(study)
    # every listed pattern taken: the worker stops at once, not answering 28 trials from the cache
    assert len(trials) == 3 and trials[-1].user_attrs["role"] == "exhausted" and trials[-1].state == TrialState.PRUNED
    time.sleep(0.01)
    retry_failures(study)  # a new run with retry_failed=true
    assert failed_patterns(study) == {}
    # the list's budget (one evaluation per pattern) holds two already; the retryable failure no longer counts
    run_trials(study, propose=listed.propose, evaluate=evaluate, n_trials=2, max_trials=2)
    assert calls == {"*-*": 2, "---": 1}  # retried once; the failure it had now is this run's: final again
    assert "*-*" in failed_patterns(study)
    flaky.clear()
    time.sleep(0.01)
    retry_failures(study)
    run_trials(study, propose=listed.propose, evaluate=evaluate, n_trials=2)
    assert calls == {"*-*": 3, "---": 1} and failed_patterns(study) == {}
    assert set(completed_results(study)) == {"*-*", "---"} and count_evaluations(study) == 2  # retried failures do not count


def test_a_listed_pattern_held_by_a_lost_worker_is_proposed_again(tmp_path):
    from search.strategies import ListStrategy
    from search.study import STALE_AFTER_S

    study = open_study(name="s", storage=None, run_dir=tmp_path, sampler=None)
    killed = study.ask()  # a worker on another machine took "*-*" and then went silent
    for key, value in {"pattern": "*-*", "role": "evaluate", "worker": "elsewhere:1",
                       "heartbeat": time.time() - 2 * STALE_AFTER_S}.items():
        killed.set_user_attr(key, value)
    alive = study.ask()  # ... while "---" is being trained by a live one
    for key, value in {"pattern": "---", "role": "evaluate", "worker": "elsewhere:2", "heartbeat": time.time()}.items():
        alive.set_user_attr(key, value)
    listed = ListStrategy(name="list", space=None, seed=0, sampler=None, patterns=("---", "*-*"))
    assert listed.propose(study.ask()) == "*-*"


def test_an_invalid_proposal_fails_the_trial_and_the_loop_goes_on(tmp_path):
    study = open_study(name="s", storage=None, run_dir=tmp_path, sampler=None)
    proposals = iter(["*x-", "*-"])
    trials = run_trials(study, propose=lambda trial: next(proposals), evaluate=Counting(), n_trials=2)
    assert trials[0].state == TrialState.FAIL and "'x' at position 1" in trials[0].user_attrs["error"]
    assert trials[1].state == TrialState.COMPLETE and count_evaluations(study) == 1


def test_a_trial_without_heartbeat_is_freed(tmp_path):
    study = open_study(name="s", storage=tmp_path / "s.journal", run_dir=tmp_path, sampler=None)
    ghost = study.ask()  # a worker on another host that stopped beating mid-evaluation
    for key, value in {"worker": "elsewhere:1", "heartbeat": time.time() - 60, "pattern": "*-", "role": "evaluate"}.items():
        ghost.set_user_attr(key, value)
    evaluate = Counting()
    trials = run_trials(study, propose=lambda trial: "*-", evaluate=evaluate, n_trials=1, stale_after_s=30)
    assert evaluate.calls == {"*-": 1} and trials[0].state == TrialState.COMPLETE
    assert study.get_trials()[0].state == TrialState.FAIL and count_evaluations(study) == 1


def test_a_trial_killed_before_naming_its_worker_is_freed(tmp_path, monkeypatch):
    monkeypatch.setattr(search.study, "UNCLAIMED_GRACE_S", 0.5)
    study = open_study(name="s", storage=None, run_dir=tmp_path, sampler=None)
    study.ask()  # a worker SIGKILLed right after `ask`, before any user attr
    evaluate = Counting()
    started = time.time()
    trials = run_trials(study, propose=lambda trial: "*-", evaluate=evaluate, n_trials=1)
    assert trials[0].state == TrialState.COMPLETE and evaluate.calls == {"*-": 1}
    assert study.get_trials()[0].state == TrialState.FAIL and time.time() - started < 10  # not stale_after_s


def test_keyboard_interrupt_fails_the_trial_in_flight_and_propagates(tmp_path):
    study = open_study(name="s", storage=None, run_dir=tmp_path, sampler=None)

    def evaluate(pattern: str) -> dict:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_trials(study, propose=lambda trial: "*-", evaluate=evaluate, n_trials=2)
    (trial,) = study.get_trials()
    assert trial.state == TrialState.FAIL and trial.user_attrs["error"] == "interrupted"
    assert count_evaluations(study) == 0  # an interrupted run is retried, not counted


class InterruptedAsk(optuna.samplers.RandomSampler):
    """Ctrl-C (or `stop`) lands inside `ask`, after the RUNNING trial is committed (before_trial runs then)."""

    def __init__(self, *args, stop=lambda: signal.raise_signal(signal.SIGINT), **kwargs):
        super().__init__(*args, **kwargs)
        self.stop = stop

    def before_trial(self, study, trial):
        super().before_trial(study, trial)
        self.stop()


@pytest.mark.parametrize("stop", [
    lambda: signal.raise_signal(signal.SIGINT),
    lambda: stop_at_next_step(signal.SIGTERM, None),  # a spawned worker's parent's stop
])
def test_ctrl_c_during_ask_still_fails_the_new_trial(tmp_path, stop):
    study = open_study(name="s", storage=None, run_dir=tmp_path, sampler=InterruptedAsk(seed=0, stop=stop))
    evaluate = Counting()
    with pytest.raises(KeyboardInterrupt):
        run_trials(study, propose=lambda trial: "*-", evaluate=evaluate, n_trials=2)
    (trial,) = study.get_trials()  # not left RUNNING without a worker
    assert trial.state == TrialState.FAIL and trial.user_attrs["error"] == "interrupted"
    assert evaluate.calls == {} and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_sigint_stays_ignored_during_ask(tmp_path):
    study = open_study(name="s", storage=None, run_dir=tmp_path, sampler=InterruptedAsk(seed=0))
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for a worker started with `nohup ... &`
    try:
        (trial,) = run_trials(study, propose=lambda trial: "*-", evaluate=Counting(), n_trials=1)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert trial.state == TrialState.COMPLETE


def test_ctrl_c_just_after_tell_keeps_the_told_result(tmp_path, monkeypatch):
    study = open_study(name="s", storage=None, run_dir=tmp_path, sampler=None)
    tell = study.tell

    def tell_then_interrupt(*args, **kwargs):  # the signal lands as `tell` returns
        tell(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "tell", tell_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_trials(study, propose=lambda trial: "*-", evaluate=Counting(), n_trials=2)
    (trial,) = study.get_trials()
    assert trial.state == TrialState.COMPLETE and count_evaluations(study) == 1


def test_multi_objective_values(tmp_path):
    study = open_study(name="s", storage=None, run_dir=tmp_path, sampler=optuna.samplers.NSGAIISampler(seed=0),
                       directions=("maximize", "minimize"))
    run_trials(study, propose=propose_positions, evaluate=lambda p: {"score": (score(p), p.count("*"))}, n_trials=3)
    for pattern, result in completed_results(study).items():
        assert result["values"] == [score(pattern), pattern.count("*")]


@pytest.mark.parametrize("storage", ["postgres://x/y", "redis://h", "study.txt", "journal:", "", "sqlite:/x.db"])
def test_bad_storage_is_a_one_line_config_error(tmp_path, storage):
    with pytest.raises(ConfigError) as info:
        open_study(name="s", storage=storage, run_dir=tmp_path, sampler=None)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------- processes

WORKER = textwrap.dedent('''
    """One search worker: cycles through 8 patterns; evaluate sleeps, appends to a log, fsyncs."""
    import itertools, os, sys, time
    import optuna
    from search.study import open_study, run_trials

    storage, log_path, max_trials, sleep_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    patterns = ["".join(p) for p in itertools.product("*-", repeat=3)]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(name="search", storage=storage, run_dir=os.path.dirname(log_path), sampler=None)
    proposals = itertools.cycle(patterns)  # every worker proposes the same sequence: they collide

    def evaluate(pattern):
        time.sleep(sleep_s)
        with open(log_path, "a") as f:
            f.write(pattern + "\\n")
            f.flush()
            os.fsync(f.fileno())
        return {"score": pattern.count("*") / len(pattern) - 0.5 * (pattern[-1] == "*")}

    run_trials(study, propose=lambda trial: next(proposals), evaluate=evaluate, n_trials=100,
               max_trials=max_trials, poll_s=0.05)
''')


def start_worker(tmp_path: Path, storage: str, *, max_trials: int = 8, sleep_s: float = 0.2) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                        "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), storage, str(tmp_path / "evaluations.log"),
                             str(max_trials), str(sleep_s)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def evaluations(tmp_path: Path) -> Counter[str]:
    path = tmp_path / "evaluations.log"
    return Counter(path.read_text().split()) if path.exists() else Counter()


def load(storage: str, tmp_path: Path) -> optuna.Study:
    return open_study(name="search", storage=storage, run_dir=tmp_path, sampler=None)


def test_sigkill_loses_nothing_and_rerun_finishes(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    # 1 s a trial: the kill lands between the third and the eighth evaluation, a window of 5 s, however
    # long one poll of the study takes on a loaded machine
    worker = start_worker(tmp_path, storage, sleep_s=1.0)
    deadline, done = time.time() + 120, 0
    while time.time() < deadline and done < 3:
        time.sleep(0.05)
        study = observe(tmp_path / "study.db", "search")
        done = len(completed_results(study)) if study else 0
    assert worker.poll() is None and done >= 3, f"the worker never had three evaluations (exit code {worker.poll()})"
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    before = completed_results(load(storage, tmp_path))
    assert 3 <= len(before) < 8

    rerun = start_worker(tmp_path, storage)
    out, _ = rerun.communicate(timeout=120)  # a trial killed before naming its worker is freed after 20 s
    assert rerun.returncode == 0, out
    study = load(storage, tmp_path)
    after = completed_results(study)
    assert all(after[p]["values"] == r["values"] and after[p]["trial"] == r["trial"] for p, r in before.items())
    assert count_evaluations(study) == 8 and sorted(after) == sorted(PATTERNS)
    # each pattern trained once across the kill, but the one in flight: killed after its training, before
    # its result was stored, it is trained again (what was stored before the kill never is)
    trained = evaluations(tmp_path)
    again = {p for p, n in trained.items() if n > 1}
    assert sorted(trained) == sorted(PATTERNS) and max(trained.values()) <= 2 and len(again) <= 1
    assert not again & set(before)
    lost = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert len(lost) <= 1  # the trial in flight at the kill, freed by the rerun
    assert again <= {t.user_attrs.get("pattern") for t in lost}  # trained again: only that trial's pattern


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_workers_share_one_study_without_training_twice(tmp_path, kind):
    storage = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else str(tmp_path / "study.journal")
    workers = [start_worker(tmp_path, storage, sleep_s=0.1) for _ in range(2)]
    for worker in workers:
        out, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0, out
    assert evaluations(tmp_path) == Counter(PATTERNS)  # every pattern exactly once
    study = load(storage, tmp_path)
    assert count_evaluations(study) == 8 and sorted(completed_results(study)) == sorted(PATTERNS)
    roles_seen = Counter(t.user_attrs["role"] for t in study.get_trials())
    assert roles_seen["duplicate"] + roles_seen["cached"] > 0, roles_seen  # the workers did collide
    for t in study.get_trials():
        roles = {"evaluate": TrialState.COMPLETE, "cached": TrialState.COMPLETE,
                 "duplicate": TrialState.PRUNED, "budget": TrialState.PRUNED}
        assert t.state == roles[t.user_attrs["role"]], t
        if t.user_attrs["role"] == "cached":
            assert t.values == completed_results(study)[t.user_attrs["pattern"]]["values"]


def test_a_ctrl_c_that_python_drops_still_stops_the_loop_before_the_next_trial(tmp_path):
    # Python prints and drops an exception raised in a weakref callback or __del__ ("Exception ignored in"):
    # a Ctrl-C landing there was lost and a search answering cached trials ran on (seen 2026-12-04)
    study = open_study(name="s", storage=None, run_dir=tmp_path, sampler=None)
    evaluate = Counting()

    def swallowed(pattern: str) -> dict:
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass  # what the weakref callback does to it
        return evaluate(pattern)

    with pytest.raises(KeyboardInterrupt):
        run_trials(study, propose=lambda trial: PATTERNS[trial.number], evaluate=swallowed, n_trials=5)
    assert evaluate.calls == {PATTERNS[0]: 1}  # the trial in flight finished; no other started
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # the next call starts afresh
    assert len(run_trials(study, propose=lambda trial: PATTERNS[trial.number], evaluate=evaluate, n_trials=1)) == 1


def test_a_first_ctrl_c_stops_training_loops_at_their_next_step_and_a_second_at_once(tmp_path):
    # Raised where it landed, a Ctrl-C could leave a lock held (after an acquire, before its `try`) that a
    # thread the main one then joins needs: a search hung after Ctrl-C on a loaded machine (2026-12-07)
    from composer.engine.graphs import stop_requested

    study = open_study(name="s", storage=None, run_dir=tmp_path, sampler=None)
    seen: list[bool] = []

    def evaluate(pattern: str) -> dict:
        signal.raise_signal(signal.SIGINT)  # noted, not raised: the training loops see it at their next step
        seen.append(stop_requested())
        if pattern == PATTERNS[1]:
            signal.raise_signal(signal.SIGINT)  # a second one: at once
            seen.append(False)
        return {"score": score(pattern)}

    with pytest.raises(KeyboardInterrupt):
        run_trials(study, propose=lambda trial: PATTERNS[trial.number], evaluate=evaluate, n_trials=5)
    (trial,) = study.get_trials()  # no trial after the one in flight
    assert trial.state == TrialState.COMPLETE and seen == [True]
    assert not stop_requested()  # the next call's training runs
    with pytest.raises(KeyboardInterrupt):
        run_trials(study, propose=lambda trial: PATTERNS[1], evaluate=evaluate, n_trials=5)
    assert study.get_trials()[-1].state == TrialState.FAIL and study.get_trials()[-1].user_attrs["error"] == "interrupted"
    assert seen == [True, True] and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_workers_stop_from_its_parent_is_a_first_ctrl_c_however_many_arrive(tmp_path):
    # after the terminal's Ctrl-C (to every process of the group), the parent's forwarded stop must not be a
    # second Ctrl-C: that raises where it lands
    from composer.engine.graphs import stop_requested

    study = open_study(name="s", storage=None, run_dir=tmp_path, sampler=None)
    seen: list[bool] = []

    def evaluate(pattern: str) -> dict:
        signal.raise_signal(signal.SIGINT)  # the terminal's
        for _ in range(2):
            stop_at_next_step(signal.SIGTERM, None)  # the parent's, twice: noted, not raised
        seen.append(stop_requested())
        return {"score": score(pattern)}

    with pytest.raises(KeyboardInterrupt):
        run_trials(study, propose=lambda trial: PATTERNS[trial.number], evaluate=evaluate, n_trials=5)
    assert seen == [True] and [t.state for t in study.get_trials()] == [TrialState.COMPLETE]
    with pytest.raises(KeyboardInterrupt):  # outside run_trials: at once
        stop_at_next_step(signal.SIGTERM, None)

