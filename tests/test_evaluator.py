"""search.evaluator and search.runner in-process: per-task scores, the learning-rate sweep, reuse of
finished runs, a forced NaN recorded as a failure while the search goes on, and the other strategies
(evolution, incremental) through the same runner. Tiny proxies on tiny tasks, real SQLite."""

from __future__ import annotations

import json
import logging
import threading
import time
import types
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from composer.errors import ConfigError
from composer.engine.trainer import CHECKPOINT, DivergedError
from primitives.nn.mamba2 import Mamba2
from search.evaluator import Evaluator, evaluator_config_from_mapping
from search.runner import run_search, search_config_from_mapping
from search.study import failed_patterns

optuna.logging.set_verbosity(optuna.logging.WARNING)

EVALUATOR = {
    "name": "tiny",
    "model": {"d_model": 16, "attention": {"n_heads": 2}, "mamba2": {"head_dim": 8, "d_state": 8, "chunk_size": 8}},
    "tasks": {"in_context_recall": {"length": 16, "n_train": 64, "n_test": 32},
              "memorization": {"vocab": 32, "length": 16, "n_train": 16, "n_test": 32}},
    "trainer": {"max_tokens": 4096, "batch_size": 16, "device": "cpu", "ckpt_every": 4},
}


def evaluator(tmp_path: Path, **changes) -> Evaluator:
    return Evaluator(evaluator_config_from_mapping({**EVALUATOR, **changes}), run_dir=tmp_path)


def test_scores_are_the_mean_of_per_task_accuracies_and_runs_are_reused(tmp_path):
    ev = evaluator(tmp_path)
    result = ev("*-")
    assert set(result["tasks"]) == {"in_context_recall", "memorization"}
    assert result["score"] == pytest.approx(sum(result["tasks"].values()) / 2)
    summaries = sorted(tmp_path.glob("trials/*/*/summary.json"))
    assert len(summaries) == 2 and not list(tmp_path.glob(f"trials/*/*/{CHECKPOINT}"))  # checkpoints deleted
    stamps = [p.stat().st_mtime_ns for p in summaries]
    assert ev("*-")["tasks"] == result["tasks"]  # read back, not retrained
    assert [p.stat().st_mtime_ns for p in summaries] == stamps
    assert ev("*-", seed=1)["seed"] == 1 and len(list(tmp_path.glob("trials/*/*/summary.json"))) == 4


def test_a_tasks_data_is_made_once_per_process_and_scores_as_made_anew(tmp_path):
    """Every candidate trains on the same training and test sets: a worker makes each task's once (at a seed),
    and a candidate scores the same on them as on sets made anew."""
    from composer.runs.proxy import task_data

    task_data.cache_clear()
    first = evaluator(tmp_path / "a")("*-")
    assert task_data.cache_info().misses == 2  # two tasks
    evaluator(tmp_path / "b")("-M")
    assert task_data.cache_info().misses == 2 and task_data.cache_info().hits == 2
    evaluator(tmp_path / "c")("-M", seed=1)
    assert task_data.cache_info().misses == 4  # another seed, other sets
    task_data.cache_clear()
    again = evaluator(tmp_path / "d")("*-")
    assert task_data.cache_info().misses == 2 and (again["score"], again["tasks"]) == (first["score"], first["tasks"])


def test_learning_rate_sweep_keeps_the_best_and_skips_a_diverging_rate(tmp_path):
    ev = evaluator(tmp_path, lrs=[3e-3, 1e-5, 1e12])
    result = ev("*-")
    per_lr = {}
    for summary in tmp_path.glob("trials/*/*/summary.json"):
        data = json.loads(summary.read_text())
        per_lr.setdefault(data["task"], {})[summary.parent.name.split("-lr")[1]] = data
    for task, runs in per_lr.items():
        assert runs["1e+12"]["status"] == "diverged"
        done = {lr: r["final"]["accuracy"] for lr, r in runs.items() if r["status"] == "completed"}
        assert set(done) == {"0.003", "1e-05"}
        assert result["tasks"][task] == max(done.values())
        assert result["best_lr"][task] == float(max(done, key=done.get))


def test_every_rate_diverging_fails_the_evaluation(tmp_path):
    with pytest.raises(DivergedError, match="diverged at every learning rate"):
        evaluator(tmp_path, lrs=[1e12])("*-")


def test_parallel_runs_score_exactly_as_one_at_a_time(tmp_path):
    """Tasks x learning rates in threads: each run is seeded alone, so the scores are bit-identical."""
    one = evaluator(tmp_path / "one", lrs=[3e-3, 1e-3])("*M")
    threads = evaluator(tmp_path / "threads", lrs=[3e-3, 1e-3], parallel=4)("*M")
    assert threads["tasks"] == one["tasks"] and threads["best_lr"] == one["best_lr"]
    assert len(list((tmp_path / "threads").glob("trials/*/*/summary.json"))) == 4


def test_batch_tokens_give_every_task_the_same_tokens_per_step(tmp_path):
    tasks = {"in_context_recall": {"length": 16, "n_train": 64, "n_test": 32},
             "selective_copying": {"length": 32, "n_copy": 4, "n_train": 64, "n_test": 32}}
    evaluator(tmp_path, tasks=tasks, trainer={**EVALUATOR["trainer"], "batch_tokens": 256})("*-")
    for task in ("in_context_recall", "selective_copying"):  # lengths 16 and 32: batches of 16 and 8
        folder = next(tmp_path.glob(f"trials/*/{task}-*"))
        first = json.loads((folder / "metrics.jsonl").read_text().splitlines()[0])
        assert json.loads((folder / "summary.json").read_text())["step"] == 4096 // 256, task
        assert first["tokens"] == first["step"] * 256, task
    with pytest.raises(ConfigError, match=r"trainer.batch_tokens \(8\) is less than one sequence \(16 tokens\)"):
        evaluator(tmp_path / "bad", tasks=tasks, trainer={**EVALUATOR["trainer"], "batch_tokens": 8})("*-")


def test_a_task_trains_its_own_token_budget_and_the_others_the_trainers(tmp_path):
    evaluator(tmp_path, task_tokens={"memorization": 1024})("*-")
    steps = {task: json.loads(next(tmp_path.glob(f"trials/*/{task}-*/summary.json")).read_text())["step"]
             for task in ("in_context_recall", "memorization")}
    assert steps == {"in_context_recall": 4096 // (16 * 16), "memorization": 1024 // (16 * 16)}


def test_a_failing_parallel_run_stops_the_others_and_raises(tmp_path, monkeypatch):
    """The first error stops the runs still going (at their next step) and is the evaluation's error."""
    import composer.runs.proxy

    original = composer.runs.proxy.train_on_task

    def failing(**kwargs):
        if kwargs["task_name"] == "memorization":
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(**{**kwargs, "trainer_cfg": replace(kwargs["trainer_cfg"], max_tokens=10**9)})  # never ends

    monkeypatch.setattr(composer.runs.proxy, "train_on_task", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        evaluator(tmp_path, parallel=2)("*-")
    # the recall run (a budget of 3.9M steps) was stopped, not finished: its folder has no summary
    assert list(tmp_path.glob("trials/*/in_context_recall-*")) and not list(tmp_path.glob("trials/*/*/summary.json"))


def test_a_failing_evaluation_stops_only_its_own_runs(tmp_path, monkeypatch):
    """Evaluations side by side in one process (evaluations_per_worker): one failing stops its own runs
    at their next step, while the other's runs, training at that moment, finish and score."""
    import composer.runs.proxy

    original, other_training = composer.runs.proxy.train_on_task, threading.Event()

    def patched(**kwargs):
        if kwargs["model_cfg"].pattern != "*-":  # the other evaluation: trains while the first one fails
            other_training.set()
            return original(**kwargs)
        if kwargs["task_name"] == "memorization":
            assert other_training.wait(60)
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(**{**kwargs, "trainer_cfg": replace(kwargs["trainer_cfg"], max_tokens=10**9)})  # never ends

    monkeypatch.setattr(composer.runs.proxy, "train_on_task", patched)
    slow = {**EVALUATOR["trainer"], "max_tokens": 4096 * 8}  # still training when the first evaluation fails
    results, errors = {}, {}

    def evaluate(pattern: str, ev: Evaluator) -> None:
        try:
            results[pattern] = ev(pattern)
        except BaseException as exc:  # noqa: BLE001 - the test reads which
            errors[pattern] = exc

    threads = [threading.Thread(target=evaluate, args=("*-", evaluator(tmp_path / "a", parallel=2))),
               threading.Thread(target=evaluate, args=("-*", evaluator(tmp_path / "b", parallel=2, trainer=slow)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert isinstance(errors.get("*-"), RuntimeError) and "-*" not in errors, errors
    assert set(results["-*"]["tasks"]) == {"in_context_recall", "memorization"}
    assert len(list((tmp_path / "b").glob("trials/*/*/summary.json"))) == 2


def test_a_failed_evaluation_is_freed_before_the_next_one_trains(tmp_path, monkeypatch):
    """A failed run's model, optimizer and CUDA graph sit in reference cycles and in its traceback: a
    worker that kept them ran its later trials out of memory too. Garbage collection is off here, so
    only the evaluator's own collection (before its next evaluation) frees them."""
    import gc
    import weakref

    import composer.runs.proxy

    original, alive = composer.runs.proxy.train_on_task, []

    class Held:  # stands for the run's model: reachable only from its frame and from itself
        def __init__(self):
            self.me = self

    def failing(**kwargs):
        held = Held()
        if kwargs["task_name"] == "memorization" and len(alive) < 2:
            alive.append(weakref.ref(held))
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        assert not any(ref() for ref in alive), "the failed evaluation's objects are still alive"
        return original(**kwargs)

    monkeypatch.setattr(composer.runs.proxy, "train_on_task", failing)
    ev = evaluator(tmp_path, tasks={"memorization": EVALUATOR["tasks"]["memorization"]})
    gc.disable()
    try:
        for _ in range(2):
            with pytest.raises(torch.OutOfMemoryError, match="simulated"):
                ev("*-")
        assert ev("*-")["score"] >= 0
    finally:
        gc.enable()


@pytest.mark.parametrize("bad, message", [
    ({"tasks": {"sorting": {}}}, "unknown task 'sorting'"),
    ({"tasks": {"in_context_recall": {"lenght": 8}}}, "unknown key task.lenght"),
    ({"model": {"pattern": "**"}}, "evaluator.model.pattern"),
    ({"model": {"d_model": 30, "attention": {"n_heads": 4}}}, "attention"),
    ({"reeval_seeds": [0]}, "reeval_seeds"),
    ({"parallel": 0}, "evaluator.parallel must be an integer >= 1"),
    ({"task_tokens": {"sorting": 1000}}, "task_tokens: unknown task 'sorting'"),
    ({"task_tokens": {"memorization": 0}}, "task_tokens.memorization must be a positive number of tokens, got 0"),
    ({"task_tokens": {"memorization": 1e6}}, "task_tokens.memorization must be a positive number of tokens"),
    ({"tasks": None, "corpus": {"path": None}, "seq_len": 32, "val_tokens": 64, "task_tokens": {"lm": 10}},
     "task_tokens is a MAD setting"),
])
def test_bad_evaluator_settings_fail_before_training(bad, message):
    with pytest.raises(ConfigError, match=message):
        evaluator_config_from_mapping({**EVALUATOR, **bad})


def test_a_task_set_to_null_is_left_out_and_all_left_out_is_refused():
    cfg = evaluator_config_from_mapping({**EVALUATOR, "tasks": {**EVALUATOR["tasks"], "memorization": None},
                                         "task_tokens": {"memorization": 1024, "in_context_recall": 2048}})
    assert set(cfg.tasks) == {"in_context_recall"} and dict(cfg.task_tokens) == {"in_context_recall": 2048}
    with pytest.raises(ConfigError, match=r"evaluator.tasks: every task is left out \(null\)") as info:
        evaluator_config_from_mapping({**EVALUATOR, "tasks": {name: None for name in EVALUATOR["tasks"]}})
    assert "\n" not in str(info.value)


def test_the_fast_mad_preset_is_mad_on_three_of_its_tasks():
    import subprocess
    import sys

    import yaml

    from tests.conftest import cli_env

    def composed(evaluator: str) -> dict:
        proc = subprocess.run([sys.executable, "-m", "composer.apps.search", f"evaluator={evaluator}", "--cfg", "job"],
                              capture_output=True, text=True, timeout=120, env=cli_env())
        assert proc.returncode == 0, proc.stderr[-2000:]
        return yaml.safe_load(proc.stdout)["evaluator"]

    mad, fast = composed("mad"), composed("mad_fast")
    # the GPU presets compile each layer (scores within the seed spread, RESULTS.md); the CPU preset does not
    assert mad["trainer"]["compile"] is True and composed("mad_cpu")["trainer"]["compile"] is False
    cfg = evaluator_config_from_mapping(fast)
    assert list(cfg.tasks) == ["noisy_in_context_recall", "selective_copying", "compression"]
    assert cfg.name == "mad_fast" and cfg.parallel == 3
    # everything else is mad's: the proxy's width, trainer and tokens
    assert {k: v for k, v in fast.items() if k not in ("name", "tasks", "parallel")} == \
        {k: v for k, v in mad.items() if k not in ("name", "tasks", "parallel")}


def search(tmp_path: Path, **changes):
    cfg = {"name": "s", "space": {"alphabet": "*-M", "length": 2}, "strategy": {"name": "random"},
           "evaluator": EVALUATOR, "n_trials": 8, "workers": 1, "leaderboard": str(tmp_path / "lb.jsonl"), **changes}
    return search_config_from_mapping(cfg)


def test_a_nan_trial_is_recorded_with_its_reason_and_the_search_completes(tmp_path, monkeypatch):
    def nan_forward(self, x, state=None):  # every Mamba-2 layer now outputs NaN: its patterns diverge
        return torch.full_like(x, float("nan"))

    monkeypatch.setattr(Mamba2, "forward", nan_forward)
    result = run_search(search(tmp_path), run_dir=tmp_path / "run")  # all 8 feasible 2-layer patterns
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    failed = failed_patterns(study)
    assert sorted(failed) == sorted(["*M", "M*", "-M", "M-", "MM"])
    assert all("loss became nan" in reason for reason in failed.values())
    assert sorted(p["pattern"] for p in result["top"]) == sorted(["**", "-*"])  # "*-" is the baseline: not a candidate
    assert [b["pattern"] for b in result["baselines"]] == ["*-"]
    assert result["n_failed"] == 5 and result["n_evaluations"] == 8
    assert "M" not in result["architecture"]
    fails = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert all(t.user_attrs["error"] for t in fails)


def test_evolution_records_quality_and_cost(tmp_path):
    result = run_search(search(tmp_path, strategy={"name": "evolution", "options": {"population_size": 4}},
                               n_trials=5), run_dir=tmp_path / "run")
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(study.directions) == 2 and all(len(t.values) == 2 for t in done)
    # the cost is the proxy's inference state per token at 32K: attention's KV cache dwarfs Mamba's state
    by_pattern = {t.user_attrs["pattern"]: t.values[1] for t in done}
    assert all((by_pattern[p] > 0) == ("*" in p or "M" in p) for p in by_pattern)
    assert result["n_evaluations"] == 5


def test_end_layer_search_grows_the_frozen_pattern(tmp_path):
    cfg = search(tmp_path, space={"alphabet": "*-", "length": 1},
                 strategy={"name": "end_layer", "base": "random", "rounds": 2, "start": "*"}, n_trials=2)
    result = run_search(cfg, run_dir=tmp_path / "run")
    assert len(result["architecture"]) == 3 and result["architecture"].startswith("*")
    for r in (1, 2):  # one study per round, each with its budget
        study = optuna.load_study(study_name=f"s.round{r}", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
        lengths = {len(t.user_attrs["pattern"]) for t in study.get_trials() if t.state == TrialState.COMPLETE}
        assert lengths == {1 + r}


def _raise_in(filename: str, message: str):
    """Raise TypeError(message) from code whose frame says it lives in `filename` (a kernel library's file)."""
    exec(compile(f"raise TypeError({message!r})", filename, "exec"))


@pytest.mark.parametrize("where, retried", [("/site/triton/runtime/autotuner.py", True), ("/site/composer/model.py", False)])
def test_a_triton_autotuner_race_trains_the_run_again_and_nothing_else_does(tmp_path, where, retried):
    from search.evaluator import _Job

    calls = []

    def train(trainer, folder):
        calls.append(folder)
        if len(calls) == 1:  # what Triton's Autotuner raises when two threads call one kernel at once
            _raise_in(where, "'NoneType' object is not a mapping")
        return {"final": {"accuracy": 0.75}}

    job = _Job(name="in_context_recall", identity={}, score=lambda final: final["accuracy"], train=train)
    evaluator = Evaluator(evaluator_config_from_mapping({"name": "mad_cpu"}), run_dir=tmp_path)
    if retried:
        assert evaluator._attempt("*-", job, 1e-3, 0) == {"accuracy": 0.75} and len(calls) == 2
    else:  # any other TypeError is a bug: raised, not retried
        with pytest.raises(TypeError, match="not a mapping"):
            evaluator._attempt("*-", job, 1e-3, 0)
        assert len(calls) == 1


class _RacyTuner:
    """Shaped like Triton's Autotuner: a call's arguments kept on the shared object for the call's length."""

    def __init__(self) -> None:
        self.nargs = None

    def run(self, *args):
        self.nargs = dict(enumerate(args))
        time.sleep(0.002)  # tuning: benchmarks the configs, another thread runs meanwhile
        seen = dict(self.nargs)  # TypeError "'NoneType' object is not a mapping" once another call ended
        self.nargs = None
        return seen


def _hammer(tuner: _RacyTuner, threads: int = 6, calls: int = 20) -> list[BaseException]:
    import threading

    errors: list[BaseException] = []

    def work(i: int) -> None:
        for _ in range(calls):
            try:
                assert tuner.run(i) == {0: i}  # never another thread's arguments either
            except (TypeError, AssertionError) as exc:
                errors.append(exc)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return errors


def test_serialized_calls_let_threads_share_an_autotuned_kernel():
    from composer.engine.graphs import serialize_calls

    racy = type("Racy", (_RacyTuner,), {})
    assert _hammer(racy()), "the racy class must race without the lock, or this test proves nothing"
    safe = type("Safe", (_RacyTuner,), {})
    serialize_calls(safe, "run")
    serialize_calls(safe, "run")  # idempotent: one lock, not two wrappers
    assert getattr(safe.run, "__wrapped__").__qualname__ == "_RacyTuner.run"
    assert _hammer(safe()) == []
    a, b = safe(), safe()  # one lock per object: a call on `a` does not wait for a call on `b`
    assert a.run(1) == {0: 1} and b.run(2) == {0: 2}
    assert a.__dict__["_composer_lock"] is not b.__dict__["_composer_lock"]


def test_runs_beyond_the_stream_pool_wait_for_a_stream_and_never_share_one(caplog):
    """torch hands out 32 streams per device round robin: the 33rd run at once would share the first's
    stream (and its graph capture). A stand-in for torch's pool here; tests/gpu checks torch's own."""
    import itertools

    from composer.engine.graphs import StreamLeases

    pool = itertools.cycle(range(StreamLeases.POOL_STREAMS))
    draw = threading.Lock()

    def new_stream(device):
        with draw:
            return types.SimpleNamespace(stream_id=next(pool))

    leases, holding, clashes, most = StreamLeases(new_stream), {}, [], [0]
    state, full, waiting = threading.Lock(), threading.Event(), threading.Event()
    said = logging.Handler()  # the lease says so once a run finds all 32 streams held
    said.emit = lambda record: waiting.set()

    def run(i):
        with leases.lease("cuda:0") as stream:
            with state:
                if stream.stream_id in holding.values():
                    clashes.append((i, stream.stream_id))
                holding[i] = stream.stream_id
                most[0] = max(most[0], len(holding))
                if len(holding) == StreamLeases.POOL_STREAMS:
                    full.set()
            # held until 32 are held at once and a 33rd run waits: not a fixed sleep, after which the first
            # runs had ended before the 32nd began on a loaded machine
            full.wait(timeout=60) and waiting.wait(timeout=60)
            with state:
                del holding[i]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(40)]
    graphs_log = logging.getLogger("composer.engine.graphs")
    graphs_log.addHandler(said)
    try:
        with caplog.at_level(logging.WARNING, logger="composer.engine.graphs"):
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        graphs_log.removeHandler(said)
    assert clashes == [] and most[0] == StreamLeases.POOL_STREAMS
    assert "the others wait for a stream" in caplog.text
    with leases.lease("cuda:1") as other:  # another device's pool is its own
        assert other.stream_id is not None


def test_compiled_layers_are_compiled_once_per_worker_and_reused_by_later_candidates(tmp_path):
    """Issue 17: with `trainer.compile`, a worker compiles each layer type at each task's shapes once; a later
    candidate built of the same layer types, in another order, compiles nothing new."""
    from torch._dynamo.utils import counters

    ev = evaluator(tmp_path, trainer={**EVALUATOR["trainer"], "compile": True, "progress": False})
    first = ev("*-M-")
    compiled = counters["stats"]["unique_graphs"]
    second = ev("M-*-")
    assert compiled > 0 and counters["stats"]["unique_graphs"] == compiled
    assert set(first["tasks"]) == set(second["tasks"]) == set(EVALUATOR["tasks"])
