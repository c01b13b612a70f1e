"""Search strategies: the sampler a study is opened with, and the `propose(trial)` that run_trials calls.

Every strategy searches the same categorical encoding: one Optuna parameter per searched position,
`layer_{i}` over the space's alphabet. What differs is the sampler (random, TPE, the paper's GP-BO,
NSGA-II) and how the searched block becomes the full pattern (one-shot: the block is the pattern;
end-layer incremental: frozen prefix + block; middle-layer incremental: head + block + tail).

    strategy = make_strategy("gp", space=space, seed=0)
    study = open_study(name=..., storage=..., run_dir=..., sampler=strategy.sampler,
                       directions=strategy.directions)
    run_trials(study, propose=strategy.propose, evaluate=evaluate, n_trials=100)

Infeasible suggestions. A sampler does not know the space's constraints, so it may suggest a block
that `space.violations` rejects. Such a trial never trains it: `propose` replaces it by a feasible
block drawn uniformly from the space with an RNG seeded by (strategy seed, trial number), so the
trial's evaluation is not wasted and reruns replace identically. The trial records the rejected
suggestion (user attrs "suggested", "violations"); the trial's Optuna params stay those of the
suggestion, while its user attr "pattern" (the key of every result) is what was trained. The
trial's Optuna constraint "suggestion_violations" (Trial.set_constraint; 0 when trained as suggested)
reports such trials as infeasible to the model-based samplers, so they learn
to avoid the rejected region instead of crediting it with the replacement's score.

Evolution is two-objective: `evaluate(pattern)` must return {"score": (quality, cost), ...} (a
2-sequence; run_trials rejects anything else), quality maximised and cost minimised; the cost is the
caller's choice (e.g. `space.cost(pattern)["train_flops_per_token"]`). `pareto_front` reads the
non-dominated patterns back from `completed_results`.

Imports no torch: Optuna's GPSampler imports it lazily when it first samples.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.samplers import BaseSampler, GPSampler, NSGAIISampler, RandomSampler, TPESampler
from optuna.samplers.nsgaii import UniformCrossover
from optuna.trial import TrialState

from composer.errors import ConfigError
from composer.pattern import parse_pattern
from search.space import SearchSpace

EVOLUTION_DIRECTIONS = ("maximize", "minimize")  # (quality, cost)


# ----------------------------------------------------------------------------------------- composing

def compose_end_layer(frozen: str, block: str) -> str:
    """End-layer incremental: the searched block appended after the frozen layers."""
    return parse_pattern(frozen + block) if frozen + block else ""


def compose_middle_layer(current: str, block: str) -> str:
    """Middle-layer incremental: split `current` in the middle (the head gets the smaller half when
    the length is odd) and insert the searched block between head and tail."""
    half = len(current) // 2
    return parse_pattern(current[:half] + block + current[half:]) if current + block else ""


def _one_shot(block: str) -> str:
    return block


# ----------------------------------------------------------------------------------------- the strategy

CONSTRAINT = "suggestion_violations"  # Optuna constraint (<= 0 feasible): constraints the sampler's suggestion broke


@dataclass(frozen=True, kw_only=True)
class Strategy:
    """A sampler and a `propose(trial) -> pattern` over one categorical encoding of `space`."""

    name: str
    space: SearchSpace  # the searched block: its length, alphabet and constraints
    seed: int
    sampler: BaseSampler = field(compare=False, repr=False)
    directions: tuple[str, ...] = ("maximize",)
    compose: Callable[[str], str] = field(default=_one_shot, compare=False)  # block -> full pattern
    start: str = ""  # incremental: the pattern the block is composed onto ("" for one-shot)

    def suggest_block(self, trial: optuna.Trial) -> str:
        """The sampler's block, one `layer_{i}` categorical per searched position (maybe infeasible)."""
        choices = list(self.space.alphabet)
        return "".join(trial.suggest_categorical(f"layer_{i}", choices) for i in range(self.space.length))

    def propose(self, trial: optuna.Trial) -> str:
        """The full pattern to train: the sampler's block if feasible, else a seeded feasible draw.

        In a space of at most SMALL_SPACE patterns, raises `Exhausted` once every feasible one is taken
        (evaluated, finally failed, or being trained): the sampler would only propose cached patterns."""
        if self.space.size() <= SMALL_SPACE:
            members = {self.compose(b) for b in _feasible_blocks(self.space)}
            if members <= _taken(trial):
                from search.study import Exhausted

                raise Exhausted(f"every one of the {len(members)} patterns of the space is evaluated or being evaluated")
        block = self.suggest_block(trial)
        violations = self.space.violations(block)
        trial.set_constraint(CONSTRAINT, len(violations))  # read by TPE, GP and NSGA-II; ignored by random
        if violations:
            trial.set_user_attr("suggested", block)
            trial.set_user_attr("violations", violations)
            block = self.space.sample(random.Random(f"{self.name}:{self.seed}:{trial.number}"))
        pattern = self.compose(block)
        if pattern != block:
            trial.set_user_attr("block", block)
        return pattern


@dataclass(frozen=True, kw_only=True)
class ListStrategy(Strategy):
    """`strategy=list`: exactly `patterns`, in order, each once: a shortlist re-scored, a paper's patterns.

    `propose` takes the first pattern no other trial of the study holds (finished, or being trained
    by a live worker); once every pattern is taken it raises `Exhausted` and the worker stops, so
    nothing trains twice. A trial whose worker is gone does not hold its pattern."""

    patterns: tuple[str, ...] = ()

    def propose(self, trial: optuna.Trial) -> str:
        from search.study import Exhausted

        taken = _taken(trial)
        free = next((p for p in self.patterns if p not in taken), None)
        if free is None:
            raise Exhausted(f"every one of the {len(self.patterns)} listed patterns is evaluated or being evaluated")
        return free


SMALL_SPACE = 4096  # spaces up to this many patterns are checked for exhaustion before each proposal


_FEASIBLE: dict[str, tuple[str, ...]] = {}  # repr(space) -> its feasible patterns (a space holds dicts: no hash)


def _feasible_blocks(space: SearchSpace) -> tuple[str, ...]:
    key = repr(space)
    if key not in _FEASIBLE:
        _FEASIBLE[key] = tuple(space.enumerate())
    return _FEASIBLE[key]


def _taken(trial: optuna.Trial) -> set[str]:
    """The patterns other trials of the study hold: evaluated, finally failed, or being trained by a live worker
    (a trial whose worker is gone holds nothing)."""
    from search.study import STALE_AFTER_S, final_failure, is_lost, retry_cutoff

    taken, cutoff, now = set(), retry_cutoff(trial.study), time.time()
    for t in trial.study.get_trials(deepcopy=False):
        role = t.user_attrs.get("role")
        if t.number == trial.number or role not in (None, "evaluate"):
            continue
        live = t.state == TrialState.RUNNING and not is_lost(t, stale_after_s=STALE_AFTER_S, now=now)
        if live or t.state == TrialState.COMPLETE or final_failure(t, cutoff):
            taken.add(t.user_attrs.get("pattern"))
    return taken


def read_patterns(source: str | Sequence[str], *, where: str) -> tuple[str, ...]:
    """Patterns from a list, or from a file of one pattern a line (blank lines and `#` comments
    skipped); each validated, duplicates dropped (first kept). Errors name the entry or the line."""
    if isinstance(source, str):
        from pathlib import Path

        path = Path(source).expanduser()
        if not path.is_file():
            raise ConfigError(f"{where}: no such pattern file: {source} (give a list [..] or a file, one pattern a line)")
        entries = [(f"{source} line {i}", line.split("#", 1)[0].strip())
                   for i, line in enumerate(path.read_text().splitlines(), 1)]
        entries = [(label, text) for label, text in entries if text]
    elif isinstance(source, Sequence):
        entries = [(f"{where}[{i}]", text) for i, text in enumerate(source)]
    else:
        raise ConfigError(f"{where} must be a list of patterns or a file of one pattern a line, got {source!r}")
    out = []
    for label, text in entries:
        if not isinstance(text, str):
            raise ConfigError(f"{label}: a pattern is a string of layer letters, got {text!r}")
        try:
            out.append(parse_pattern(text))
        except ConfigError as exc:
            raise ConfigError(f"{label}: {exc}") from None
    if not out:
        raise ConfigError(f"{where}: no patterns given")
    return tuple(dict.fromkeys(out))


def _random(space: SearchSpace, seed: int) -> BaseSampler:
    return RandomSampler(seed=seed)


def _tpe(space: SearchSpace, seed: int, *, n_startup_trials: int = 10, multivariate: bool = True) -> BaseSampler:
    # multivariate: the layers interact (attention early, MLP late), independent TPE ignores that
    return TPESampler(seed=seed, n_startup_trials=n_startup_trials, multivariate=multivariate)


def _gp(space: SearchSpace, seed: int, *, n_startup_trials: int = 10, deterministic_objective: bool = False) -> BaseSampler:
    # The paper's GP-BO (log noisy EI); proxy scores are noisy, hence deterministic_objective=False.
    return GPSampler(seed=seed, n_startup_trials=n_startup_trials, deterministic_objective=deterministic_objective,
                     warn_independent_sampling=False)


def _evolution(space: SearchSpace, seed: int, *, population_size: int = 20, mutation_prob: float | None = None,
               crossover_prob: float = 0.9, swapping_prob: float = 0.5) -> BaseSampler:
    # Categorical genes: uniform crossover between two parents, mutation resamples a layer uniformly
    # (mutation=None), each layer with probability mutation_prob (default 1/n).
    return NSGAIISampler(seed=seed, population_size=population_size, mutation=None, mutation_prob=mutation_prob,
                         crossover=UniformCrossover(swapping_prob), crossover_prob=crossover_prob,
                         swapping_prob=swapping_prob)


# name -> (sampler factory taking (space, seed, **options), directions)
STRATEGIES: dict[str, tuple[Callable[..., BaseSampler], tuple[str, ...]]] = {
    "random": (_random, ("maximize",)),
    "tpe": (_tpe, ("maximize",)),
    "gp": (_gp, ("maximize",)),
    "evolution": (_evolution, EVOLUTION_DIRECTIONS),
}


def make_strategy(name: str, *, space: SearchSpace, seed: int, compose: Callable[[str], str] = _one_shot,
                  start: str = "", patterns: Sequence[str] = (), **options: Any) -> Strategy:
    """The strategy `name` over `space`; `options` go to its sampler (e.g. n_startup_trials, population_size).
    `list` takes `patterns` (and no options) instead."""
    if name == "list":
        if options:
            raise ConfigError(f"search strategy 'list' takes no options, got {', '.join(options)}")
        if not patterns:
            raise ConfigError("strategy=list needs strategy.patterns: a list [..] or a file, one pattern a line")
        return ListStrategy(name=name, space=space, seed=seed, sampler=RandomSampler(seed=seed),
                            patterns=tuple(patterns))
    if name not in STRATEGIES:
        raise ConfigError(f"unknown search strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    factory, directions = STRATEGIES[name]
    try:
        sampler = factory(space, seed, **options)
    except TypeError as exc:  # an option the sampler does not take: one line, not a traceback
        raise ConfigError(f"search strategy {name!r}: {exc}") from None
    return Strategy(name=name, space=space, seed=seed, sampler=sampler, directions=directions, compose=compose,
                    start=start)


def end_layer(frozen: str, *, space: SearchSpace, seed: int, base: str = "gp", **options: Any) -> Strategy:
    """End-layer incremental round: search `space.length` layers appended after `frozen`."""
    frozen = parse_pattern(frozen) if frozen else ""
    return make_strategy(base, space=space, seed=seed, compose=functools.partial(compose_end_layer, frozen),
                         start=frozen, **options)


def middle_layer(current: str, *, space: SearchSpace, seed: int, base: str = "gp", **options: Any) -> Strategy:
    """Middle-layer incremental round: search `space.length` layers inserted in the middle of `current`."""
    current = parse_pattern(current) if current else ""
    return make_strategy(base, space=space, seed=seed, compose=functools.partial(compose_middle_layer, current),
                         start=current, **options)


def run_incremental(kind: str, *, space: SearchSpace, rounds: int, open_round: Callable[[int, Strategy], optuna.Study],
                    run_round: Callable[[optuna.Study, Strategy], None], seed: int, start: str = "",
                    base: str = "gp", **options: Any) -> list[str]:
    """Run `rounds` incremental rounds ("end_layer" or "middle_layer"); returns the architecture after each.

    Each round opens its own study (`open_round(round, strategy)`, e.g. a study named per round),
    runs it (`run_round(study, strategy)`, e.g. run_trials with the caller's evaluate and budget) and
    keeps the best completed pattern (first objective, the study's direction) as the next round's
    starting point. The round seed is seed + round, so rounds do not replay the same draws."""
    from search.study import completed_results  # here, not at import: keeps this module's imports minimal

    builders = {"end_layer": end_layer, "middle_layer": middle_layer}
    if kind not in builders:
        raise ConfigError(f"unknown incremental strategy {kind!r}; valid: {', '.join(builders)}")
    if not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds must be a positive integer, got {rounds!r}")
    current, history = start, []
    for r in range(rounds):
        strategy = builders[kind](current, space=space, seed=seed + r, base=base, **options)
        study = open_round(r, strategy)
        run_round(study, strategy)
        done = completed_results(study)
        if not done:
            raise ConfigError(f"{kind} round {r}: no completed trial to freeze")
        sign = 1 if strategy.directions[0] == "maximize" else -1
        current = max(done, key=lambda p: (sign * done[p]["values"][0], -done[p]["trial"]))
        history.append(current)
    return history


# ----------------------------------------------------------------------------------------- results

def pareto_front(results: Mapping[str, Mapping[str, Any]], *,
                 directions: Sequence[str] = EVOLUTION_DIRECTIONS) -> list[str]:
    """The non-dominated patterns of `completed_results(study)` (each with "values"), best first objective first."""
    signs = []
    for d in directions:
        if d not in ("maximize", "minimize"):
            raise ConfigError(f"direction must be 'maximize' or 'minimize', got {d!r}")
        signs.append(1.0 if d == "maximize" else -1.0)
    points = {}
    for pattern, result in results.items():
        values = list(result["values"])
        if len(values) != len(signs):
            raise ConfigError(f"pattern {pattern!r} has {len(values)} values for {len(signs)} directions")
        points[pattern] = tuple(s * float(v) for s, v in zip(signs, values))  # larger is better everywhere

    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    front = [p for p in points if not any(dominates(points[q], points[p]) for q in points if q != p)]
    return sorted(front, key=lambda p: tuple(-x for x in points[p]))
