"""A rank-fidelity study: does the search's proxy rank patterns the way training at scale does?

    cfg = fidelity_config_from_mapping({...})   # a search folder or a space + evaluator, rungs, data
    result = run_fidelity(cfg, run_dir=Path("outputs/fidelity/f1"))

1. The patterns: a search's top k, its aggregate and best single, its baselines, `random` patterns
   drawn uniformly from its space (seeded), and any given list; each keeps the roles it came with.
2. Their proxy scores: read back from the search's studies where it scored them, the rest
   evaluated here with the search's own evaluator, seed and budget (an Optuna study in the run
   folder: cached and resumable like the search).
3. Each rung (rungs.py): every pattern grown to the rung's size, trained on real text for the
   rung's tokens, at each of its seeds; `workers` processes share the runs (GPU i mod n each).
   Finished runs are read back, killed ones resume from their checkpoint.
4. Spearman and Kendall (bootstrap intervals) and decision accuracy of the proxy against each rung
   and between rungs, each rung's seed-noise floor, where the winner and the baselines land
   (stats.py); `fidelity.json`, `fidelity.png` and a leaderboard record (the HTML report's section).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import shutil
import statistics
import tempfile
import time
from types import MappingProxyType

import optuna
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from composer.config import from_mapping
from composer.data.text import CorpusConfig
from composer.engine.trainer import TrainerConfig
from composer.errors import ComposerError, ConfigError
from composer.records import write_json
from search.evaluator import EvaluatorConfig, evaluator_config_from_mapping
from search.fidelity import stats, subsets
from search.fidelity.rungs import RungConfig, finished, rung_config_from_mapping, run_folder, train_run
from search.space import SearchSpace
from search.strategies import read_patterns
from search.study import completed_results, open_study

log = logging.getLogger("composer.fidelity")

ROLE_ORDER = ("aggregate", "best_single", "baseline", "top", "given", "random")


@dataclass(frozen=True, kw_only=True)
class FidelityConfig:
    name: str = "fidelity"
    search_dir: str | None = None  # a composer-search run folder: its patterns, proxy and scores; None: the fields below
    patterns: tuple[str, ...] | str = ()  # given patterns (a list, or a file of one a line), beside the search's
    top_k: int = 5  # the search's best candidates taken
    random: int = 3  # patterns drawn uniformly from the space (seeded by `seed`)
    seed: int = 0
    # Without a search: the proxy (a composer-search evaluator), the space drawn from, the baselines.
    space: SearchSpace = field(default_factory=SearchSpace)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    baselines: tuple[str, ...] | None = None  # None: the Llama layout of the space's length; [] none
    rungs: tuple[RungConfig, ...] = ()
    # other budgets of the proxy, each ranking the same patterns: {name, evaluator: overrides of the proxy's
    # evaluator}, e.g. fewer tokens per task; reported against the proxy and each rung (issue 17's budget study)
    proxies: tuple[Mapping[str, Any], ...] = ()
    data: CorpusConfig = field(default_factory=CorpusConfig)  # the rungs' text (validation split: seed 0)
    seq_len: int = 256
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # every rung's trainer; rungs override fields
    workers: int = 1  # processes training rung runs (GPUs shared round-robin)
    bootstrap: int = 2000  # resamples of each confidence interval
    leaderboard: str | None = None  # append the study's record (composer-leaderboard --html draws it)
    retry_failed: bool = False  # proxy evaluations that failed in an earlier run are trained again
    train: bool = True  # False: analyse the runs already finished (a partial study), train and evaluate nothing
    train_roles: tuple[str, ...] | None = None  # train only the rung runs of patterns with these roles (None: all),
    # e.g. (baseline,) on a GPU whose Mamba-2 kernels are still building; the report covers every finished run

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ConfigError(f"name must be a non-empty name without '/', got {self.name!r}")
        for key, least in (("top_k", 0), ("random", 0), ("workers", 1), ("bootstrap", 1), ("seq_len", 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{key} must be an integer >= {least}, got {value!r}")
        if self.train_roles is not None:
            roles = tuple(self.train_roles) if not isinstance(self.train_roles, str) else (self.train_roles,)
            unknown = [r for r in roles if r not in ROLE_ORDER]
            if unknown or not roles:
                raise ConfigError(f"train_roles: unknown role {unknown[0]!r} (roles: {', '.join(ROLE_ORDER)})" if unknown
                                  else "train_roles is empty: give roles to train, or null for all")
            object.__setattr__(self, "train_roles", roles)
        object.__setattr__(self, "patterns", read_patterns(self.patterns, where="patterns") if self.patterns else ())
        proxies = tuple(MappingProxyType(dict(v)) if isinstance(v, Mapping) else v for v in self.proxies)
        for i, v in enumerate(proxies):
            if not isinstance(v, Mapping) or set(v) - {"name", "evaluator"} or not isinstance(v.get("name"), str) \
                    or not isinstance(v.get("evaluator", {}), Mapping):
                raise ConfigError(f"proxies[{i}] must be {{name: ..., evaluator: {{overrides}}}}, got {v!r}")
        object.__setattr__(self, "proxies", proxies)
        if not self.rungs and not self.proxies and self.search_dir is None:
            raise ConfigError("rungs is empty: give at least one rung (name, d_model, n_blocks, tokens_per_param, seeds), "
                              "another proxy to compare (proxies=[{name: ..., evaluator: {...}}]) or a search_dir "
                              "(which of its proxy's tasks rank as all of them)")
        names = [r.name for r in self.rungs] + [v["name"] for v in self.proxies]
        if len(set(names)) < len(names) or "proxy" in names or any(not n or "/" in n for n in names):
            raise ConfigError(f"rung and proxy names must be distinct, non-empty, without '/' and not 'proxy', got {names}")
        if self.search_dir is not None and not (Path(self.search_dir).expanduser() / "search.json").is_file():
            raise ConfigError(f"search_dir={self.search_dir}: not a composer-search run folder (no search.json in it)")


def fidelity_config_from_mapping(data: Mapping[str, Any]) -> FidelityConfig:
    data = dict(data)
    if isinstance(data.get("space"), Mapping):
        data["space"] = from_mapping(SearchSpace, data["space"], where="space")
    if isinstance(data.get("evaluator"), Mapping):
        data["evaluator"] = evaluator_config_from_mapping(data["evaluator"])
    if isinstance(data.get("data"), Mapping):
        data["data"] = from_mapping(CorpusConfig, data["data"], where="data")
    if isinstance(data.get("trainer"), Mapping):
        data["trainer"] = from_mapping(TrainerConfig, data["trainer"], where="trainer")
    rungs = data.get("rungs", ())
    if isinstance(rungs, Mapping):  # Hydra users may write rungs as {name: {...}}
        rungs = [{"name": k, **v} for k, v in rungs.items()]
    if not isinstance(rungs, (list, tuple)) or not all(isinstance(r, (Mapping, RungConfig)) for r in rungs):
        raise ConfigError(f"rungs must be a list of rungs (name, d_model, n_blocks, ...), got {rungs!r}")
    data["rungs"] = tuple(r if isinstance(r, RungConfig) else rung_config_from_mapping(r) for r in rungs)
    return from_mapping(FidelityConfig, data, where="fidelity")


# ----------------------------------------------------------------------------------------- the patterns

def _proxy_search(cfg: FidelityConfig):
    """The SearchConfig whose evaluator scores the proxy: the search's own, or one made of cfg's fields."""
    from search.runner import search_config_from_mapping

    if cfg.search_dir is not None:
        saved = json.loads((Path(cfg.search_dir).expanduser() / "search.json").read_text())
        log.info("proxy: search %r's own evaluator (%s), space and baselines; this config's evaluator, space and "
                 "baselines are not used", saved["name"], saved["evaluator"]["name"])
        return search_config_from_mapping({**saved, "retry_failed": cfg.retry_failed})
    from search.runner import plain

    return search_config_from_mapping({"name": cfg.name, "space": plain(cfg.space), "evaluator": plain(cfg.evaluator),
                                       "baselines": None if cfg.baselines is None else list(cfg.baselines),
                                       "retry_failed": cfg.retry_failed})


def _main_study(search_cfg: Any) -> str:
    """The study a search's candidates are in: its own, or its last round's (incremental strategies)."""
    s = search_cfg.strategy
    return f"{search_cfg.name}.round{s.rounds}" if s.incremental else search_cfg.name


def _search_results(search_cfg: Any, folder: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The proxy results the search holds at its evaluator's seed (its last study, the aggregate's and the
    baselines'; pattern -> {"values", "tasks", ...}), and its result.json ({} before it finished)."""
    from search.study import completed_results, open_study

    results: dict[str, dict[str, Any]] = {}
    for name in (_main_study(search_cfg), f"{search_cfg.name}.final", f"{search_cfg.name}.baselines"):
        study = open_study(name=name, storage=search_cfg.storage, run_dir=folder, sampler=None)
        results |= {p: r for p, r in completed_results(study).items() if p not in results}
    try:
        result = json.loads((folder / "result.json").read_text())
    except (OSError, ValueError):
        result = {}
    return results, result


def _tasks(result: Mapping[str, Any]) -> dict[str, float] | None:
    """A proxy result's score per task where its evaluator records them (MAD: one per task)."""
    tasks = result.get("tasks")
    if not isinstance(tasks, Mapping):
        return None
    return {str(k): float(v) for k, v in tasks.items() if isinstance(v, (int, float))}


def select(cfg: FidelityConfig, search_cfg: Any, scores: Mapping[str, float], result: Mapping[str, Any]) -> dict[str, list[str]]:
    """pattern -> its roles, in ROLE_ORDER: the winner, baselines, the top k, the given list, random draws."""
    roles: dict[str, list[str]] = {}

    def add(pattern: str, role: str) -> None:
        if role not in roles.setdefault(pattern, []):
            roles[pattern].append(role)

    for role in ("aggregate", "best_single"):
        key = "architecture" if role == "aggregate" else role
        if result.get(key):
            add(result[key], role)
    for p in search_cfg.baselines:
        add(p, "baseline")
    candidates = sorted((p for p in scores if p not in search_cfg.baselines), key=lambda p: (-scores[p], p))
    for p in candidates[: cfg.top_k] if cfg.search_dir is not None else ():
        add(p, "top")
    for p in search_cfg.fitting("patterns", cfg.patterns):  # the proxy trains them: its space's length and letters
        add(p, "given")
    rng, drawn = random.Random(f"fidelity:{cfg.seed}"), 0
    for _ in range(100 * cfg.random):
        if drawn == cfg.random:
            break
        p = search_cfg.space.sample(rng)
        if p not in roles:
            add(p, "random")
            drawn += 1
    if drawn < cfg.random:
        log.warning("drew %d of random=%d distinct patterns: the space has few feasible ones", drawn, cfg.random)
    if len(roles) < 3:
        raise ConfigError(f"{len(roles)} pattern(s) to compare: a rank correlation needs at least 3 "
                          f"(give patterns=[...], random=N or a search with more candidates)")
    return {p: sorted(r, key=ROLE_ORDER.index) for p, r in roles.items()}


def proxy_results(cfg: FidelityConfig, search_cfg: Any, patterns: list[str], known: Mapping[str, Mapping[str, Any]],
                  run_dir: Path) -> dict[str, Mapping[str, Any]]:
    """Each pattern's proxy result ({"values", "tasks", ...}): the search's where it has one, else evaluated
    here (cached; with train=false only read back)."""
    from search.runner import evaluate_in_workers

    missing = [p for p in patterns if p not in known]
    out = {p: known[p] for p in patterns if p in known}
    name = f"{search_cfg.name}.fidelity"
    if missing and cfg.train:
        done = evaluate_in_workers(search_cfg, run_dir, missing, name=name, workers=cfg.workers)
    elif missing:
        done = completed_results(open_study(name=name, storage=None, run_dir=run_dir, sampler=None))
    out |= {p: done[p] for p in missing if p in done}
    for p in patterns:
        if p not in out:
            log.warning("%s: no proxy score (%s); left out of the proxy correlations", p,
                        "its evaluation failed" if cfg.train else "not evaluated yet")
    return out


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `over` merged in, key by key into nested mappings."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def variant_search(search_cfg: Any, variant: Mapping[str, Any]) -> Any:
    """The proxy's SearchConfig with the variant's evaluator overrides (one-line error for a bad key)."""
    from search.runner import plain

    evaluator = _merge(plain(search_cfg.evaluator), {**variant.get("evaluator", {}), "name": variant["name"]})
    try:
        return replace(search_cfg, evaluator=evaluator_config_from_mapping(evaluator))
    except ConfigError as exc:
        raise ConfigError(f"proxies.{variant['name']}: {exc}") from None


def variant_scores(cfg: FidelityConfig, search_cfg: Any, patterns: list[str], run_dir: Path) -> dict[str, dict]:
    """Each other proxy's scores of `patterns` (pattern -> score) and its median seconds per evaluation,
    evaluated in its own folder proxies/<name>/ (its runs never read back another budget's)."""
    from search.runner import evaluate_in_workers

    out = {}
    for variant in cfg.proxies:
        name, folder = variant["name"], run_dir / "proxies" / variant["name"]
        vcfg = variant_search(search_cfg, variant)
        study_name = f"{search_cfg.name}.fidelity.{name}"
        if cfg.train:
            log.info("proxy %s: evaluating %d patterns (%s)", name, len(patterns), dict(variant.get("evaluator", {})))
            evaluate_in_workers(vcfg, folder, patterns, name=study_name, workers=cfg.workers)
        study = open_study(name=study_name, storage=None, run_dir=folder, sampler=None)
        done = completed_results(study)
        out[name] = {"evaluator": dict(variant.get("evaluator", {})),
                     "scores": {p: done[p]["values"][0] for p in patterns if p in done},
                     "tasks": {p: t for p in patterns if p in done and (t := _tasks(done[p])) is not None},
                     "seconds_per_evaluation": median_seconds(study)}
    return out


def median_seconds(study: optuna.Study) -> float | None:
    """Median wall seconds of the study's completed evaluations (with its workers sharing the machine)."""
    seconds = sorted((t.datetime_complete - t.datetime_start).total_seconds() for t in study.get_trials(deepcopy=False)
                     if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("role") == "evaluate"
                     and t.datetime_complete and t.datetime_start)
    return round(seconds[len(seconds) // 2], 2) if seconds else None


# ----------------------------------------------------------------------------------------- the rungs

def _vocab(corpus: Any) -> int:
    from composer.runs.pretrain import padded_vocab

    return padded_vocab(corpus.vocab_size)


# What a rung's results depend on, beside the pattern and seed of each run: a rung folder trained
# under other settings is refused (the runs in it would be read back as if they were this rung's).
def _guard_rungs(cfg: FidelityConfig, run_dir: Path) -> None:
    from search.runner import plain

    from composer.config import changed_settings, flatten

    free = ("rung.seeds", "rung.trainer", "trainer.progress", "trainer.device", "trainer.log_every",
            "trainer.ckpt_every", "trainer.eval_every", "trainer.wandb", "data.cache_dir")  # rung.trainer: in trainer
    shared = plain(cfg)
    defaults = flatten({"trainer": plain(TrainerConfig()), "data": plain(CorpusConfig())})
    for rung in cfg.rungs:
        settings = flatten({"rung": plain(rung), "trainer": {**shared["trainer"], **rung.trainer},
                            "data": shared["data"], "seq_len": cfg.seq_len})
        settings = {k: v for k, v in settings.items() if not any(k == f or k.startswith(f + ".") for f in free)}
        path = run_dir / "rungs" / rung.name / "rung.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            diff = changed_settings(saved, settings, defaults)
            if diff:
                raise ConfigError(f"rung {rung.name!r} in {run_dir} was trained with {diff[0]}={saved.get(diff[0])!r}, "
                                  f"this run has {settings.get(diff[0])!r}: its runs would not compare; give the rung "
                                  f"another name (rungs.N.name=...) or the study another name=")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, settings)


HEADLINE = ("aggregate", "baseline")  # the roles whose runs go first, every seed: the search's answer against its baselines


def _jobs(cfg: FidelityConfig, roles: Mapping[str, list[str]], vocab: int) -> tuple[list[tuple[int, str, int]], dict]:
    """Every (rung index, pattern, seed) run, and (rung, pattern) -> its growth; growing fails here, in one line.
    Within a rung, the headline (the aggregate and the baselines) at every seed first, then the rest seed-major:
    a study stopped early has its headline with a seed spread and every pattern at its first seed."""
    patterns = list(roles)
    grown = {(r.name, p): r.grow(p, vocab_size=vocab) for r in cfg.rungs for p in patterns}
    head = [p for p in patterns if any(role in HEADLINE for role in roles[p])]
    rest = [p for p in patterns if p not in head]
    jobs = [(i, p, s) for i, r in enumerate(cfg.rungs) for group in (head, rest) for s in r.seeds for p in group]
    return jobs, grown


def _rung_trainer(cfg: FidelityConfig, rung: RungConfig, device: str | None) -> TrainerConfig:
    fields = {**rung.trainer, "progress": False, **({"device": device} if device else {})}
    try:
        return replace(cfg.trainer, **fields)
    except TypeError as exc:
        raise ConfigError(f"rungs.{rung.name}.trainer: {exc}") from None


def _claim(claims: Path | None, job: int) -> bool:
    """Whether this worker takes run `job`: the first to create its file in `claims` (one folder per call of
    the command, so a killed call's claims don't hold the next one back) does; no folder, one worker: all."""
    if claims is None:
        return True
    try:
        os.close(os.open(claims / str(job), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _train(cfg: FidelityConfig, run_dir: Path, jobs: list[tuple[int, str, int]], *, worker: int, corpus: Any = None,
           claims: Path | None = None) -> None:
    """Train runs in `jobs` order, skipping finished ones, each taken by whichever worker is free first
    (`claims`): workers that draw short runs go on to the next instead of waiting on a fixed share."""
    from search.runner import worker_device

    import torch

    from composer.engine.graphs import release_memory

    corpus = corpus if corpus is not None else cfg.data.open(seed=0)
    vocab, device = _vocab(corpus), worker_device(worker, cfg.workers)
    started, seconds, short = time.time(), [], []
    for n, (i, pattern, seed) in enumerate(jobs, 1):
        rung = cfg.rungs[i]
        grown = rung.grow(pattern, vocab_size=vocab)
        folder = run_folder(run_dir, rung, grown.pattern, seed)
        if finished(folder, grown.pattern, seed) is not None or not _claim(claims, n):
            continue
        tic = time.time()
        try:
            bpb = train_run(rung, grown, seed=seed, corpus=corpus, trainer=_rung_trainer(cfg, rung, device),
                            seq_len=cfg.seq_len, folder=folder)
        except torch.OutOfMemoryError:  # not the pattern's fault: its checkpoint stays, the next call resumes it
            bpb = None
        # out of the handler, where the run's traceback no longer holds its model, optimizer and CUDA graph: a
        # worker that kept them ran every later run out of memory too (seen on the H200, 13 runs in a row)
        release_memory(collect=True)
        if bpb is None:
            short.append(f"{rung.name} {pattern} seed {seed}")
            log.warning("%s%s %s seed %d: out of GPU memory; left unfinished (its checkpoint is kept)",
                        f"w{worker} " if cfg.workers > 1 else "", rung.name, pattern, seed)
            continue
        seconds.append(time.time() - tic)
        left = sum(seconds) / len(seconds) * (len(jobs) - n) / max(1, cfg.workers)
        log.info("%s[%d/%d] %s %s seed %d: %.4f bits/byte  %.0fs | ~%.0fs left", f"w{worker} " if cfg.workers > 1 else "",
                 n, len(jobs), rung.name, pattern, seed, bpb, seconds[-1], left)
    log.debug("worker %d done in %.0fs", worker, time.time() - started)
    if short:
        raise ComposerError(f"{len(short)} run(s) ran out of GPU memory ({', '.join(short)}): rerun the same command "
                            f"to resume them, with fewer workers than {cfg.workers} if it happens again")


def _worker_main(config: dict[str, Any], run_dir: Path, jobs: list, worker: int, claims: Path | None) -> None:
    import sys

    logging.basicConfig(level=logging.INFO, format=f"[%(asctime)s][worker {worker}] %(message)s")
    logging.getLogger("composer.engine.trainer").setLevel(logging.WARNING)
    try:
        _train(fidelity_config_from_mapping(config), run_dir, [tuple(j) for j in jobs], worker=worker, claims=claims)
    except KeyboardInterrupt:
        pass
    except ComposerError as exc:
        print(f"composer-fidelity: worker {worker}: error: {exc}", file=sys.stderr)
        sys.exit(2)


def _train_all(cfg: FidelityConfig, run_dir: Path, jobs: list[tuple[int, str, int]], corpus: Any) -> None:
    """Worker 0 here, workers 1..n-1 spawned: every run trained once."""
    import signal

    from search.runner import plain

    logging.getLogger("composer.engine.trainer").setLevel(logging.WARNING)
    context = multiprocessing.get_context("spawn")
    claims = Path(tempfile.mkdtemp(prefix=".claims-", dir=run_dir)) if cfg.workers > 1 else None
    children = [context.Process(target=_worker_main, args=(plain(cfg), run_dir, jobs, w, claims), daemon=True,
                                name=f"composer-fidelity-worker-{w}") for w in range(1, min(cfg.workers, len(jobs)))]
    for child in children:
        child.start()
    mine: ComposerError | None = None
    try:
        _train(cfg, run_dir, jobs, worker=0, corpus=corpus, claims=claims)
    except ComposerError as exc:  # runs of worker 0 left unfinished: the other workers finish theirs first
        mine = exc
    except BaseException:
        for child in children:
            if child.is_alive():
                os.kill(child.pid, signal.SIGINT)
        raise
    finally:
        for child in children:
            child.join()
        if claims is not None:
            shutil.rmtree(claims, ignore_errors=True)
    failed = [c.name for c in children if c.exitcode not in (0, None)]
    if failed:
        raise ConfigError(f"worker process(es) {', '.join(failed)} exited with an error (see their log above)"
                          + (f"; worker 0: {mine}" if mine else ""))
    if mine:
        raise mine


# ----------------------------------------------------------------------------------------- the analysis

def analyse(points: Mapping[str, Mapping[str, Any]], rungs: tuple[RungConfig, ...], *, bootstrap: int,
            seed: int) -> dict[str, Any]:
    """Correlations (proxy against each rung, rung against rung), each primitive's share of a pattern against
    every axis (the ranking a proxy must beat), each proxy task against each rung, noise floors, placement
    and the headline of `points` (pattern -> {"roles", "proxy", "tasks": {task: score} or None,
    "rungs": {name: {"bits_per_byte": {seed: bpb}, "mean"}}})."""
    def score(p: str, axis: str) -> float | None:  # higher is better on every axis
        if axis == "proxy":
            return points[p]["proxy"]
        mean = points[p]["rungs"].get(axis, {}).get("mean")
        return None if mean is None else -mean

    axes = ["proxy", *(r.name for r in rungs)]
    correlations = []
    for a in range(len(axes)):
        for b in range(a + 1, len(axes)):
            both = [p for p in points if score(p, axes[a]) is not None and score(p, axes[b]) is not None]
            x, y = [score(p, axes[a]) for p in both], [score(p, axes[b]) for p in both]
            if len(both) < 2:
                continue
            correlations.append({"x": axes[a], "y": axes[b], **stats.agreement(x, y, bootstrap=bootstrap, seed=seed)})
    noise = {}
    for r in rungs:
        per_seed = {p: [-v["rungs"][r.name]["bits_per_byte"][str(s)] for s in r.seeds]
                    for p, v in points.items()
                    if all(str(s) in v["rungs"].get(r.name, {}).get("bits_per_byte", {}) for s in r.seeds)}
        noise[r.name] = stats.noise_floor(per_seed)
    composition = []  # what the proxy must beat: how well one primitive's share of a pattern alone ranks each axis
    for axis in axes:
        scored = [p for p in points if score(p, axis) is not None]
        for letter in sorted({c for p in scored for c in p}):
            share = [p.count(letter) / len(p) for p in scored]
            if len(scored) >= 3 and len(set(share)) > 1:
                composition.append({"letter": letter, "y": axis,
                                    **stats.agreement(share, [score(p, axis) for p in scored], bootstrap=bootstrap, seed=seed)})
    per_task = []  # why the proxy ranks as it does: each of its tasks alone against each rung
    names = sorted({t for p in points for t in (points[p].get("tasks") or {})})
    for axis in axes[1:]:
        for t in names:
            scored = [p for p in points if t in (points[p].get("tasks") or {}) and score(p, axis) is not None]
            x = [points[p]["tasks"][t] for p in scored]
            if len(scored) < 3:
                continue
            if len(set(x)) == 1:  # saturated (or never learnt): ranks nothing
                per_task.append({"task": t, "y": axis, "n": len(scored), "constant": x[0]})
            else:
                per_task.append({"task": t, "y": axis, **stats.agreement(x, [score(p, axis) for p in scored],
                                                                bootstrap=bootstrap, seed=seed)})
    placement = {p: {"roles": v["roles"]} for p, v in points.items()}
    for axis in axes:
        ranked = stats.ranks({p: score(p, axis) for p in points if score(p, axis) is not None})
        for p in points:
            placement[p][f"{axis}_rank"] = ranked.get(p)
    return {"correlations": correlations, "composition": composition, "tasks": per_task, "noise_floor": noise,
            "placement": placement, "headline": headline(points, rungs)}


def headline(points: Mapping[str, Mapping[str, Any]], rungs: tuple[RungConfig, ...]) -> list[dict[str, Any]]:
    """The search's answer against each baseline at each rung: mean bits per byte of both, the gap (positive:
    the aggregate is ahead), the seed spread (the larger max - min over seeds of the two, with 2+ seeds each)
    and the gap in units of that spread. The best single stands in for a search without an aggregate."""
    def find(role: str) -> list[str]:
        return [p for p, v in points.items() if role in v["roles"]]

    answer = (find("aggregate") or find("best_single"))[:1]
    out = []
    for r in rungs:
        for a in answer:
            for b in find("baseline"):
                runs = [points[p]["rungs"].get(r.name, {}).get("bits_per_byte", {}) for p in (a, b)]
                if not all(runs):
                    continue
                mean = [sum(v.values()) / len(v) for v in runs]
                spread = max(max(v.values()) - min(v.values()) for v in runs) if all(len(v) > 1 for v in runs) else None
                gap = mean[1] - mean[0]
                out.append({"rung": r.name, "pattern": a, "role": points[a]["roles"][0], "baseline": b,
                            "mean": mean[0], "baseline_mean": mean[1], "seeds": [len(v) for v in runs], "gap": gap,
                            "spread": spread, "gap_over_spread": gap / spread if spread else None})
    return out


def fewer_tasks(points: Mapping[str, Mapping[str, Any]], known: Mapping[str, Mapping[str, Any]],
                variants: Mapping[str, Mapping[str, Any]], rungs: tuple[RungConfig, ...], *, bootstrap: int,
                seed: int) -> dict[str, Any] | None:
    """Which proxy tasks could go (subsets.py): over every pattern scored with its tasks (the search's and the
    study's), each subset against the full proxy, and against each rung over the study's patterns; then the
    smallest agreeing subset at each other budget of the proxy (`proxies`), against the same."""
    results = {**known, **{p: {"values": [v["proxy"]], "tasks": v["tasks"]} for p, v in points.items() if v["proxy"] is not None}}
    tasks = {p: t for p, r in results.items() if (t := _tasks(r))}
    reference = {p: r["values"][0] for p, r in results.items() if p in tasks}
    axes = {r.name: {p: -v["rungs"][r.name]["mean"] for p, v in points.items()
                     if v["rungs"].get(r.name, {}).get("mean") is not None} for r in rungs}
    out = subsets.task_subsets(tasks, reference, axes, bootstrap=bootstrap, seed=seed)
    if out is None or out["smallest"] is None:
        return out
    out["budgets"] = [{"name": name, "keep": out["smallest"],
                       "correlations": subsets.against(out["smallest"], v["tasks"], {"proxy": reference, **axes},
                                                       bootstrap=bootstrap, seed=seed)}
                      for name, v in variants.items()
                      if v.get("tasks") and all(set(out["smallest"]) <= set(t) for t in v["tasks"].values())]
    return out


SAME_TASKS = "proxy on its tasks"  # the axis of a budget that trains fewer tasks: the proxy's mean over those tasks


def _tasks_kept(points: Mapping[str, Mapping[str, Any]], tasks: Mapping[str, Mapping[str, float]]) -> list[str] | None:
    """The tasks a budget trained, where they are fewer than the proxy's for every pattern it scored; else None."""
    kept = {frozenset(t) for t in tasks.values()}
    if len(kept) != 1:
        return None
    (names,) = kept
    proxy = [set((points.get(p) or {}).get("tasks") or {}) for p in tasks]
    return sorted(names) if names and all(names < have for have in proxy) else None


def compare_proxies(points: Mapping[str, Mapping[str, Any]], variants: Mapping[str, Mapping[str, Any]],
                    rungs: tuple[RungConfig, ...], *, bootstrap: int, seed: int) -> list[dict[str, Any]]:
    """Each other proxy against the proxy and each rung (higher is better on every axis): its ranking's
    Spearman and Kendall with intervals, and decision accuracy, over the patterns both scored; and how far its
    scores lie from the proxy's (`score_difference`: mean and largest |difference|, the pattern of the largest),
    which a seed of the proxy (`{name: seed1, evaluator: {seed: 1, reeval_seeds: [2]}}`) puts beside the seed
    spread. A budget that trains fewer of the proxy's tasks is read against the proxy's mean over those tasks too
    (the axis SAME_TASKS), and its score difference there (`score_difference["tasks"]` names them)."""
    out = []
    for name, v in variants.items():
        against = []
        axes = {"proxy": {p: pt["proxy"] for p, pt in points.items() if pt["proxy"] is not None}}
        kept = _tasks_kept(points, v.get("tasks") or {})
        if kept:  # a budget that trains fewer tasks: also against the proxy over those tasks, its scores beside them
            axes[SAME_TASKS] = {p: subsets.subset_score(points[p]["tasks"], kept) for p in v["tasks"]}
        reference = axes[SAME_TASKS if kept else "proxy"]
        diffs = {p: abs(v["scores"][p] - reference[p]) for p in v["scores"] if p in reference}
        worst = max(diffs, key=diffs.get) if diffs else None
        difference = {"n": len(diffs), "mean_abs": statistics.fmean(diffs.values()) if diffs else None,
                      "max_abs": diffs.get(worst), "max_pattern": worst, "tasks": kept}
        for r in rungs:
            axes[r.name] = {p: -pt["rungs"][r.name]["mean"] for p, pt in points.items()
                            if pt["rungs"].get(r.name, {}).get("mean") is not None}
        for axis, by in axes.items():
            both = [p for p in v["scores"] if p in by]
            if len(both) >= 2:
                against.append({"y": axis, **stats.agreement([v["scores"][p] for p in both], [by[p] for p in both],
                                                   bootstrap=bootstrap, seed=seed)})
        out.append({"name": name, **v, "correlations": against, "score_difference": difference})
    return out


def run_fidelity(cfg: FidelityConfig, *, run_dir: Path) -> dict[str, Any]:
    """Select, score at the proxy, train every rung, analyse; returns what fidelity.json holds."""
    from datetime import datetime, timezone

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    logging.getLogger("composer.engine.trainer").setLevel(logging.WARNING)  # one line per run, not per eval
    search_cfg = _proxy_search(cfg)
    known, result = _search_results(search_cfg, Path(cfg.search_dir).expanduser()) if cfg.search_dir else ({}, {})
    roles = select(cfg, search_cfg, {p: r["values"][0] for p, r in known.items()}, result)
    patterns = list(roles)
    for variant in cfg.proxies:  # a bad override fails here, in one line, before anything trains
        variant_search(search_cfg, variant)
    _guard_rungs(cfg, run_dir)
    corpus = cfg.data.open(seed=0) if cfg.rungs else None  # fetched and tokenised once, before any worker starts
    jobs, grown = _jobs(cfg, roles, _vocab(corpus)) if cfg.rungs else ([], {})
    def unfinished(i: int, p: str, s: int) -> bool:
        g = grown[(cfg.rungs[i].name, p)]
        return finished(run_folder(run_dir, cfg.rungs[i], g.pattern, s), g.pattern, s) is None

    def wanted(p: str) -> bool:
        return cfg.train_roles is None or bool(set(roles[p]) & set(cfg.train_roles))

    left = [job for job in jobs if wanted(job[1]) and unfinished(*job)]  # the runs still to train, shared among the workers
    n_left = len(left)
    if cfg.train_roles is not None and cfg.train:
        log.info("train_roles=%s: %d unfinished run(s) of other roles are left for a later call", ",".join(cfg.train_roles),
                 sum(1 for job in jobs if not wanted(job[1]) and unfinished(*job)))
    log.info("fidelity %r: %d patterns (%s), proxy %s, rungs %s; %d rung runs, %d to train, %d worker(s)",
             cfg.name, len(patterns), ", ".join(f"{sum(role in r for r in roles.values())} {role}" for role in ROLE_ORDER
                                                 if any(role in r for r in roles.values())),
             search_cfg.evaluator.name, " ".join(_describe(r, grown[(r.name, patterns[0])]) for r in cfg.rungs) or "none",
             len(jobs), n_left, cfg.workers)
    proxy = proxy_results(cfg, search_cfg, patterns, known, run_dir)
    variants = variant_scores(cfg, search_cfg, patterns, run_dir)
    if cfg.search_dir:  # the proxy's time: the search's own evaluations, else those made here
        timed = open_study(name=_main_study(search_cfg), storage=search_cfg.storage, run_dir=Path(cfg.search_dir).expanduser(), sampler=None)
    else:
        timed = open_study(name=f"{search_cfg.name}.fidelity", storage=None, run_dir=run_dir, sampler=None)
    if n_left and cfg.train:
        _train_all(cfg, run_dir, left, corpus)
    elif n_left:
        log.warning("train=false: %d of %d rung runs are not finished; the figures below leave them out", n_left, len(jobs))
    points = {}
    for p in patterns:
        per_rung = {}
        for r in cfg.rungs:
            g = grown[(r.name, p)]
            bpb = {str(s): finished(run_folder(run_dir, r, g.pattern, s), g.pattern, s) for s in r.seeds}
            bpb = {s: v for s, v in bpb.items() if v is not None}
            per_rung[r.name] = {"grown": g.pattern, "n_non_embedding_params": g.n_non_embedding_params,
                                "bits_per_byte": bpb, "mean": sum(bpb.values()) / len(bpb) if bpb else None}
        points[p] = {"pattern": p, "roles": roles[p], "proxy": proxy[p]["values"][0] if p in proxy else None,
                     "tasks": _tasks(proxy[p]) if p in proxy else None, "rungs": per_rung}
    analysis = analyse(points, cfg.rungs, bootstrap=cfg.bootstrap, seed=cfg.seed)
    fewer = fewer_tasks(points, known, variants, cfg.rungs, bootstrap=cfg.bootstrap, seed=cfg.seed)
    out = {
        "kind": "fidelity", "schema": 1, "name": cfg.name,
        "search": search_cfg.name if cfg.search_dir else None, "run_dir": str(run_dir),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "proxy": {"evaluator": search_cfg.evaluator.name, "d_model": search_cfg.evaluator.d_model,
                  "seed": search_cfg.evaluator.seed},
        "rungs": [{"name": r.name, "d_model": r.d_model,
                   "target_non_embedding_params": grown[(r.name, patterns[0])].target_non_embedding_params,
                   "tokens": r.tokens(grown[(r.name, patterns[0])]), "tokens_per_param": float(r.tokens_per_param),
                   "seeds": list(r.seeds), "method": r.method} for r in cfg.rungs],
        "patterns": list(points.values()),
        "proxy_seconds_per_evaluation": median_seconds(timed),
        "proxies": compare_proxies(points, variants, cfg.rungs, bootstrap=cfg.bootstrap, seed=cfg.seed),
        "unfinished_runs": sum(len(r.seeds) - len(v["rungs"][r.name]["bits_per_byte"]) for v in points.values()
                               for r in cfg.rungs),
        **analysis,
        "task_subsets": fewer,
        "seconds": round(time.time() - started, 1),
    }
    write_json(run_dir / "fidelity.json", out)
    if cfg.rungs:
        from search.fidelity.plot import scatter

        scatter(out, run_dir / "fidelity.png")
    if cfg.leaderboard and (out["unfinished_runs"] or not cfg.rungs):
        log.info("%s: not appended to the leaderboard %s", "no rungs" if not cfg.rungs else "a partial study",
                 cfg.leaderboard)
    elif cfg.leaderboard:
        from search.leaderboard import records, store

        store.append(records.fidelity_record(out), Path(cfg.leaderboard))
    print(report(out, run_dir))
    return out


def _describe(rung: RungConfig, grown: Any) -> str:
    return (f"{rung.name} (d_model {rung.d_model}, {grown.target_non_embedding_params / 1e6:.2f}M non-embedding "
            f"parameters, {rung.tokens(grown) / 1e6:.1f}M tokens, seeds {list(rung.seeds)})")


def _interval(c: Mapping[str, Any]) -> str:
    if c["value"] is None:
        return "undefined"
    return f"{c['value']:+.2f}" + (f" [{c['low']:+.2f}, {c['high']:+.2f}]" if c["low"] is not None else "")


def _correlation_line(x: str, c: Mapping[str, Any]) -> str:
    acc = c["decision_accuracy"]
    return (f"  {x:>6} -> {c['y']:<6} Spearman {_interval(c['spearman'])}  Kendall {_interval(c['kendall'])}"
            f"  decisions {'n/a' if acc is None else f'{100 * acc:.0f}%'}  (n={c['n']})")


def report(out: Mapping[str, Any], run_dir: Path) -> str:
    """The end of a study on the terminal: correlations, noise floors, where the winner and baselines land."""
    n = len(out["patterns"])
    lines = [f"fidelity {out['name']!r}: {n} patterns, proxy {out['proxy']['evaluator']} "
             f"(d_model {out['proxy']['d_model']}), in {out['seconds']:.0f}s"
             + (f"; PARTIAL: {out['unfinished_runs']} rung run(s) not finished" if out.get("unfinished_runs") else "")]
    for r in out["rungs"]:
        lines.append(f"  rung {r['name']}: d_model {r['d_model']}, {r['target_non_embedding_params']:,} non-embedding "
                     f"parameters, {r['tokens']:,} tokens, seeds {r['seeds']}")
    lines += [_correlation_line(c["x"], c) for c in out["correlations"]]
    for axis in dict.fromkeys(c["y"] for c in out.get("composition", [])):
        shares = [c for c in out["composition"] if c["y"] == axis]
        lines.append(f"  share of a primitive -> {axis}: " + ", ".join(
            f"{c['letter']!r} {_interval(c['spearman'])}" for c in shares)
            + (" (Spearman: what the proxy rewards)" if axis == "proxy" else " (Spearman: a proxy should rank better)"))
    for axis in dict.fromkeys(c["y"] for c in out.get("tasks", [])):
        lines.append(f"  proxy tasks -> {axis}: " + ", ".join(
            f"{c['task']} " + (f"{c['constant']:.2f} for all" if "constant" in c else _interval(c["spearman"]))
            for c in out["tasks"] if c["y"] == axis) + " (Spearman)")
    for h in out.get("headline", []):
        ratio = "" if h["gap_over_spread"] is None else (
            f", {h['gap_over_spread']:.1f}x the seed spread ({h['spread']:.4f})")
        lines.append(f"  headline {h['rung']}: {h['role']} {h['pattern']} {h['mean']:.4f} against baseline {h['baseline']} "
                     f"{h['baseline_mean']:.4f} bits/byte ({h['seeds'][0]} and {h['seeds'][1]} seeds): "
                     f"{abs(h['gap']):.4f} {'ahead' if h['gap'] > 0 else 'behind'}{ratio}")
    for name, f in out["noise_floor"].items():
        if f["neighbour_swap_rate"] is None:
            lines.append(f"  noise floor {name}: needs 2 seeds of 2 patterns")
            continue
        lines.append(f"  noise floor {name}: neighbours swap in {100 * f['neighbour_swap_rate']:.0f}% of seed pairs; "
                     f"seed against seed Spearman {f['seed_spearman']:+.2f}, decisions {100 * f['seed_decision_accuracy']:.0f}%"
                     f"; seed std {f['std']:.4f} bits/byte")
    if out.get("proxies"):
        secs = out.get("proxy_seconds_per_evaluation")
        lines.append(f"  proxy {out['proxy']['evaluator']}: {'-' if secs is None else f'{secs:.1f}'} s per evaluation")
    for v in out.get("proxies", []):
        secs = v["seconds_per_evaluation"]
        lines.append(f"  proxy {v['name']} ({len(v['scores'])} scored, "
                     f"{'-' if secs is None else f'{secs:.1f}'} s per evaluation): {v['evaluator']}")
        d = v["score_difference"]
        if d["n"]:
            over = f" on {', '.join(d['tasks'])}" if d.get("tasks") else ""
            lines.append(f"  {v['name']} - proxy{over}: |score difference| mean {d['mean_abs']:.4f}, "
                         f"largest {d['max_abs']:.4f} ({d['max_pattern']}) over {d['n']} patterns")
        lines += [_correlation_line(v["name"], c) for c in v["correlations"]]
    if out.get("task_subsets"):
        lines += subsets.report_lines(out["task_subsets"])
    ranks = [k for k in next(iter(out["placement"].values())) if k.endswith("_rank")]
    for p, place in out["placement"].items():
        shown = [r for r in place["roles"] if r in ("aggregate", "best_single", "baseline")]
        if shown:
            lines.append(f"  {'/'.join(shown):<22} {p}  " + "  ".join(
                f"{k[:-5]} #{place[k] if place[k] is not None else '-'}" for k in ranks) + f" of {n}")
    lines.append(f"wrote {run_dir / 'fidelity.json'}" + (f" and {run_dir / 'fidelity.png'}" if out["rungs"] else ""))
    return "\n".join(lines)


__all__ = ["FidelityConfig", "analyse", "fidelity_config_from_mapping", "report", "run_fidelity", "select"]
