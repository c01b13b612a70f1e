"""search.strategies on real SQLite studies with a cheap analytic objective: feasibility, seeding,
search quality, Pareto fronts, incremental composition, the registry's errors, no torch at import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from composer.errors import ConfigError
from search.space import SearchSpace
from search.strategies import (
    STRATEGIES,
    compose_end_layer,
    compose_middle_layer,
    end_layer,
    make_strategy,
    middle_layer,
    pareto_front,
    run_incremental,
)
from search.study import completed_results, open_study, run_trials

REPO = Path(__file__).parents[1]
TARGET = "**--M-"  # the hidden optimum; 2 of 6 attention layers meets max_share 0.5
SPACE = SearchSpace(alphabet="*-M", length=6, max_share={"*": 0.5})

optuna.logging.set_verbosity(optuna.logging.WARNING)


def match(pattern: str, target: str = TARGET) -> float:
    """Share of positions equal to the hidden target."""
    return sum(a == b for a, b in zip(pattern, target)) / len(target)


def evaluate(pattern: str) -> dict:
    return {"score": match(pattern)}


def evaluate_two(pattern: str) -> dict:
    """(quality, cost): attention is the expensive layer."""
    return {"score": (match(pattern), pattern.count("*") + 0.5 * pattern.count("M"))}


def run(tmp_path: Path, name: str, *, seed: int = 0, n_trials: int = 16, space: SearchSpace = SPACE,
        study_name: str = "s", **options) -> optuna.Study:
    strategy = make_strategy(name, space=space, seed=seed, **options)
    study = open_study(name=study_name, storage=f"sqlite:///{tmp_path / f'{name}-{seed}-{study_name}.db'}",
                       run_dir=tmp_path, sampler=strategy.sampler, directions=strategy.directions)
    run_trials(study, propose=strategy.propose, evaluate=evaluate_two if name == "evolution" else evaluate,
               n_trials=n_trials)
    return study


def proposed(study: optuna.Study) -> list[str]:
    return [t.user_attrs["pattern"] for t in sorted(study.get_trials(), key=lambda t: t.number)]


@pytest.mark.parametrize("name", ["random", "tpe", "gp"])
def test_only_feasible_patterns_are_stored(tmp_path, name):
    study = run(tmp_path, name, n_trials=14)
    patterns = proposed(study)
    assert len(patterns) == 14
    assert all(SPACE.is_feasible(p) for p in patterns), [p for p in patterns if not SPACE.is_feasible(p)]
    for t in study.get_trials():
        if "suggested" in t.user_attrs:  # a replaced suggestion is recorded and was really infeasible
            assert SPACE.violations(t.user_attrs["suggested"]) == t.user_attrs["violations"] != []
            assert t.user_attrs["pattern"] != t.user_attrs["suggested"]
        else:
            assert "".join(t.params[f"layer_{i}"] for i in range(6)) == t.user_attrs["pattern"]


def test_infeasible_suggestions_are_replaced_and_marked_for_the_sampler(tmp_path):
    # max 1 attention in 6 layers: uniform suggestions are mostly infeasible
    space = SearchSpace(alphabet="*-M", length=6, max_share={"*": 1 / 6})
    study = run(tmp_path, "random", n_trials=12, space=space)
    replaced = [t for t in study.get_trials() if "suggested" in t.user_attrs]
    assert replaced, "expected some infeasible suggestions at this constraint"
    assert all(space.is_feasible(p) for p in proposed(study))
    for t in study.get_trials():
        assert t.constraints["suggestion_violations"] == len(t.user_attrs.get("violations", []))


@pytest.mark.parametrize("name", ["random", "tpe", "evolution"])
def test_same_seed_same_sequence(tmp_path, name):
    first = proposed(run(tmp_path / "a", name, seed=3, n_trials=15))
    second = proposed(run(tmp_path / "b", name, seed=3, n_trials=15))
    other = proposed(run(tmp_path / "c", name, seed=4, n_trials=15))
    assert first == second
    assert first != other


def test_gp_finds_the_target(tmp_path):
    # Verified: with seed 0 the GP finds the exact target in 20 trials, out of 729 patterns
    # (random search's best of 20 is typically 4/6 or 5/6).
    study = run(tmp_path, "gp", seed=0, n_trials=20)
    best = max(completed_results(study).items(), key=lambda kv: kv[1]["score"])
    assert best[1]["score"] == 1.0 and best[0] == TARGET


def test_tpe_reaches_near_best(tmp_path):
    study = run(tmp_path, "tpe", seed=2, n_trials=30)
    assert max(r["score"] for r in completed_results(study).values()) >= 5 / 6


def test_evolution_two_values_and_pareto_front_is_non_dominated(tmp_path):
    study = run(tmp_path, "evolution", n_trials=30, population_size=8)
    assert list(study.directions) == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    results = completed_results(study)
    assert all(len(r["values"]) == 2 for r in results.values())
    assert all(SPACE.is_feasible(p) for p in results)
    front = pareto_front(results)
    assert front

    def dominates(a, b):  # (max quality, min cost)
        (qa, ca), (qb, cb) = a, b
        return qa >= qb and ca <= cb and (qa > qb or ca < cb)

    for p in results:
        dominated = any(dominates(results[q]["values"], results[p]["values"]) for q in results if q != p)
        assert (p in front) == (not dominated), p


def test_pareto_front_by_hand():
    results = {"a": {"values": [1.0, 5.0]}, "b": {"values": [0.5, 1.0]}, "c": {"values": [0.5, 2.0]},
               "d": {"values": [1.0, 6.0]}}
    assert pareto_front(results) == ["a", "b"]
    assert pareto_front(results, directions=("maximize", "maximize")) == ["d"]
    with pytest.raises(ConfigError):
        pareto_front(results, directions=("maximize",))


def test_compose_by_hand():
    assert compose_end_layer("", "*-") == "*-"
    assert compose_end_layer("**-", "M-") == "**-M-"
    assert compose_middle_layer("", "*-") == "*-"
    assert compose_middle_layer("*-", "MM") == "*MM-"
    assert compose_middle_layer("**-", "M") == "*M*-"  # odd: the head is the smaller half
    assert compose_middle_layer("*--*", "MM") == "*-MM-*"


def test_end_layer_strategy_keeps_the_frozen_prefix(tmp_path):
    block_space = SearchSpace(alphabet="*-", length=3, require_sequence_mixer=False)
    strategy = end_layer("*-*", space=block_space, seed=0, base="tpe")
    study = open_study(name="end", storage=f"sqlite:///{tmp_path / 'end.db'}", run_dir=tmp_path,
                       sampler=strategy.sampler, directions=strategy.directions)
    run_trials(study, propose=strategy.propose, evaluate=lambda p: {"score": match(p, "*-**--")}, n_trials=10)
    patterns = proposed(study)
    assert len(patterns) == 10 and all(len(p) == 6 and p.startswith("*-*") for p in patterns)
    assert all(t.user_attrs["block"] == t.user_attrs["pattern"][3:] for t in study.get_trials())


def test_middle_layer_strategy_inserts_in_the_middle(tmp_path):
    block_space = SearchSpace(alphabet="*-", length=2, require_sequence_mixer=False)
    strategy = middle_layer("**--", space=block_space, seed=0, base="random")
    study = open_study(name="mid", storage=f"sqlite:///{tmp_path / 'mid.db'}", run_dir=tmp_path,
                       sampler=strategy.sampler, directions=strategy.directions)
    run_trials(study, propose=strategy.propose, evaluate=evaluate, n_trials=6)
    assert all(p[:2] == "**" and p[-2:] == "--" and len(p) == 6 for p in proposed(study))


@pytest.mark.parametrize("kind", ["end_layer", "middle_layer"])
def test_run_incremental_grows_by_a_block_per_round(tmp_path, kind):
    block_space = SearchSpace(alphabet="*-", length=2, require_sequence_mixer=False)

    def open_round(r, strategy):
        return open_study(name=f"{kind}-{r}", storage=f"sqlite:///{tmp_path / 'inc.db'}", run_dir=tmp_path,
                          sampler=strategy.sampler, directions=strategy.directions)

    studies = []

    def run_round(study, strategy):
        studies.append(study)
        run_trials(study, propose=strategy.propose, evaluate=lambda p: {"score": p.count("*") / len(p)},
                   n_trials=6)

    history = run_incremental(kind, space=block_space, rounds=3, open_round=open_round, run_round=run_round,
                              seed=0, base="random")
    assert [len(p) for p in history] == [2, 4, 6]
    for r, study in enumerate(studies):  # each round keeps its best pattern and builds on the last round's
        done = completed_results(study)
        assert done[history[r]]["score"] == max(v["score"] for v in done.values())
        previous = history[r - 1] if r else ""
        for pattern in done:
            block = pattern[len(previous):] if kind == "end_layer" else pattern[len(previous) // 2:][:2]
            compose = compose_end_layer if kind == "end_layer" else compose_middle_layer
            assert pattern == compose(previous, block)


def test_unknown_strategy_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as info:
        make_strategy("annealing", space=SPACE, seed=0)
    message = str(info.value)
    assert "\n" not in message and all(name in message for name in STRATEGIES)
    with pytest.raises(ConfigError):
        make_strategy("tpe", space=SPACE, seed=0, no_such_option=1)
    with pytest.raises(ConfigError):
        run_incremental("sideways", space=SPACE, rounds=1, open_round=None, run_round=None, seed=0)


def test_importing_strategies_does_not_import_torch():
    code = "import sys, search.strategies; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
