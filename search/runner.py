"""One search from config to leaderboard: what `composer-search` runs.

    cfg = search_config_from_mapping({...})   # space, strategy, evaluator, budget, storage
    result = run_search(cfg, run_dir=Path("outputs/search/gp-mad_cpu-n6-s0"))

1. Open the study (resumed if the storage holds it; refused if it was made with other settings).
2. Run `workers` worker processes on it (this process is worker 0) until it holds `n_trials`
   evaluations; incremental strategies run `rounds` studies, one per round.
3. Re-evaluate the aggregated pattern, the best single pattern and the top `evaluator.top_k` over
   `evaluator.reeval_seeds` (each seed its own study: cached and resumable like the search).
4. Aggregate (the top group, then N_0 / N_1 / prefix), print the architecture and the top ten,
   write `result.json` to the run folder and the records to the leaderboard.

`phase` splits this for jobs that share one storage (composer-launch: a SLURM array of workers,
then one job after them): `work` is step 2 only (this job's share of the trials, sampler seeds
offset by `worker`), `finalize` is steps 3-4 only, on what the study holds; `all` is all four.

The evaluator trains with torch; everything before training (config, space, guard) is arithmetic.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from composer.config import ModelConfig, changed_settings, flatten, from_mapping
from composer.errors import ComposerError, ConfigError
from primitives import REGISTRY
from search.aggregate import METHODS, summarise
from search.evaluator import EvaluatorConfig, evaluator_config_from_mapping
from search.leaderboard import records, store
from search.leaderboard.records import stats
from search.space import SearchSpace, pattern_hash
from search.strategies import (STRATEGIES, Strategy, end_layer, make_strategy, middle_layer, read_patterns,
                               run_incremental)
from search.study import (completed_results, count_evaluations, failed_patterns, open_study, retry_failures, run_trials,
                          running_alive, stop_at_next_step)

log = logging.getLogger("composer.search")

INCREMENTAL = {"end_layer": end_layer, "middle_layer": middle_layer}
EFFICIENCY = ("state_bytes_32k", "train_flops")  # evolution's second objective, minimised
MAX_ATTEMPTS_PER_EVALUATION = 20  # cached and duplicate proposals are cheap, but a loop must end
PHASES = ("all", "work", "finalize")


@dataclass(frozen=True, kw_only=True)
class StrategyConfig:
    name: str = "gp"  # random | tpe | gp | evolution | end_layer | middle_layer | list
    options: Mapping[str, Any] = field(default_factory=dict)  # to the sampler (n_startup_trials, population_size...)
    patterns: tuple[str, ...] | str = ()  # list: the patterns to evaluate, or a file of one pattern a line
    efficiency: str = "state_bytes_32k"  # evolution: the cost minimised beside quality
    base: str = "gp"  # incremental: the strategy searching each round's block
    rounds: int = 2  # incremental: rounds of `space.length` layers each
    start: str = ""  # incremental: the pattern the first round grows from

    def __post_init__(self) -> None:
        valid = (*STRATEGIES, *INCREMENTAL, "list")
        if self.name not in valid:
            raise ConfigError(f"unknown search strategy {self.name!r}; valid: {', '.join(valid)}")
        if self.efficiency not in EFFICIENCY:
            raise ConfigError(f"strategy.efficiency must be one of {', '.join(EFFICIENCY)}, got {self.efficiency!r}")
        if self.base not in STRATEGIES or self.base == "evolution":
            raise ConfigError(f"strategy.base must be one of random, tpe, gp, got {self.base!r}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"strategy.rounds must be a positive integer, got {self.rounds!r}")
        if self.name == "list":
            object.__setattr__(self, "patterns", read_patterns(self.patterns, where="strategy.patterns"))
        elif self.patterns:
            raise ConfigError(f"strategy.patterns is for strategy=list (this search's strategy is {self.name!r})")
        else:
            object.__setattr__(self, "patterns", ())

    @property
    def incremental(self) -> bool:
        return self.name in INCREMENTAL

    @property
    def studies(self) -> int:
        """Studies the search runs, `n_trials` evaluations each: one per round for incremental strategies."""
        return self.rounds if self.incremental else 1


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    name: str  # the study's name in the storage; the same name and storage resume the study
    space: SearchSpace = field(default_factory=SearchSpace)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    n_trials: int = 16  # evaluations (training runs) in the study; per round for incremental strategies
    workers: int = 1  # worker processes on this machine sharing the study
    # evaluations each worker process trains at once, in threads: the task runs' CUDA streams of several
    # candidates overlap in one process instead of processes taking turns on the GPU (not yet measured)
    evaluations_per_worker: int = 1
    storage: str | None = None  # None: SQLite in the run folder; an RDB URL; a .log/.journal file
    seed: int = 0  # the sampler's seed (worker i uses seed + i)
    aggregator: str = "N0"  # N0 | N1 | prefix: the architecture the search reports
    top: int = 10  # patterns printed and written to the leaderboard
    leaderboard: str | None = str(store.DEFAULT_PATH)  # None: do not write one
    phase: str = "all"  # all | work: only evaluate trials until the study holds n_trials | finalize: no new trials
    worker: int = 0  # this job's index among jobs sharing the study: its processes' sampler seeds come after those below it
    # Reference patterns evaluated like candidates, never aggregated; None: the Llama layout ("*-"
    # repeated to the searched length) when the alphabet has both letters; []: none.
    baselines: tuple[str, ...] | None = None
    # True: patterns whose evaluation failed in an earlier run are trained again when proposed (a
    # failure of this run stays final): for failures that were not the pattern's fault.
    retry_failed: bool = False

    def __post_init__(self) -> None:
        for name in ("n_trials", "workers", "evaluations_per_worker", "top"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.phase not in PHASES:
            raise ConfigError(f"phase must be one of {', '.join(PHASES)}, got {self.phase!r}")
        if isinstance(self.worker, bool) or not isinstance(self.worker, int) or self.worker < 0:
            raise ConfigError(f"worker must be a non-negative integer, got {self.worker!r}")
        if self.aggregator not in METHODS:
            raise ConfigError(f"aggregator must be one of {', '.join(METHODS)}, got {self.aggregator!r}")
        if not self.name or "/" in self.name:
            raise ConfigError(f"name must be a non-empty study name without '/', got {self.name!r}")
        object.__setattr__(self, "baselines", self.fitting(
            "baselines", default_baselines(self) if self.baselines is None
            else read_patterns(self.baselines, where="baselines") if len(self.baselines) else ()))
        if self.strategy.name == "list":
            self.fitting("strategy.patterns", self.strategy.patterns)
            object.__setattr__(self, "n_trials", len(self.strategy.patterns))  # exactly the list, each once

    @property
    def pattern_length(self) -> int:
        """The layers of the patterns the search trains (incremental: the last round's)."""
        s = self.strategy
        return len(s.start) + s.rounds * self.space.length if s.incremental else self.space.length

    def fitting(self, where: str, patterns: tuple[str, ...]) -> tuple[str, ...]:
        """`patterns`, refused in one line unless each has the searched length and the space's letters."""
        letters = self.space.alphabet + (self.strategy.start if self.strategy.incremental else "")
        for i, pattern in enumerate(patterns):
            if len(pattern) != self.pattern_length:
                raise ConfigError(f"{where}[{i}] {pattern!r} has {len(pattern)} layers; the search's patterns have "
                                  f"{self.pattern_length}")
            outside = next((j for j, c in enumerate(pattern) if c not in letters), None)
            if outside is not None:
                raise ConfigError(f"{where}[{i}] {pattern!r}: {pattern[outside]!r} at position {outside} is not in "
                                  f"the space's alphabet {self.space.alphabet!r}")
        return patterns


def default_baselines(cfg: SearchConfig) -> tuple[str, ...]:
    """The Llama layout, attention then MLP, repeated to the searched length; () when the space lacks either."""
    if not {"*", "-"} <= set(cfg.space.alphabet):
        return ()
    return (("*-" * cfg.pattern_length)[: cfg.pattern_length],)


def search_config_from_mapping(data: Mapping[str, Any]) -> SearchConfig:
    data = dict(data)
    for key, cls in (("space", SearchSpace), ("strategy", StrategyConfig)):
        if key in data and isinstance(data[key], Mapping):
            data[key] = from_mapping(cls, data[key], where=key)
    if "evaluator" in data and isinstance(data["evaluator"], Mapping):
        data["evaluator"] = evaluator_config_from_mapping(data["evaluator"])
    return from_mapping(SearchConfig, data, where="search")


# ----------------------------------------------------------------------------------------- settings guard

# Keys that change how a study runs, not what its results mean: a resumed study may change them. Compiled layers
# move scores far less than another seed does (16 patterns of `mad` on an H100: 0.005 against 0.028 mean |difference|,
# benchmarks/RESULTS.md), so a study begun eager resumes compiled, as under `mad`'s default since 2026-12-06.
_FREE = {"evaluator.top_k", "evaluator.reeval_seeds", "evaluator.keep_checkpoints", "evaluator.name", "evaluator.parallel",
         "evaluator.trainer.compile",
         "evaluator.trainer.progress", "evaluator.trainer.device", "evaluator.trainer.log_every",
         "evaluator.trainer.ckpt_every", "evaluator.trainer.wandb", "evaluator.trainer.wandb_project",
         "strategy.options", "strategy.patterns"}


def _settings(cfg: SearchConfig) -> dict[str, Any]:
    """What a study's results depend on, as dotted keys: compared when a study is resumed. Settings
    of primitives the space cannot place are left out (a preset gaining a section for a new
    primitive leaves the studies of other alphabets resumable)."""
    config = plain(cfg)
    flat = flatten({key: config[key] for key in ("space", "strategy", "evaluator", "seed")})
    return _drop(flat, _FREE | _unplaced(cfg.space.alphabet))


def _unplaced(alphabet: str) -> set[str]:
    return {f"evaluator.model.{p.name}" for letter, p in REGISTRY.items() if letter not in alphabet}


def _drop(flat: dict[str, Any], prefixes: set[str]) -> dict[str, Any]:
    return {k: v for k, v in flat.items() if not any(k == f or k.startswith(f + ".") for f in prefixes)}


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if not f.name.startswith("_")}
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _defaults() -> dict[str, Any]:
    """Every evaluator and trainer setting at its default, as `_settings` spells them: a key a saved study
    lacks (composer gained it since) counts as unchanged where this run holds it at its default."""
    from composer.engine.trainer import TrainerConfig

    evaluator = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                 for f in dataclasses.fields(EvaluatorConfig) if f.name not in ("trainer", "model")}
    # the proxy's settings a study saved before the evaluators listed them all (configs/model_settings.yaml)
    model = {f.name: f.default for f in dataclasses.fields(ModelConfig) if f.name not in ("pattern", "vocab_size", "primitives")}
    model |= {p.name: p.config_cls() for p in REGISTRY.values()}
    return flatten(plain({"evaluator": {**evaluator, "model": model, "trainer": TrainerConfig()}}))


def _guard(study: optuna.Study, settings: dict[str, Any]) -> None:
    saved = study.user_attrs.get("settings")
    if saved is None:
        study.set_user_attr("settings", settings)
        return
    saved = _drop(saved, _FREE | _unplaced(settings.get("space.alphabet", "")))  # saved before such keys were left out
    diff = changed_settings(saved, settings, _defaults())
    if diff:
        key = diff[0]
        raise ConfigError(
            f"study {study.study_name!r} was run with {key}={saved.get(key)!r}, this run has {settings.get(key)!r}"
            f"{f' (and {len(diff) - 1} more)' if len(diff) > 1 else ''}: its results would not compare; "
            f"give this search a new name=... (or run with the original settings to resume it)")


# ----------------------------------------------------------------------------------------- workers

def _cost(space: SearchSpace, pattern: str, efficiency: str) -> float:
    from scaling.accounting import state_bytes_per_token

    if efficiency == "train_flops":
        return float(space.cost(pattern)["train_flops_per_token"])
    return float(state_bytes_per_token(space.proxy_config(pattern), context=32768))


def _strategy(cfg: SearchConfig, *, seed: int, current: str = "") -> Strategy:
    s = cfg.strategy
    if s.incremental:
        return INCREMENTAL[s.name](current, space=cfg.space, seed=seed, base=s.base, **s.options)
    return make_strategy(s.name, space=cfg.space, seed=seed, patterns=s.patterns, **s.options)


def _study(cfg: SearchConfig, run_dir: Path, strategy: Strategy, name: str) -> optuna.Study:
    study = open_study(name=name, storage=cfg.storage, run_dir=run_dir, sampler=strategy.sampler,
                       directions=strategy.directions)
    _guard(study, _settings(cfg))
    _retry(cfg, study)
    return study


def _retry(cfg: SearchConfig, study: optuna.Study) -> None:
    """retry_failed: the failures so far become retryable, once per run (its spawned workers leave it)."""
    if cfg.retry_failed and multiprocessing.parent_process() is None:
        if failed := failed_patterns(study):
            log.info("%s: %d failed pattern(s) will be trained again when proposed (retry_failed): %s",
                     study.study_name, len(failed), " ".join(failed))
        retry_failures(study)


class _Progress:
    """The evaluate wrapper of one worker: scores a pattern and logs one progress line."""

    def __init__(self, cfg: SearchConfig, study: optuna.Study, evaluate: Callable[[str], dict], label: str) -> None:
        self.cfg, self.study, self.evaluate, self.label = cfg, study, evaluate, label
        self.started, self.seconds = time.time(), []

    def __call__(self, pattern: str) -> dict[str, Any]:
        tic = time.time()
        result = self.evaluate(pattern)
        self.seconds.append(time.time() - tic)
        quality = result["score"]
        if pattern in self.cfg.baselines:
            result["baseline"] = True
        if self.cfg.strategy.name == "evolution":
            result["score"] = (quality, _cost(self.cfg.space, pattern, self.cfg.strategy.efficiency))
        done = count_evaluations(self.study) + 1
        best = _best(completed_results(self.study))
        if best is None or quality > best[1]:
            best = (pattern, quality)
        left = max(0, self.cfg.n_trials - done)
        eta = sum(self.seconds) / len(self.seconds) * left / (self.cfg.workers * self.cfg.evaluations_per_worker)
        tasks = " ".join(f"{_short(t)} {a:.2f}" for t, a in result["tasks"].items())
        log.info("%s[%d/%d] %s  %.3f (%s)  %.0fs | best %s %.3f | %s elapsed, ~%s left", self.label, done,
                 self.cfg.n_trials, pattern, quality, tasks, self.seconds[-1], best[0], best[1],
                 _clock(time.time() - self.started), _clock(eta))
        return result


def _best(results: Mapping[str, Mapping[str, Any]]) -> tuple[str, float] | None:
    if not results:
        return None
    top = max(results, key=lambda p: (results[p]["values"][0], -results[p]["trial"]))
    return top, results[top]["values"][0]


def _short(task: str) -> str:
    return {"in_context_recall": "recall", "fuzzy_in_context_recall": "fuzzy", "noisy_in_context_recall": "noisy",
            "selective_copying": "copy", "compression": "compress", "memorization": "memorize"}.get(task, task)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def gpu_share(workers: int, gpus: int) -> float | None:
    """The fraction of its GPU's memory each of `workers` processes on `gpus` GPUs may hold (worker i
    on GPU i mod gpus); None when each has a GPU to itself. Without the bound, memory one process has
    cached but freed starves the others on its GPU (measured: five rung trainings on one H200, each
    reserving 20-36 GiB, three ran out of memory)."""
    if gpus <= 0 or workers <= gpus:
        return None
    return round(0.95 / -(-workers // gpus), 3)


def _gpus(workers: int) -> int:
    """GPUs the workers of this machine train on (worker i on GPU i mod n): 0 without CUDA."""
    import torch

    return min(workers, torch.cuda.device_count())


def worker_device(worker: int, workers: int = 1) -> str | None:
    """Worker i of `workers` trains on GPU i mod n when there are GPUs, held to its `gpu_share` of
    that GPU's memory (composer-fidelity's rung runs; a search's proxy workers pass workers=1: their
    captured graphs' pools, measured at up to 66 GB a worker with the torch scan, are left alone);
    None keeps the trainer's setting."""
    import torch

    n = torch.cuda.device_count()
    if not n:
        return None
    device, share = f"cuda:{worker % n}", gpu_share(workers, n)
    if share is not None:
        torch.cuda.set_per_process_memory_fraction(share, device)
        log.info("worker %d: %s, at most %.0f%% of its memory (%d workers share %d GPU(s))", worker, device,
                 100 * share, workers, n)
    return device


def _threads(workers: int) -> None:
    """Workers on one CPU share its cores instead of each taking all of them."""
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def _run_round(cfg: SearchConfig, run_dir: Path, study: optuna.Study, strategy: Strategy, *, worker: int,
               label: str) -> None:
    """One worker's share of one study (one round): propose, evaluate, tell until the budget is met."""
    from search.evaluator import Evaluator

    from composer.engine.graphs import INTERRUPT

    _threads(cfg.workers)
    logging.getLogger("composer.engine.trainer").setLevel(logging.WARNING)  # one line per trial, not per task
    device, k = worker_device(worker), cfg.evaluations_per_worker  # proxies: memory unbounded

    def loop(t: int, strategy: Strategy) -> None:
        evaluator = Evaluator(cfg.evaluator, run_dir=run_dir, device=device)
        tag = f"w{worker}.{t}" if k > 1 else f"w{worker}" if cfg.workers > 1 else ""
        run_trials(study, propose=strategy.propose, evaluate=_Progress(cfg, study, evaluator, (f"{tag} " if tag else "") + label),
                   n_trials=cfg.n_trials * MAX_ATTEMPTS_PER_EVALUATION, max_trials=cfg.n_trials)

    errors: list[BaseException] = []

    def side(t: int) -> None:  # threads 1..k-1: their own sampler seeds after this worker's
        try:
            loop(t, _strategy(cfg, seed=strategy.seed + t, current=strategy.start))
        except KeyboardInterrupt:
            pass  # the main thread's Ctrl-C stopped it; its trial is told "interrupted"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=side, args=(t,), name=f"evaluation-{t}", daemon=True) for t in range(1, k)]
    for thread in threads:
        thread.start()
    try:
        loop(0, strategy)
        for thread in threads:
            thread.join()
    except BaseException:  # Ctrl-C or an error here: this process's other evaluations stop at their next step
        INTERRUPT.set()
        for thread in threads:
            thread.join()
        INTERRUPT.clear()
        raise
    if errors:
        raise errors[0]


def plain(cfg: Any) -> dict[str, Any]:
    """A config (dataclasses, mappings) as JSON-ready mappings: search_config_from_mapping(plain(cfg)) == cfg
    for a SearchConfig."""
    return json.loads(json.dumps(cfg, default=_jsonable))


def _worker_main(config: dict[str, Any], run_dir: Path, worker: int, study_name: str, seed: int, current: str,
                 label: str) -> None:
    """A spawned worker: the same study as worker 0, its own sampler seed."""
    signal.signal(signal.SIGTERM, stop_at_next_step)  # the parent's stop
    cfg = search_config_from_mapping(config)  # a plain mapping crosses the process boundary
    logging.basicConfig(level=logging.INFO, format=f"[%(asctime)s][worker {worker}] %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        strategy = _strategy(cfg, seed=seed, current=current)
        _run_round(cfg, run_dir, _study(cfg, run_dir, strategy, study_name), strategy, worker=worker, label=label)
    except KeyboardInterrupt:
        pass  # the parent reports the interruption
    except ComposerError as exc:
        print(f"composer-search: worker {worker}: error: {exc}", file=sys.stderr)
        sys.exit(2)


def _run_workers(cfg: SearchConfig, run_dir: Path, study: optuna.Study, strategy: Strategy, *, label: str = "") -> None:
    """Worker 0 (this process: `study`, already opened and guarded, with `strategy`'s sampler) and
    workers 1..n-1 as spawned processes on the same storage, worker i with sampler seed + 1000 i."""
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_worker_main, daemon=True, name=f"composer-search-worker-{w}",
                                args=(plain(cfg), run_dir, w, study.study_name, strategy.seed + 1000 * w,
                                      strategy.start, label))
                for w in range(1, cfg.workers)]
    for child in children:
        child.start()
    try:
        _run_round(cfg, run_dir, study, strategy, worker=0, label=label)
    except BaseException:  # Ctrl-C or an error here: stop the children too, each marking its trial
        for child in children:  # SIGTERM, not SIGINT: after the terminal's Ctrl-C, a second one would stop at once
            if child.is_alive():
                os.kill(child.pid, signal.SIGTERM)
        raise
    finally:
        for child in children:
            child.join()
    failed = [c.name for c in children if c.exitcode not in (0, None)]
    if failed:
        raise ConfigError(f"worker process(es) {', '.join(failed)} exited with an error (see their log above)")


def _wait_for_round(study: optuna.Study, *, poll_s: float = 2.0) -> None:
    """phase=work, incremental: the next round grows from this round's best, so wait until the other
    jobs' evaluations of this round are told (or their workers are gone)."""
    while running_alive(study):
        time.sleep(poll_s)


def _search(cfg: SearchConfig, run_dir: Path) -> optuna.Study:
    """Run the strategy's study (incremental: one study per round, through run_incremental); the last one.
    phase=finalize opens the studies and runs no trial."""
    s = cfg.strategy
    seed = cfg.seed + 1000 * cfg.worker * cfg.workers  # worker w's processes: after those of workers 0..w-1
    if not s.incremental:
        strategy = _strategy(cfg, seed=seed)
        study = _study(cfg, run_dir, strategy, cfg.name)  # opened here first: bad settings fail once, in one line
        if cfg.phase != "finalize":
            _run_workers(cfg, run_dir, study, strategy)
        return study
    studies: list[optuna.Study] = []

    def open_round(r: int, strategy: Strategy) -> optuna.Study:
        studies.append(_study(cfg, run_dir, strategy, f"{cfg.name}.round{r + 1}"))
        return studies[-1]

    def run_round(study: optuna.Study, strategy: Strategy) -> None:
        if cfg.phase == "finalize":
            return
        _run_workers(cfg, run_dir, study, strategy, label=f"round {len(studies)}/{s.rounds} ")
        if cfg.phase == "work":
            _wait_for_round(study)

    history = run_incremental(s.name, space=cfg.space, rounds=s.rounds, open_round=open_round, run_round=run_round,
                              seed=seed, start=s.start, base=s.base, **s.options)
    log.info("rounds froze %s", " -> ".join(history))
    return studies[-1]


# ----------------------------------------------------------------------------------------- after the search

def evaluate_patterns(cfg: SearchConfig, run_dir: Path, patterns: list[str], *, seed: int, name: str) -> dict[str, dict]:
    """Evaluate each of `patterns` once at `seed` in the study `name` (cached, resumable); pattern -> result.
    The search's baselines among them are marked (user attr "baseline")."""
    from search.evaluator import Evaluator

    study = open_study(name=name, storage=cfg.storage, run_dir=run_dir, sampler=optuna.samplers.RandomSampler(seed),
                       directions=("maximize",))
    _guard(study, _settings(cfg))
    _retry(cfg, study)
    mark = set(cfg.baselines)

    def propose(trial: optuna.Trial) -> str:
        known = {t.user_attrs.get("pattern") for t in study.get_trials(deepcopy=False)
                 if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)}
        todo = [p for p in patterns if p not in known]
        return (todo or patterns)[0]

    todo = [p for p in patterns if p not in completed_results(study) and p not in failed_patterns(study)]
    if todo:
        evaluator = Evaluator(cfg.evaluator, run_dir=run_dir, device=worker_device(0))
        log.info("evaluating %d pattern(s) at seed %d: %s", len(todo), seed, " ".join(todo))
        run_trials(study, propose=propose, evaluate=lambda p: {**evaluator(p, seed=seed), **({"baseline": True} if p in mark else {})},
                   n_trials=len(todo) * MAX_ATTEMPTS_PER_EVALUATION, max_trials=count_evaluations(study) + len(todo))
    done = completed_results(study)
    return {p: done[p] for p in patterns if p in done}


def evaluate_in_workers(cfg: SearchConfig, run_dir: Path, patterns: list[str], *, name: str,
                        workers: int) -> dict[str, dict]:
    """Evaluate `patterns` at the evaluator's seed with `workers` processes sharing the study `name`
    in `run_dir` (the list strategy: each once, cached, resumable); pattern -> result."""
    listed = dataclasses.replace(cfg, name=name, strategy=StrategyConfig(name="list", patterns=tuple(patterns)),
                                 workers=workers, storage=None, phase="all", worker=0, leaderboard=None)
    study = _search(listed, run_dir)
    done = completed_results(study)
    return {p: done[p] for p in patterns if p in done}


def gpu_preset_on_cpu(evaluator: EvaluatorConfig) -> str | None:
    """A warning where a MAD preset sized for a GPU (its steps captured as CUDA graphs: `mad`, `mad_fast`) is
    about to train on a CPU, where a first evaluation takes tens of minutes and nothing is printed until it ends."""
    from composer.engine.trainer import resolve_device

    if (not evaluator.trainer.cuda_graph or evaluator.language_modelling
            or resolve_device(evaluator.trainer.device).type != "cpu"):
        return None
    tokens = len(evaluator.tasks) * len(evaluator.learning_rates) * evaluator.trainer.max_tokens
    return (f"evaluator={evaluator.name} is sized for a GPU and will train on the CPU: {tokens / 1e6:.1f}M tokens per "
            f"candidate at width {evaluator.d_model}, tens of minutes each (a 6-layer candidate trained at about 12K "
            f"tokens/s on two cores, 2026-12-05); evaluator=mad_cpu is the CPU preset")


COMPILE_PAYS_AFTER = 75  # evaluations per GPU in which compiled `mad_fast` made up its compiles on an H100 (30-75)


def compile_note(cfg: SearchConfig, gpus: int = 1) -> tuple[int, str] | None:
    """Where the proxies' layers are compiled, what the first evaluation of each worker costs (said once, up front:
    minutes with no evaluation finished would otherwise look like a hang), and whether the search is short
    enough that training eagerly would finish sooner (then the note is a warning): (logging level, note)."""
    if not cfg.evaluator.trainer.compile:
        return None
    note = ("evaluator.trainer.compile=true: each worker compiles every layer type at each task's shapes in its first "
            "evaluation (2.5-3.5 minutes for evaluator=mad_fast on an H100); later evaluations reuse the compiled code")
    per_gpu = cfg.n_trials * cfg.strategy.studies / max(1, gpus)
    if per_gpu >= COMPILE_PAYS_AFTER:
        return logging.INFO, note
    return logging.WARNING, (f"{note}. This search trains {per_gpu:.0f} evaluations per GPU, fewer than the 30-75 "
                             "in which an H100 made that up (benchmarks/RESULTS.md): evaluator.trainer.compile=false "
                             "may finish sooner")


def run_search(cfg: SearchConfig, *, run_dir: Path) -> dict[str, Any]:
    """Search, re-evaluate, aggregate, report; returns what `result.json` holds.
    phase=work returns after the search with {"name", "phase", "worker", "n_evaluations"} and writes nothing."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rounds = cfg.strategy.studies
    log.info("search %r%s: %s over %d-layer patterns of %r (%s), %d evaluations%s, %d worker(s); storage %s",
             cfg.name, "" if cfg.phase == "all" else f" (phase {cfg.phase}, worker {cfg.worker})",
             cfg.strategy.name, cfg.space.length, cfg.space.alphabet, cfg.evaluator.name, cfg.n_trials,
             f" per round × {rounds} rounds" if rounds > 1 else "", cfg.workers,
             cfg.storage or run_dir / "study.db")
    if cfg.phase != "work":
        if (note := gpu_preset_on_cpu(cfg.evaluator)) is not None:
            log.warning(note)
        if (compiled := compile_note(cfg, gpus=_gpus(cfg.workers))) is not None:
            log.log(*compiled)
        (run_dir / "search.json").write_text(json.dumps(plain(cfg), indent=2) + "\n")  # what composer-fidelity reads
    study = _search(cfg, run_dir)
    if cfg.phase == "work":
        n = count_evaluations(study)
        log.info("search %r: worker %d done; the study holds %d evaluations", cfg.name, cfg.worker, n)
        return {"name": cfg.name, "phase": "work", "worker": cfg.worker, "n_evaluations": n}
    results = completed_results(study)
    failures = failed_patterns(study)
    if not results:
        raise ConfigError(f"search {cfg.name!r}: no trial completed; {len(failures)} failed"
                          + (f", e.g. {next(iter(failures))}: {next(iter(failures.values()))}" if failures else ""))
    baselines = list(cfg.baselines)
    study.set_user_attr("baselines", baselines)
    quality = {p: r["values"][0] for p, r in results.items() if p not in baselines}  # baselines never win
    if not quality:
        raise ConfigError(f"search {cfg.name!r}: every completed pattern is a baseline; nothing to aggregate")
    agg = summarise(quality)
    chosen = agg.by_method[cfg.aggregator]
    ranked = sorted(quality, key=lambda p: (-quality[p], p))
    top = ranked[: cfg.top]

    # The aggregate is usually a pattern nobody trained: evaluate it and the baselines the search did
    # not sample (and re-evaluate them over seeds).
    finals = {cfg.evaluator.seed: dict(results)}
    for name, extra in ((f"{cfg.name}.final", [chosen]), (f"{cfg.name}.baselines", baselines)):
        todo = [p for p in extra if p not in finals[cfg.evaluator.seed]]
        if todo:
            finals[cfg.evaluator.seed].update(evaluate_patterns(cfg, run_dir, todo, seed=cfg.evaluator.seed, name=name))
    reeval = list(dict.fromkeys([chosen, agg.best_single, *ranked[: cfg.evaluator.top_k], *baselines])) \
        if cfg.evaluator.top_k else []
    for seed in cfg.evaluator.reeval_seeds if reeval else ():
        finals[seed] = evaluate_patterns(cfg, run_dir, reeval, seed=seed, name=f"{cfg.name}.seed{seed}")

    def seeds_of(pattern: str) -> dict[int, dict]:
        return {s: by[pattern] for s, by in finals.items() if pattern in by}

    entries, seen = [], set()  # one entry per pattern, under its first role: aggregate, best single, candidate
    for role, pattern in [("aggregate", chosen), ("best_single", agg.best_single)] + [("candidate", p) for p in top]:
        runs = seeds_of(pattern)
        if runs and pattern not in seen:
            entries.append({"role": role, "pattern": pattern, "runs": runs})
            seen.add(pattern)
    entries += [{"role": "baseline", "pattern": p, "runs": seeds_of(p)} for p in baselines if seeds_of(p)]
    curve = [(i + 1, t.values[0]) for i, t in enumerate(
        sorted((t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE
                and t.user_attrs.get("role") == "evaluate"), key=lambda t: t.number))]
    result = {
        "name": cfg.name, "strategy": cfg.strategy.name, "evaluator": cfg.evaluator.name,
        "aggregator": cfg.aggregator, "architecture": chosen, "best_single": agg.best_single,
        "aggregates": agg.by_method, "top_group": list(agg.top_group),
        "n_evaluations": count_evaluations(study), "n_failed": len(failures), "failures": failures,
        "top": [{"pattern": p, "score": quality[p], "tasks": results[p].get("tasks", {})} for p in top],
        "entries": [{"role": e["role"], "pattern": e["pattern"],
                     "seeds": {str(s): {"score": r["values"][0], "tasks": r.get("tasks", {})}
                               for s, r in e["runs"].items()}} for e in entries],
        "baselines": _margins(entries, {"aggregate": seeds_of(chosen), "best_single": seeds_of(agg.best_single)}),
        "curve": curve, "seconds": round(time.time() - started, 1),
    }
    (run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    if cfg.leaderboard:
        _write_leaderboard(cfg, run_dir, result, entries, curve)
    print(_report(cfg, result, entries, run_dir))
    return result


def _margins(entries: list[dict], found: Mapping[str, Mapping[int, dict]]) -> list[dict[str, Any]]:
    """Each baseline's score over its seeds, and by how much each `found` pattern (role -> its runs by
    seed: the aggregate, the best single) beats it (means over seeds; positive: ahead), beside each
    side's seed spread."""
    scored = {role: stats([r["values"][0] for r in runs.values()]) for role, runs in found.items() if runs}
    out = []
    for e in entries:
        if e["role"] != "baseline":
            continue
        base = stats([r["values"][0] for r in e["runs"].values()])
        out.append({"pattern": e["pattern"], "score": base,
                    "seeds": {str(s): {"score": r["values"][0], "tasks": r.get("tasks", {})} for s, r in e["runs"].items()},
                    "margins": {role: {"margin": scored[role]["mean"] - base["mean"], "std": scored[role]["std"],
                                       "baseline_std": base["std"]}
                                for role in ("aggregate", "best_single") if role in scored}})
    return out


def _write_leaderboard(cfg: SearchConfig, run_dir: Path, result: dict, entries: list[dict], curve: list) -> None:
    path = Path(cfg.leaderboard)
    vocab, seq_len = cfg.space.vocab_size, cfg.space.seq_len  # what the space prices patterns at
    if cfg.evaluator.language_modelling:  # the proxies really trained: the tokenizer's vocabulary, the text windows
        from composer.data.tokenizer import load_tokenizer

        vocab, seq_len = load_tokenizer(cfg.evaluator.tokenizer).vocab_size, cfg.evaluator.seq_len
    for e in entries:
        seeds = sorted(e["runs"])
        tasks = sorted({t for r in e["runs"].values() for t in r.get("tasks", {})})
        record = records.architecture_record(
            e["pattern"], search=cfg.name, strategy=cfg.strategy.name, role=e["role"],
            aggregator=cfg.aggregator if e["role"] == "aggregate" else None,
            task_scores={t: [e["runs"][s]["tasks"][t] for s in seeds] for t in tasks}, seeds=seeds,
            proxy_d_model=cfg.evaluator.d_model, proxy_vocab_size=vocab, seq_len=seq_len,
            evaluator=cfg.evaluator.name, run_dir=str(run_dir),
            primitives={k: v for k, v in cfg.evaluator.model.items() if isinstance(v, Mapping)})
        store.append(record, path)
    store.append(records.search_record(
        search=cfg.name, strategy=cfg.strategy.name, evaluator=cfg.evaluator.name,
        storage=str(cfg.storage or run_dir / "study.db"), run_dir=str(run_dir), curve=curve,
        n_evaluations=result["n_evaluations"], n_failed=result["n_failed"],
        space={"alphabet": cfg.space.alphabet, "length": cfg.space.length}), path)


def _report(cfg: SearchConfig, result: dict, entries: list[dict], run_dir: Path) -> str:
    """The end of a search on the terminal: the architecture, then the top ten."""
    lines = [f"search {cfg.name!r}: {result['n_evaluations']} evaluations ({result['n_failed']} failed) "
             f"in {_clock(result['seconds'])}"]
    by_pattern = {e["pattern"]: e for e in entries}
    for what, pattern in [(f"architecture ({cfg.aggregator})", result["architecture"]),
                          ("best single  ", result["best_single"])]:
        if pattern not in by_pattern:  # its evaluation failed: result.json has the reason
            lines.append(f"  {what} {pattern}  not scored: its evaluation failed")
            continue
        score = stats([r["values"][0] for r in by_pattern[pattern]["runs"].values()])
        spread = f" ± {score['std']:.3f} over {score['n']} seeds" if score["n"] > 1 else ""
        lines.append(f"  {what} {pattern}  score {score['mean']:.3f}{spread}")
    for b in result["baselines"]:
        score = b["score"]
        spread = f" ± {score['std']:.3f} over {score['n']} seeds" if score["n"] > 1 else ""
        lines.append(f"  baseline     {b['pattern']}  score {score['mean']:.3f}{spread}")
        lines.append("    " + ", ".join(
            f"{'architecture' if role == 'aggregate' else 'best single'} {'beats it' if m['margin'] > 0 else 'trails it'} "
            f"by {abs(m['margin']):.3f}" + (f" (seed spreads ± {m['std']:.3f}, ± {m['baseline_std']:.3f})"
                                            if score["n"] > 1 else "")
            for role, m in b["margins"].items()))
    lines.append(f"  top group    {' '.join(result['top_group'])}")
    tasks = list(result["top"][0]["tasks"]) if result["top"] else []
    header = f"  {'rank':>4}  {'pattern':<{max(7, cfg.space.length)}}  {'score':>6}  " + "  ".join(
        f"{_short(t):>8}" for t in tasks)
    lines += ["", f"top {len(result['top'])}:", header]
    for i, row in enumerate(result["top"], 1):
        lines.append(f"  {i:>4}  {row['pattern']:<{max(7, cfg.space.length)}}  {row['score']:>6.3f}  "
                     + "  ".join(f"{row['tasks'].get(t, float('nan')):>8.3f}" for t in tasks))
    lines.append("")
    lines.append(f"wrote {run_dir / 'result.json'}" + (f" and {cfg.leaderboard} (composer-leaderboard shows it)"
                                                        if cfg.leaderboard else ""))
    return "\n".join(lines)


__all__ = ["SearchConfig", "StrategyConfig", "run_search", "search_config_from_mapping", "pattern_hash"]
