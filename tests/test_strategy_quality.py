"""Search quality of each strategy on a cheap synthetic objective with a known optimum (no training).

Acceptance criterion of the search issue: each strategy finds the known optimum within a budget
where random search mostly does not, and every stored pattern honours the space's constraints.

The objective is the share of layers matching a hidden target (evolution adds a cost: attention 1,
Mamba-2 0.5, MLP 0). Every study is a real SQLite study under tmp_path, driven by run_trials. A run
is "successful" when the exact target is among its completed patterns within the trial budget
(cached re-proposals of an already evaluated pattern count as trials: conservative for the
strategies, which re-propose more often than random does).

A run stops at the trial that evaluates the target: the samplers are deterministic given their
seed and the study's history, so the trials up to that point are exactly those of a run of the
full budget, and the success verdict is the same; only the wasted trials after the hit are saved.

The hit trials quoted in the comments were observed on optuna 5.0.0; another optuna version may
move them (the assertions keep a margin of one seed, or of several trials).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import event
from sqlalchemy.engine import Engine

from search.space import SearchSpace
from search.strategies import (
    Strategy,
    compose_end_layer,
    compose_middle_layer,
    make_strategy,
    run_incremental,
)
from search.study import open_study, run_trials

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(autouse=True, scope="module")
def _sqlite_without_fsync():
    """SQLite without fsync for this module's studies: each trial commits ~15 times, and on a plain
    disk the syncs were a third of the module's runtime (57 s -> 37 s). Only crash durability is
    given up; the studies, their locking and the samplers' behaviour are unchanged."""

    def pragma(dbapi_connection, _record):
        dbapi_connection.execute("PRAGMA synchronous = OFF")

    event.listen(Engine, "connect", pragma)
    yield
    event.remove(Engine, "connect", pragma)


SEEDS = (0, 1, 2)

# ----------------------------------------------------------------------------------------- one-shot

TARGET = "**--M-"  # the hidden optimum; 2 of 6 attention layers meets max_share 0.5
# max_share binds: 3^6 = 729 patterns, 655 feasible (those with 4+ attention layers or no mixer are out)
SPACE = SearchSpace(alphabet="*-M", length=6, max_share={"*": 0.5})

# Trial budgets, and the first trial (1-based) that evaluated TARGET for seeds 0/1/2 (observed):
#   gp        25 trials  (default options)                      hits at 16/13/14
#   tpe       60 trials  (default options)                      hits at 31/49/19
#   evolution 60 trials  (population_size=6, see OPTIONS)        hits at 39/53/30
#   random    60 trials  (one run per seed, read at each budget) no hit within 100 trials for seeds
#                        0/1/2 (seed 3 would hit at trial 37: the assertion allows one lucky seed)
# Random search's analytic chance of evaluating TARGET in B uniform draws from the 655 feasible
# patterns is P = 1 - (1 - 1/655)^B: 3.7 % at B = 25, 8.8 % at B = 60; at least 2 of 3 seeds: 2.2 %
# at B = 60. (With the budget counted in distinct evaluations instead, P = B/655: 3.8 % and 9.2 %.)
BUDGETS = {"gp": 25, "tpe": 60, "evolution": 60}
# tpe with its defaults hit within 57 trials for each of seeds 0-7. NSGA-II's default population (20)
# gives only 3 generations in 60 trials; observed with it: a hit within 60 trials for 1 of seeds 0-7
# (seeds 0/1/2: none in 300 / 112 / 85 trials), no better than random search. population_size=6
# (an option of make_strategy, search/*.py unchanged) gives 10 generations. Even so NSGA-II re-proposes
# many already evaluated patterns (seeds 0-2: 10-23 of the trials up to the hit were cached) and
# spends much of its budget on the cheap end of the (quality, cost) front: it is the weakest of the
# three (hits within 60 trials for 5 of seeds 0-7 with population_size=6).
OPTIONS = {"evolution": {"population_size": 6}}


def match(pattern: str, target: str) -> float:
    """Share of the target's positions that the pattern matches (a shorter pattern matches a prefix)."""
    return sum(a == b for a, b in zip(pattern, target)) / len(target)


def evaluate(pattern: str) -> dict:
    return {"score": match(pattern, TARGET)}


def evaluate_two(pattern: str) -> dict:
    """(quality, cost): attention is the expensive layer, Mamba-2 half as expensive, MLP free."""
    return {"score": (match(pattern, TARGET), pattern.count("*") + 0.5 * pattern.count("M"))}


def random_success_probability(n_feasible: int, budget: int) -> float:
    """P(random search draws one given pattern in `budget` uniform draws from n_feasible patterns)."""
    return 1 - (1 - 1 / n_feasible) ** budget


def open_fresh(tmp_path: Path, label: str, strategy: Strategy) -> optuna.Study:
    return open_study(name=label, storage=f"sqlite:///{tmp_path / f'{label}.db'}", run_dir=tmp_path,
                      sampler=strategy.sampler, directions=strategy.directions)


def run_until(study: optuna.Study, strategy: Strategy, evaluate: Callable[[str], dict], *, budget: int,
              goal: str) -> int | None:
    """Run up to `budget` trials, stopping at the one that evaluates `goal`; its 1-based count, or None."""
    for n in range(1, budget + 1):
        [trial] = run_trials(study, propose=strategy.propose, evaluate=evaluate, n_trials=1)
        if trial.state == TrialState.COMPLETE and trial.user_attrs["pattern"] == goal:
            return n
    return None


def stored_patterns(study: optuna.Study) -> list[str]:
    return [t.user_attrs["pattern"] for t in study.get_trials() if "pattern" in t.user_attrs]


def assert_feasible(study: optuna.Study, space: SearchSpace) -> None:
    patterns = stored_patterns(study)
    assert patterns
    infeasible = [p for p in patterns if not space.is_feasible(p)]
    assert not infeasible, f"{study.study_name}: stored infeasible patterns {infeasible}"


@pytest.fixture(scope="module")
def random_hits(tmp_path_factory) -> dict[int, int | None]:
    """Seed -> the first trial of random search that evaluated TARGET, within max(BUDGETS) trials.

    Random search's proposals ignore the scores, so one run per seed serves every budget and both
    objectives: random search at budget B finds TARGET iff its hit is <= B."""
    tmp_path = tmp_path_factory.mktemp("random")
    hits = {}
    for seed in SEEDS:
        strategy = make_strategy("random", space=SPACE, seed=seed)
        study = open_fresh(tmp_path, f"random-{seed}", strategy)
        hits[seed] = run_until(study, strategy, evaluate, budget=max(BUDGETS.values()), goal=TARGET)
        assert_feasible(study, SPACE)
    return hits


def test_the_space_is_constrained_and_random_search_is_unlikely_to_hit():
    feasible = list(SPACE.enumerate())
    assert TARGET in feasible and len(feasible) == 655 < SPACE.size() == 729  # max_share binds
    for budget in BUDGETS.values():
        assert random_success_probability(len(feasible), budget) < 0.1


@pytest.mark.parametrize("name", ["gp", "tpe", "evolution"])
def test_strategy_finds_the_known_optimum_where_random_search_does_not(tmp_path, random_hits, name):
    budget = BUDGETS[name]
    hits = {}
    for seed in SEEDS:
        strategy = make_strategy(name, space=SPACE, seed=seed, **OPTIONS.get(name, {}))
        study = open_fresh(tmp_path, f"{name}-{seed}", strategy)
        hits[seed] = run_until(study, strategy, evaluate_two if name == "evolution" else evaluate,
                               budget=budget, goal=TARGET)
        assert_feasible(study, SPACE)  # constraints honoured: infeasible suggestions were replaced
    random_found = {seed: hit is not None and hit <= budget for seed, hit in random_hits.items()}
    assert sum(hit is not None for hit in hits.values()) >= 2, f"{name} hits within {budget} trials: {hits}"
    assert sum(random_found.values()) <= 1, f"random search found {TARGET} within {budget} trials: {random_hits}"


# ----------------------------------------------------------------------------------------- incremental

# Two rounds of 4-layer blocks grow an 8-layer architecture. A block space's max_share 0.5 allows at
# most 2 attention layers per block: 71 of 81 blocks are feasible. The objective scores a pattern
# against the architecture its round should reach (GOALS[kind][len(pattern)]): the target itself
# at full length, and before it what the kind's composition rule makes of the target's first block.
# Greedy round-by-round search is therefore optimal, and a round that misses its goal makes the
# exact target unreachable (the kept layers are wrong), so a run stops there.
INC_TARGET = "**-M-*M-"
BLOCK_SPACE = SearchSpace(alphabet="*-M", length=4, max_share={"*": 0.5})
ROUNDS = 2
ROUND_BUDGET = 16  # trials per round, 32 in all
# end_layer blocks "**-M" then "-*M-"; middle_layer "**M-" (4 layers, split 2 + 2) then "-M-*" in
# its middle: "**" + "-M-*" + "M-" = INC_TARGET.
GOALS = {
    "end_layer": {4: compose_end_layer("", "**-M"), 8: compose_end_layer("**-M", "-*M-")},
    "middle_layer": {4: compose_middle_layer("", "**M-"), 8: compose_middle_layer("**M-", "-M-*")},
}
COMPOSE = {"end_layer": compose_end_layer, "middle_layer": compose_middle_layer}
# Observed with the default base ("gp", default options: 10 random startup trials), the trial of
# each round that evaluated its goal, seeds 0/1/2:
#   end_layer     rounds 0+1: 11+11 / 15+11 / 12+6   (mostly the first GP-guided trial, 11)
#   middle_layer  rounds 0+1: 11+11 / 11+12 / 11+11
#   random        end_layer: round 0 misses for seeds 0 and 2; seed 1 hits it at 15, then misses
#                 round 1; middle_layer: seed 0 hits round 0 at 4, then misses round 1; seeds 1
#                 and 2 miss round 0. So 0 of 3 for both kinds.
# Random search finds one round's goal in 16 draws from the 71 feasible blocks with probability
# 1 - (70/71)^16 = 20 %, the exact 8-layer target (both rounds) with 4.1 %; at least 2 of 3 seeds: 0.5 %.


class _MissedRound(Exception):
    """A round ended without evaluating its goal: the exact target can no longer be reached."""


def run_incremental_search(tmp_path: Path, kind: str, *, seed: int, base: str) -> tuple[bool, list[optuna.Study]]:
    """Whether the run reached the exact target within its budget, and the studies of its rounds."""
    goals, studies = GOALS[kind], []

    def open_round(r: int, strategy: Strategy) -> optuna.Study:
        return open_study(name=f"round{r}", storage=f"sqlite:///{tmp_path / f'{kind}-{base}-{seed}.db'}",
                          run_dir=tmp_path, sampler=strategy.sampler, directions=strategy.directions)

    def run_round(study: optuna.Study, strategy: Strategy) -> None:
        studies.append(study)
        goal = goals[BLOCK_SPACE.length * len(studies)]
        if run_until(study, strategy, lambda p: {"score": match(p, goals[len(p)])}, budget=ROUND_BUDGET,
                     goal=goal) is None:
            raise _MissedRound

    try:
        history = run_incremental(kind, space=BLOCK_SPACE, rounds=ROUNDS, open_round=open_round,
                                  run_round=run_round, seed=seed, base=base)
    except _MissedRound:
        return False, studies
    assert history == [goals[BLOCK_SPACE.length * (r + 1)] for r in range(ROUNDS)]
    return True, studies


def assert_rounds_feasible(kind: str, studies: list[optuna.Study]) -> None:
    """Every trained block meets the block space's constraints and composes onto the previous round's result."""
    for r, study in enumerate(studies):
        previous = GOALS[kind][BLOCK_SPACE.length * r] if r else ""  # a round is only run after a hit
        trials = [t for t in study.get_trials() if "pattern" in t.user_attrs]
        assert trials
        for t in trials:
            pattern = t.user_attrs["pattern"]
            block = t.user_attrs.get("block", pattern)  # "block" is recorded when the pattern differs
            assert BLOCK_SPACE.is_feasible(block), (kind, r, pattern, BLOCK_SPACE.violations(block))
            assert pattern == COMPOSE[kind](previous, block), (kind, r, pattern, block)


def test_the_block_space_is_constrained_and_the_goals_are_feasible():
    feasible = list(BLOCK_SPACE.enumerate())
    assert len(feasible) == 71 < BLOCK_SPACE.size() == 81  # max_share binds
    assert GOALS["end_layer"][8] == GOALS["middle_layer"][8] == INC_TARGET
    for blocks in (("**-M", "-*M-"), ("**M-", "-M-*")):
        assert all(BLOCK_SPACE.is_feasible(b) for b in blocks)
    assert random_success_probability(len(feasible), ROUND_BUDGET) ** ROUNDS < 0.05


@pytest.mark.parametrize("kind", ["end_layer", "middle_layer"])
def test_incremental_strategy_finds_the_known_optimum_where_random_search_does_not(tmp_path, kind):
    found, random_found = {}, {}
    for seed in SEEDS:
        found[seed], studies = run_incremental_search(tmp_path, kind, seed=seed, base="gp")  # the default base
        assert_rounds_feasible(kind, studies)
        random_found[seed], studies = run_incremental_search(tmp_path, kind, seed=seed, base="random")
        assert_rounds_feasible(kind, studies)
    total = ROUNDS * ROUND_BUDGET
    assert sum(found.values()) >= 2, f"{kind} (gp) found {INC_TARGET} within {total} trials: {found}"
    assert sum(random_found.values()) <= 1, f"{kind} (random) found {INC_TARGET} within {total} trials: {random_found}"
