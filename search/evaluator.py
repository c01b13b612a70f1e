"""The evaluator: train a candidate pattern as a small proxy and score it, higher is better.

Two kinds behind one code path:
- MAD (`tasks`; evaluator=mad_cpu, mad, mad_fast): each task trains a fresh proxy (the task's vocabulary, the
  evaluator's width and primitive settings) under a fixed token budget, then measures test
  accuracy. The score is the mean over tasks, equally weighted; per-task accuracies are kept.
- language modelling (`corpus`; evaluator=lm): one proxy trained on a text corpus (tokenised once,
  into composer.data.text's cache, and loaded once per evaluator), scored on the corpus's validation
  split. The score is minus its bits per byte, the one entry of `tasks` ("-bpb"), so that higher is
  better and the leaderboard's mean over tasks is the score; `bits_per_byte` and the validation
  `loss` (nats per token) are kept beside it.
With a learning-rate sweep (`lrs`), every rate is trained and the best score counts.

    evaluator = Evaluator(evaluator_config_from_mapping({...}), run_dir=Path("outputs/search/x"))
    evaluator("*-M-*-", seed=0)  # {"score": 0.71, "tasks": {"in_context_recall": 0.99, ...}, ...}
    # with a corpus: {"score": -2.1, "tasks": {"-bpb": -2.1}, "bits_per_byte": 2.1, "loss": 1.45, ...}

Every training run has its own folder, `run_dir/trials/<pattern hash>/<task>-lr<lr>/` (the task is
`lm` for language modelling), keyed by pattern and seed. A run that already finished there is read
back, not retrained, and an interrupted one resumes from its checkpoint: a trial killed half-way
through its tasks loses at most `trainer.ckpt_every` steps. Checkpoints are deleted once a run is
done (`keep_checkpoints`). The validation documents are chosen by `seed`, the search's seed, so
re-evaluations over `reeval_seeds` (other inits and batch orders) are scored on the same text.

This is the one module of `search/` that imports torch (through the trainer).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any

from composer.config import ModelConfig, from_mapping, model_config_from_mapping
from composer.errors import ConfigError
from composer.tasks.mad import TASKS, task_config_from_mapping
from search.space import pattern_hash

log = logging.getLogger(__name__)


LM_TASK = "lm"  # the language-modelling run's name: its folders are trials/<hash>/lm-lr<lr>/
LM_SCORE = "-bpb"  # its one entry in a result's `tasks`: minus the validation bits per byte


@dataclass(frozen=True, kw_only=True)
class EvaluatorConfig:
    name: str = "mad"  # a label, recorded with every result
    # task name -> overrides of its baseline setting (composer/tasks/mad.py); {} keeps the baseline, null leaves it out.
    # None: all six MAD tasks, or none when `corpus` is set
    tasks: Mapping[str, Any] | None = None
    # task name -> its own training budget in input tokens, in place of trainer.max_tokens (a task not named trains that)
    task_tokens: Mapping[str, int] = field(default_factory=dict)
    # Language modelling instead of MAD tasks (evaluator=lm): set `corpus`; the next three apply to it only.
    corpus: Mapping[str, Any] | None = None  # composer.data.text.TextSource fields; path null: the default corpus
    tokenizer: str | None = None  # "bytes" (the default with a corpus) or a tokenizer.json path
    seq_len: int | None = None  # tokens per training and validation sequence
    val_tokens: int | None = None  # validation split: whole documents until at least this many tokens
    # the proxy model: ModelConfig fields but pattern and vocab_size, one section per primitive
    model: Mapping[str, Any] = field(default_factory=dict)
    trainer: Any = None  # composer.engine.trainer.TrainerConfig, or a mapping of its fields
    lrs: tuple[float, ...] = ()  # learning-rate sweep per task, best score counts; () = trainer.lr
    seed: int = 0  # the search's seed: model init, data and test set (with a corpus: its validation split)
    top_k: int = 0  # after the search, re-evaluate the best k patterns over `reeval_seeds`
    reeval_seeds: tuple[int, ...] = (1, 2)
    keep_checkpoints: bool = False  # delete each finished run's checkpoint (they add up over thousands)
    parallel: int = 1  # runs of one evaluation (tasks x learning rates) trained at once: threads, one CUDA stream each

    def __post_init__(self) -> None:
        from composer.engine.trainer import TrainerConfig

        if self.corpus is None:
            self._check_mad()
        else:
            self._check_language_modelling()
        trainer = self.trainer if isinstance(self.trainer, TrainerConfig) else from_mapping(
            TrainerConfig, self.trainer, where="evaluator.trainer")
        object.__setattr__(self, "trainer", trainer)
        object.__setattr__(self, "model", MappingProxyType(dict(self.model)))
        for key in ("pattern", "vocab_size"):
            if key in self.model:
                raise ConfigError(f"evaluator.model.{key}: set by the search (the candidate) and the task, not here")
        self.proxy("*", vocab_size=16)  # a bad width or primitive setting fails now, not in trial 1
        lrs = tuple(self.lrs)
        if any(isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 for lr in lrs):
            raise ConfigError(f"evaluator.lrs must be positive learning rates, got {list(lrs)}")
        object.__setattr__(self, "lrs", tuple(float(lr) for lr in lrs))
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"evaluator.top_k must be an integer >= 0, got {self.top_k!r}")
        seeds = tuple(self.reeval_seeds)
        if any(isinstance(s, bool) or not isinstance(s, int) for s in seeds) or self.seed in seeds:
            raise ConfigError(f"evaluator.reeval_seeds must be integers other than seed={self.seed}, got {list(seeds)}")
        object.__setattr__(self, "reeval_seeds", seeds)
        if isinstance(self.parallel, bool) or not isinstance(self.parallel, int) or self.parallel < 1:
            raise ConfigError(f"evaluator.parallel must be an integer >= 1, got {self.parallel!r}")

    def _check_mad(self) -> None:
        for key in ("tokenizer", "seq_len", "val_tokens"):
            if getattr(self, key) is not None:
                raise ConfigError(f"evaluator.{key} is a language-modelling setting: set evaluator.corpus too "
                                  f"(evaluator=lm), or drop it")
        given = {name: {} for name in TASKS} if self.tasks is None else self.tasks
        if not isinstance(given, Mapping) or not given:
            raise ConfigError(f"evaluator.tasks must map task names to settings, got {self.tasks!r}")
        tasks = {}
        for name, overrides in given.items():
            if name not in TASKS:
                raise ConfigError(f"evaluator.tasks: unknown task {name!r} (valid tasks: {', '.join(TASKS)})")
            if overrides is None:  # null: left out (a preset or a fidelity budget built on another drops its tasks)
                continue
            tasks[name] = overrides if not isinstance(overrides, Mapping) else task_config_from_mapping(name, overrides)
        if not tasks:
            raise ConfigError(f"evaluator.tasks: every task is left out (null), got {dict(given)!r}")
        object.__setattr__(self, "tasks", MappingProxyType(tasks))
        budgets = self.task_tokens
        if not isinstance(budgets, Mapping):
            raise ConfigError(f"evaluator.task_tokens must map task names to token budgets, got {budgets!r}")
        for name, tokens in budgets.items():
            if name not in TASKS:
                raise ConfigError(f"evaluator.task_tokens: unknown task {name!r} (valid tasks: {', '.join(TASKS)})")
            if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
                raise ConfigError(f"evaluator.task_tokens.{name} must be a positive number of tokens, got {tokens!r}")
        # a task left out (null) keeps no budget: a preset built on another may drop the tasks it set
        object.__setattr__(self, "task_tokens", MappingProxyType({n: t for n, t in budgets.items() if n in tasks}))

    def _check_language_modelling(self) -> None:
        from composer.data.text import TextSource

        if self.task_tokens:
            raise ConfigError("evaluator.task_tokens is a MAD setting: with a corpus, set evaluator.trainer.max_tokens")
        if self.tasks:
            raise ConfigError("evaluator.tasks and evaluator.corpus exclude each other: a search scores MAD tasks "
                              "or language modelling, not both")
        object.__setattr__(self, "tasks", MappingProxyType({}))
        if not isinstance(self.corpus, Mapping):
            raise ConfigError(f"evaluator.corpus must map TextSource fields (path, text_field...), got {self.corpus!r}")
        path = self.corpus.get("path")
        if path is not None and (not isinstance(path, str) or not path):
            raise ConfigError(f"evaluator.corpus.path must be a file, folder, glob or hub:<name> (null: the default "
                              f"corpus), got {path!r}")
        if path is not None and not path.startswith("hub:") and not any(c in path for c in "*?[") \
                and not Path(path).expanduser().exists():
            raise ConfigError(f"evaluator.corpus.path: text source not found: {path}")
        source = from_mapping(TextSource, {**self.corpus, "path": path or "default"}, where="evaluator.corpus")
        object.__setattr__(self, "corpus", MappingProxyType({**asdict(source), "path": path}))  # every field, once
        tokenizer = "bytes" if self.tokenizer is None else self.tokenizer
        if tokenizer != "bytes" and not Path(tokenizer).expanduser().exists():
            raise ConfigError(f"evaluator.tokenizer must be 'bytes' or the path of a tokenizer.json, got {tokenizer!r} "
                              f"(no such file)")
        object.__setattr__(self, "tokenizer", tokenizer)
        for key in ("seq_len", "val_tokens"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"evaluator.{key} must be a positive integer with a corpus, got {value!r}")

    def proxy(self, pattern: str, *, vocab_size: int) -> ModelConfig:
        """The proxy ModelConfig of `pattern` for a task (or tokenizer) with `vocab_size` tokens."""
        return model_config_from_mapping({**self.model, "pattern": pattern, "vocab_size": vocab_size},
                                         where="evaluator.model")

    @property
    def language_modelling(self) -> bool:
        return self.corpus is not None

    @property
    def learning_rates(self) -> tuple[float, ...]:
        return self.lrs or (self.trainer.lr,)

    @property
    def d_model(self) -> int:
        return self.proxy("*", vocab_size=16).d_model


def evaluator_config_from_mapping(data: Mapping[str, Any] | None) -> EvaluatorConfig:
    return from_mapping(EvaluatorConfig, data, where="evaluator")


@dataclass(frozen=True, kw_only=True)
class _Job:
    """One proxy the evaluator trains at each learning rate: a MAD task, or language modelling."""

    name: str  # the task; its runs live in trials/<pattern hash>/<name>-lr<lr>/
    identity: Mapping[str, Any]  # summary.json entries a finished run must match to be read back
    score: Callable[[Mapping[str, Any]], float]  # summary["final"] -> the number to maximise
    train: Callable[[Any, Path], Mapping[str, Any]]  # (trainer config, run folder) -> summary


class Evaluator:
    """Callable `evaluator(pattern, seed=None) -> {"score", "tasks", ...}`; seed None is cfg.seed.

    With a corpus, the corpus is loaded here (tokenised into the cache on first use; the default
    corpus is fetched first if it is missing), so a bad source fails before the first trial."""

    def __init__(self, cfg: EvaluatorConfig, *, run_dir: Path, device: str | None = None) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        # Search workers train quietly: the search prints one line per trial instead.
        self.trainer = replace(cfg.trainer, progress=False, **({"device": device} if device else {}))
        self.corpus, self.corpus_identity = None, None
        self.failed = False  # a run failed since memory was last freed (see __call__)
        if cfg.language_modelling:
            from composer.runs.proxy import describe_corpus

            self.corpus = load_evaluator_corpus(cfg)
            self.corpus_identity = describe_corpus(self.corpus)

    def __call__(self, pattern: str, seed: int | None = None) -> dict[str, Any]:
        seed = self.cfg.seed if seed is None else seed
        if self.failed:  # the failed run's traceback is gone now, and its model, optimizer and graph with it
            self.failed = False
            _free_accelerator_memory()
        started = time.perf_counter()
        jobs = self._jobs(pattern, seed)
        lrs = self.cfg.learning_rates
        outcomes = self._in_parallel(lambda run: self._attempt(pattern, *run, seed), [(j, lr) for j in jobs for lr in lrs])
        scores, finals, best_lr = {}, {}, {}
        for i, job in enumerate(jobs):
            scores[job.name], finals[job.name], best_lr[job.name] = self._best(job, outcomes[i * len(lrs):(i + 1) * len(lrs)])
        if self.corpus is None:
            result = {"score": sum(scores.values()) / len(scores), "tasks": scores}
        else:
            final = finals[LM_TASK]
            result = {"score": scores[LM_TASK], "tasks": {LM_SCORE: scores[LM_TASK]},
                      "bits_per_byte": final["bits_per_byte"], "loss": final["loss"]}
        result |= {"seed": seed, "seconds": round(time.perf_counter() - started, 2)}
        if len(self.cfg.learning_rates) > 1:
            result["best_lr"] = best_lr
        return result

    def _in_parallel(self, fn: Callable[[Any], Any], items: list) -> list:
        """fn over items, `cfg.parallel` at a time in threads, each on its own CUDA stream.

        The first error stops the other runs at their next step (as Ctrl-C does) and is raised."""
        if self.cfg.parallel <= 1 or len(items) <= 1:
            return [fn(item) for item in items]
        from composer.engine.graphs import own_stream, stop_group, thread_safe_autotuners

        device, stop = self.trainer.device, threading.Event()  # this evaluation's runs only
        thread_safe_autotuners()

        def run(item: Any) -> Any:
            with own_stream(device), stop_group(stop):
                return fn(item)

        with ThreadPoolExecutor(min(self.cfg.parallel, len(items)), thread_name_prefix="run") as pool:
            futures = [pool.submit(run, item) for item in items]
            try:
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                for future in done:
                    if future.exception() is not None:
                        raise future.exception()
                return [future.result() for future in futures]
            except BaseException:
                stop.set()  # this evaluation's runs still going stop at their next step; their checkpoints stay
                raise

    def _jobs(self, pattern: str, seed: int) -> list[_Job]:
        if self.corpus is None:
            return [_Job(name=name, identity={"pattern": pattern, "task": name, "seed": seed}, score=_accuracy,
                         train=partial(self._train_task, pattern, name, task_cfg, seed))
                    for name, task_cfg in self.cfg.tasks.items()]
        identity = {"pattern": pattern, "seed": seed, "seq_len": self.cfg.seq_len, "corpus": self.corpus_identity}
        return [_Job(name=LM_TASK, identity=identity, score=_minus_bits_per_byte,
                     train=partial(self._train_text, pattern, seed))]

    def _train_task(self, pattern: str, name: str, task_cfg: Any, seed: int, trainer: Any, folder: Path) -> dict:
        from composer.runs.proxy import train_on_task

        return train_on_task(model_cfg=self.cfg.proxy(pattern, vocab_size=task_cfg.vocab_size), task_name=name,
                             task_cfg=task_cfg, trainer_cfg=trainer, seed=seed, run_dir=folder)

    def _train_text(self, pattern: str, seed: int, trainer: Any, folder: Path) -> dict:
        from composer.runs.proxy import train_on_text

        return train_on_text(model_cfg=self.cfg.proxy(pattern, vocab_size=self.corpus.vocab_size), corpus=self.corpus,
                             trainer_cfg=trainer, seq_len=self.cfg.seq_len, seed=seed, run_dir=folder)

    def _attempt(self, pattern: str, job: _Job, lr: float, seed: int) -> Mapping[str, Any] | str:
        """One run's final metrics, or why it diverged: one rate of a sweep diverging is a result."""
        from composer.engine.trainer import DivergedError

        folder = self.run_dir / "trials" / pattern_hash(pattern, seed=seed) / f"{job.name}-lr{lr:g}"
        budget = {"max_tokens": self.cfg.task_tokens[job.name]} if job.name in self.cfg.task_tokens else {}
        for attempt in range(AUTOTUNER_RETRIES + 1):
            try:
                return self._run(job, replace(self.trainer, lr=lr, **budget), folder)
            except DivergedError as exc:
                return f"lr {lr:g}: {exc}"
            except TypeError as exc:
                if attempt == AUTOTUNER_RETRIES or not autotuner_race(exc):
                    raise
                log.warning("%s %s lr %g: Triton autotuner race (%s); training the run again", folder.parent.name,
                            job.name, lr, exc)
        raise AssertionError("unreachable")

    def _best(self, job: _Job, outcomes: list[Mapping[str, Any] | str]) -> tuple[float, Mapping[str, Any], float]:
        """The best score over the learning rates, its run's final metrics, and the rate that reached it."""
        from composer.engine.trainer import DivergedError

        finished = [(job.score(final), final, lr) for final, lr in zip(outcomes, self.cfg.learning_rates)
                    if not isinstance(final, str)]
        if not finished:
            raise DivergedError(f"{job.name} diverged at every learning rate: {'; '.join(outcomes)}")
        return max(finished, key=lambda result: result[0])  # the first rate wins a tie

    def _run(self, job: _Job, trainer: Any, folder: Path) -> Mapping[str, Any]:
        from composer.engine.trainer import CHECKPOINT

        final = _finished(folder, job)
        if final is None:
            try:
                final = job.train(trainer, folder)["final"]
            except Exception:
                self.failed = True  # an OOM must not poison the next trial in this worker: freed before it
                raise
            if not self.cfg.keep_checkpoints:
                (folder / CHECKPOINT).unlink(missing_ok=True)
        score = job.score(final)
        if not math.isfinite(score):
            raise FloatingPointError(f"{job.name}: score is {score}")
        log.debug("%s %s lr %g: score %.4f", folder.parent.name, job.name, trainer.lr, score)
        return final


AUTOTUNER_RETRIES = 2


def autotuner_race(exc: BaseException) -> bool:
    """Whether `exc` is Triton's autotuner racing with itself. Its Autotuner keeps a call's arguments
    on the kernel object shared by every thread (`self.nargs`, reset to None when a call ends), so runs
    trained side by side in threads (`parallel`) that call one autotuned kernel at once can read None:
    TypeError "'NoneType' object is not a mapping" in triton/runtime/autotuner.py. Seen on the first
    evaluation of each search worker with mamba-ssm's kernels (benchmarks/RESULTS.md, issue 15);
    the run is trained again (resumed from its checkpoint if it has one)."""
    import traceback

    return isinstance(exc, TypeError) and any(
        "triton" in frame.filename and frame.filename.endswith("autotuner.py")
        for frame in traceback.extract_tb(exc.__traceback__))


def _accuracy(final: Mapping[str, Any]) -> float:
    return float(final["accuracy"])


def _minus_bits_per_byte(final: Mapping[str, Any]) -> float:
    return -float(final["bits_per_byte"])


def _finished(folder: Path, job: _Job) -> Mapping[str, Any] | None:
    """The final metrics of a run that already completed in `folder`, if it is this run."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if summary.get("status") != "completed" or any(summary.get(k) != v for k, v in job.identity.items()):
        return None
    try:
        job.score(summary["final"])  # e.g. a text run stopped between its training and its bits per byte
    except (KeyError, TypeError, ValueError):
        return None
    return summary["final"]


# ----------------------------------------------------------------------------------------- the corpus

def load_evaluator_corpus(cfg: EvaluatorConfig) -> Any:
    """The language-modelling evaluator's corpus (a composer.data.text.TextCorpus), split by `cfg.seed`."""
    from composer.data.text import TextSource, load_corpus
    from composer.data.tokenizer import load_tokenizer

    from composer.data.corpus import default_corpus

    path = cfg.corpus["path"] or str(default_corpus(setting="evaluator.corpus.path"))
    source = TextSource(**{**cfg.corpus, "path": path})
    started = time.perf_counter()
    corpus = load_corpus(source, load_tokenizer(cfg.tokenizer), seed=cfg.seed, val_tokens=cfg.val_tokens)
    log.info("corpus %s: %d training and %d validation tokens (%s tokenizer, %.1fs)", path, corpus.train.n_tokens,
             corpus.val.n_tokens, cfg.tokenizer, time.perf_counter() - started)
    return corpus


def _free_accelerator_memory() -> None:
    """Collect garbage (a failed run's objects sit in reference cycles) and hand cached GPU memory back."""
    from composer.engine.graphs import release_memory

    release_memory(collect=True)  # not while another thread captures a graph
