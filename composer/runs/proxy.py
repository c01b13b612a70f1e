"""Train one pattern with the shared trainer on one MAD task (`train_on_task`: what `composer-train` and
the search's MAD evaluator run) or on a text corpus (`train_on_text`: the search's language-modelling
evaluator and the pretraining job)."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from composer.engine import distributed
from composer.config import ModelConfig
from composer.engine.batches import ArrayBatches
from composer.errors import ConfigError
from composer.model import build_model, seeded
from composer.pattern import count_primitives
from composer.records import git, head_commit, write_json
from composer.tasks.mad import TASKS
from composer.data.text import TextBatches, TextCorpus, val_batches
from composer.engine.trainer import TrainerConfig, for_length, micro_batches, resolve_device, train
from composer.engine.objective import Objective
from scaling.accounting import count_parameters, train_flops_per_token


@functools.cache
def environment() -> dict[str, Any]:
    """Code version and environment, recorded in every run folder: read once per process (the code a process
    runs is the code it imported; a search's runs would otherwise start two git processes each)."""
    commit = head_commit(timeout=5)
    dirty = git("status", "--porcelain", "--untracked-files=no", timeout=5) if commit else None
    return {"git_commit": commit, "git_dirty": bool(dirty) if commit else None,
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "host": platform.node()}


def _setup(
    *, model_cfg: ModelConfig, trainer_cfg: TrainerConfig, seed: int, data: dict[str, Any],
    summary: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """What every run starts from: the model (deterministic for `seed`) on the trainer's device; the
    signature that defines the run (a checkpoint is only resumed under the same one), `data` naming
    what it trains on; and summary.json's account of the model and environment, after `summary`."""
    model = build_model(model_cfg, seed=seed).to(resolve_device(trainer_cfg.device))
    signature = {"pattern": model_cfg.pattern, "seed": seed, "model": asdict(model_cfg), **data}
    summary = {
        **(summary or {}),
        **count_parameters(model_cfg),
        "n_layers": model_cfg.n_layers,
        "layers": count_primitives(model_cfg.pattern),
        "impl": model.impl_report(),
        "environment": environment(),
    }
    return model, signature, summary


@functools.lru_cache(maxsize=8)
def task_data(task_name: str, task_cfg: Any, seed: int) -> tuple[torch.Tensor, ...]:
    """A task's training and test sets, (train_x, train_y, test_x, test_y) on the CPU, drawn from disjoint seed
    streams (2·seed and 2·seed + 1); made once per process, as every candidate of a search trains on the same
    ones. Shared: read, never written."""
    task = TASKS[task_name]
    return (*task.generate(task_cfg, n_examples=task_cfg.n_train, seed=2 * seed),
            *task.generate(task_cfg, n_examples=task_cfg.n_test, seed=2 * seed + 1))


def train_on_task(
    *, model_cfg: ModelConfig, task_name: str, task_cfg: Any, trainer_cfg: TrainerConfig, seed: int, run_dir: Path
) -> dict[str, Any]:
    """Build the model (deterministic for `seed`), train it on the task (`task_data`), return the summary."""
    started = time.perf_counter()
    task = TASKS[task_name]
    train_x, train_y, test_x, test_y = task_data(task_name, task_cfg, seed)
    trainer_cfg = for_length(trainer_cfg, train_x.shape[1])
    micro, _ = micro_batches(trainer_cfg, distributed.current().world_size)  # the trainer draws as many per step
    model, signature, summary = _setup(model_cfg=model_cfg, trainer_cfg=trainer_cfg, seed=seed,
                                       data={"task": task_name, "task_config": asdict(task_cfg)})
    head = None
    if task.build_head is not None:
        with seeded(seed + 1):
            head = task.build_head(task_cfg, model_cfg.d_model)
    device = resolve_device(trainer_cfg.device)
    test_x, test_y = test_x.to(device), test_y.to(device)  # once, not a blocking copy per batch at the end
    size = trainer_cfg.eval_batch_size or micro
    eval_batches = [(test_x[i : i + size], test_y[i : i + size]) for i in range(0, len(test_x), size)]
    summary["seconds"] = {"setup": time.perf_counter() - started}  # data and model; the trainer adds its own
    return train(
        Objective(model, head),
        train_batches=ArrayBatches(train_x.to(device), train_y.to(device), batch_size=micro, seed=seed),
        eval_batches=eval_batches,
        seq_len=train_x.shape[1],
        cfg=trainer_cfg,
        run_dir=run_dir,
        signature=signature,
        summary=summary,
    )


def describe_corpus(corpus: TextCorpus) -> dict[str, Any]:
    """What identifies a loaded corpus in a run's signature: its source and tokenizer (as the token
    cache recorded them), the token and byte counts of each split, and a hash of which documents
    went to which split (the split seed's choice)."""
    meta = json.loads((corpus.cache_path / "meta.json").read_text())
    documents = hashlib.sha256(corpus.val.doc_ids.tobytes() + b"|" + corpus.train.doc_ids.tobytes()).hexdigest()
    return {"source": meta.get("source"), "tokenizer": meta.get("tokenizer"), "vocab_size": corpus.vocab_size,
            "train_tokens": corpus.train.n_tokens, "val_tokens": corpus.val.n_tokens, "val_bytes": corpus.val.n_bytes,
            "documents": documents[:16]}


def train_on_text(
    *, model_cfg: ModelConfig, corpus: TextCorpus, trainer_cfg: TrainerConfig, seq_len: int, seed: int, run_dir: Path,
    summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the model (deterministic for `seed`), train it on the corpus's training split, score the
    whole validation split, return the summary; `final` holds the validation `loss` (nats per token),
    `accuracy` and `bits_per_byte`. `summary` adds keys to summary.json.

    In a process group (torch.distributed initialised) rank r reads rows r·m…(r+1)·m of every global
    batch, m = batch_size / (grad_accum · world_size); the trainer does the sharding.
    """
    if model_cfg.vocab_size < corpus.vocab_size:
        raise ConfigError(f"model.vocab_size ({model_cfg.vocab_size}) is smaller than the tokenizer's vocabulary "
                          f"({corpus.vocab_size})")
    if corpus.val.n_tokens == 0:
        raise ConfigError("the corpus has no validation split: load it with val_tokens > 0")
    started, world = time.perf_counter(), distributed.current()
    trainer_cfg = for_length(trainer_cfg, seq_len)
    micro, _ = micro_batches(trainer_cfg, world.world_size)  # ConfigError unless batch_size divides evenly
    model, signature, summary = _setup(model_cfg=model_cfg, trainer_cfg=trainer_cfg, seed=seed, summary=summary,
                                       data={"corpus": describe_corpus(corpus), "seq_len": seq_len})
    summary["seconds"] = {"setup": time.perf_counter() - started}  # the model; the trainer adds its own
    result = train(
        Objective(model),
        train_batches=TextBatches(corpus.train, batch_size=micro, seq_len=seq_len, seed=seed, rank=world.rank,
                                  world_size=world.world_size),
        eval_batches=val_batches(corpus.val, batch_size=trainer_cfg.eval_batch_size or micro, seq_len=seq_len),
        seq_len=seq_len,
        cfg=trainer_cfg,
        run_dir=run_dir,
        signature=signature,
        summary=summary,
        flops_per_token=train_flops_per_token(model_cfg, seq_len=seq_len),
    )
    # val_batches makes every validation token a target once, so the mean loss is over val.n_tokens targets
    result["final"]["bits_per_byte"] = corpus.val.bits_per_byte(result["final"]["loss"])
    if world.main:
        write_json(run_dir / "summary.json", result)
    return result
