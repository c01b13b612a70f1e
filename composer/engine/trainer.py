"""The shared trainer: the one loop behind every proxy and every full run.

It owns optimisation (AdamW parameter groups, schedule, clipping, accumulation), precision (bf16
autocast; with `float8`, the primitives' GEMMs in float8: composer.engine.float8), the
loss (the plain cross-entropy, or composer.engine.loss's chunked one that never holds the full logits),
the token budget, evaluation, checkpoints with exact resume, and the run folder's records
(`metrics.jsonl`, `summary.json`, the checkpoint). The model owns only its forward pass.

In a process group (`composer.engine.distributed`, every pretraining run) the same loop shards the model
with FSDP2, gives each rank its rows of the global batch, averages what it logs over ranks,
writes a distributed checkpoint, and, with `save_on_signal`, checkpoints and stops at the end of
the step in which SIGTERM or SIGUSR1 arrived (preemption). Only rank 0 writes records.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from composer.engine import checkpoint as ckpt
from composer.engine import distributed
from composer.engine import float8
from composer.engine.auxiliary import Auxiliary
from composer.engine.batches import IGNORE, Batches
from composer.errors import ComposerError, ConfigError
from composer.engine.graphs import (GRAPH_WARMUP, Batch, StepGraph, compile_guard, release_memory, side_stream,
                                    stop_requested, waited)
from composer.engine.objective import Objective, loss_and_correct
from composer.engine.profile import StepProfiler
from composer.engine.meter import Meter, Records
from composer.records import write_json

log = logging.getLogger(__name__)

CHECKPOINT = ckpt.FILE
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16, by GPU name
LOSSES = ("full", "chunked")


class DivergedError(ComposerError):
    """The loss became NaN or infinite."""


class Preempted(ComposerError):
    """SIGTERM or SIGUSR1 arrived: the run checkpointed and stopped; rerunning resumes it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


@dataclass(frozen=True, kw_only=True)
class TrainerConfig:
    max_tokens: int = 2_000_000  # the budget: input tokens seen in training
    batch_size: int = 32  # sequences per optimiser step (over all ranks)
    batch_tokens: int = 0  # > 0: batch_size = batch_tokens // sequence length, so tasks of any length take the same tokens per step
    grad_accum: int = 1  # micro-batches per step (batch_size must divide by it)
    micro_batch_size: int = 0  # sequences per rank per forward; > 0 sets grad_accum to fit batch_size
    lr: float = 3e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # the schedule ends at lr * min_lr_ratio
    schedule: str = "cosine"  # cosine | wsd (warmup-stable-decay)
    warmup: float = 0.1  # fraction of steps spent warming up linearly
    decay: float = 0.2  # wsd only: fraction of steps in the final linear decay
    weight_decay: float = 0.1  # not applied to norms, biases and the SSM's decay/skip/step params
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    compile: bool = False  # torch.compile each layer
    cuda_graph: bool = False  # one CUDA device: replay each step (fwd, bwd, clip, AdamW) as one captured CUDA graph
    loss: str = "full"  # full (fastest measured: benchmarks/RESULTS.md) | chunked (never the full logits: less memory)
    activation_checkpointing: bool = False  # recompute each layer's mixer in backward
    float8: str | None = None  # None (off) | tensorwise | rowwise: the primitives' linears in float8 (torchao)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_every: int = 0  # steps between evaluations; 0: only at the end
    eval_batch_size: int = 0  # sequences per forward of an evaluation (per rank); 0: the training micro-batch
    ckpt_every: int = 100  # steps between checkpoints; 0: only at the end
    log_every: int = 10  # steps between metrics.jsonl records
    save_on_signal: bool = False  # SIGTERM/SIGUSR1: checkpoint at the end of the step, then stop
    peak_tflops: float = 0.0  # per device, for MFU; 0: known GPUs' dense bf16 peak (H100/H200 989)
    profile_steps: int = 0  # > 0: profile that many steps once warm (engine/profile.py: profile/, summary.json)
    progress: bool = True  # a progress bar on a terminal, else a log line every 10% of the run
    wandb: bool = False  # log metrics to Weights & Biases
    wandb_project: str = "composer"

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "wsd"):
            raise ValueError(f"schedule must be cosine or wsd, got {self.schedule!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.float8 is not None and self.float8 not in float8.RECIPES:
            raise ValueError(f"float8 must be null (off) or one of {', '.join(float8.RECIPES)}, got {self.float8!r}")
        if self.batch_size < 1 or self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be a positive multiple of grad_accum ({self.grad_accum})")
        if not 0 <= self.warmup <= 1 or not 0 <= self.decay <= 1:
            raise ValueError("warmup and decay are fractions of the run, between 0 and 1")
        for name, ok, requirement in _RANGES:  # a bad value fails here, not later inside torch
            if not ok(value := getattr(self, name)):
                raise ValueError(f"{name} must be {requirement}, got {value!r}")
        if not _known_device(self.device):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")


# summary.json's `seconds` that, with the steps, partition a run's time: `setup` (data, model, the trainer), `to_graph`
# (from the first step to a captured graph: eager warm-up steps, capture), `checkpoints` (before the last step),
# `final` (the last checkpoint and evaluation)
RUN_PHASES = ("setup", "to_graph", "checkpoints", "final")
# and within them: `capture` (the graph captured and instantiated, within `to_graph`), `waiting` (for other threads'
# captures and compiled layers)
WITHIN_PHASES = ("capture", "waiting")

# TrainerConfig's numeric fields: (name, check, what the check asks); NaN fails every check.
_RANGES: tuple[tuple[str, Callable[[float], bool], str], ...] = (
    ("max_tokens", lambda v: v > 0, "> 0"),
    ("batch_tokens", lambda v: v >= 0, ">= 0"),
    ("micro_batch_size", lambda v: v >= 0, ">= 0"),
    ("lr", lambda v: 0 < v < math.inf, "> 0 and finite"),
    ("min_lr_ratio", lambda v: 0 <= v <= 1, "between 0 and 1"),
    ("weight_decay", lambda v: v >= 0, ">= 0"),
    ("beta1", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("beta2", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("grad_clip", lambda v: v >= 0, ">= 0 (0 disables clipping)"),
    ("eval_every", lambda v: v >= 0, ">= 0 (0: only at the end)"),
    ("eval_batch_size", lambda v: v >= 0, ">= 0 (0: the training micro-batch)"),
    ("ckpt_every", lambda v: v >= 0, ">= 0 (0: only at the end)"),
    ("log_every", lambda v: v >= 1, ">= 1"),
    ("peak_tflops", lambda v: v >= 0, ">= 0 (0: a known GPU's peak)"),
    ("profile_steps", lambda v: v >= 0, ">= 0 (0: off)"),
)


def _known_device(name: str) -> bool:
    """Whether `name` is "auto" or a device string torch parses, of a type the trainer runs on."""
    if name == "auto":
        return True
    try:
        return torch.device(name).type in ("cpu", "cuda", "mps")
    except RuntimeError:
        return False


def for_length(cfg: TrainerConfig, seq_len: int) -> TrainerConfig:
    """The config for sequences of `seq_len` tokens: `batch_tokens`, when set, becomes `batch_size`."""
    if not cfg.batch_tokens:
        return cfg
    if cfg.batch_tokens < seq_len:
        raise ConfigError(f"trainer.batch_tokens ({cfg.batch_tokens}) is less than one sequence ({seq_len} tokens)")
    return replace(cfg, batch_size=cfg.batch_tokens // seq_len, batch_tokens=0)


def micro_batches(cfg: TrainerConfig, world_size: int) -> tuple[int, int]:
    """(sequences per rank per forward, forwards per step) that make up `cfg.batch_size` over all ranks."""
    if cfg.micro_batch_size:
        accum, rest = divmod(cfg.batch_size, cfg.micro_batch_size * world_size)
        if rest or not accum:
            raise ConfigError(f"trainer.batch_size ({cfg.batch_size}) must be a multiple of micro_batch_size "
                              f"({cfg.micro_batch_size}) x {world_size} ranks")
        return cfg.micro_batch_size, accum
    micro, rest = divmod(cfg.batch_size, cfg.grad_accum * world_size)
    if rest or not micro:
        raise ConfigError(f"trainer.batch_size ({cfg.batch_size}) must be a multiple of grad_accum ({cfg.grad_accum}) "
                          f"x {world_size} ranks")
    return micro, cfg.grad_accum


def peak_flops(cfg: TrainerConfig, device: torch.device) -> float | None:
    """The device's peak FLOP/s for MFU: `cfg.peak_tflops`, else a known GPU's dense bf16 peak."""
    if cfg.peak_tflops:
        return cfg.peak_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((tf * 1e12 for gpu, tf in PEAK_TFLOPS.items() if gpu in name), None)
    return None


def lr_multiplier(step: int, *, total: int, cfg: TrainerConfig) -> float:
    """Learning-rate multiplier for optimiser step `step` (0-based) of `total`."""
    warmup = round(cfg.warmup * total)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    decay_start = total - round(cfg.decay * total)  # wsd: flat, then linear to the floor
    if step < decay_start:
        return 1.0
    return 1 - (1 - cfg.min_lr_ratio) * (step - decay_start + 1) / max(1, total - decay_start)


def decays(p: torch.Tensor) -> bool:
    """Weight decay on matrices only: not on norms, biases (1-D) or params flagged `_no_weight_decay`."""
    return p.ndim >= 2 and not getattr(p, "_no_weight_decay", False)


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The AdamW groups: the weights that `decays`, and the rest without weight decay."""
    params = [p for p in module.parameters() if p.requires_grad]
    return [{"params": [p for p in params if decays(p)], "weight_decay": weight_decay},
            {"params": [p for p in params if not decays(p)], "weight_decay": 0.0}]


def resolve_loss(cfg: TrainerConfig, module: Objective) -> str:
    """The loss path to run, "full" or "chunked"; chunked needs the LM head (not a task's own head)."""
    if module.head is not None and cfg.loss == "chunked":
        raise ConfigError("trainer.loss=chunked needs the LM head, but this task has its own output head; "
                          "use trainer.loss=full")
    return cfg.loss


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return distributed.device()
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name} but CUDA is not available on this machine")
    return device


def _autocast(cfg: TrainerConfig, device: torch.device, *, cache: bool = True):
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache) if _bf16(cfg, device) else nullcontext()


def _check_finite(loss: float, step: int, lr: float) -> None:
    if not math.isfinite(loss):
        raise DivergedError(f"loss became {loss} at step {step} (lr {lr:.3g}); lower trainer.lr or raise trainer.warmup")


@torch.no_grad()
def evaluate(
    module: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, cfg: TrainerConfig, device: torch.device
) -> dict[str, float]:
    """Mean loss and accuracy over every target position of the given batches.

    In a process group each rank takes every world_size-th batch (padded with batches that count
    nothing, so that every rank runs as many forwards) and the totals are summed over ranks."""
    batches = list(batches)
    world = distributed.current()
    if world.world_size > 1 and batches:
        mine = batches[world.rank :: world.world_size]
        blank = (batches[0][0], torch.full_like(batches[0][1], IGNORE))
        batches = mine + [blank] * (-(-len(batches) // world.world_size) - len(mine))
    was_training = module.training
    module.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, counted
    for inputs, targets in batches:
        with _autocast(cfg, device):
            counts = module(inputs.to(device), targets.to(device))  # loss, correct, counted
        totals += torch.stack([t.double() for t in counts])
    module.train(was_training)
    loss, correct, counted = distributed.all_sum(totals).tolist()
    return {"loss": loss / max(counted, 1), "accuracy": correct / max(counted, 1)}


def _bf16(cfg: TrainerConfig, device: torch.device) -> bool:
    return cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")


def graphed(cfg: TrainerConfig, device: torch.device) -> bool:
    """Whether the step runs as a captured CUDA graph: asked for, on one CUDA device, unsharded."""
    return cfg.cuda_graph and device.type == "cuda" and not torch.distributed.is_initialized()


def preflight(cfg: TrainerConfig, device: torch.device) -> None:
    """Refuse, before any model or data exists, what `prepare` cannot do on `device`: float8 training
    where it cannot run (a job calls this before loading its corpus; `prepare` calls it again)."""
    if cfg.float8:
        float8.check_support(cfg.float8, device=device, gpu=float8.describe_gpu(device), bf16=_bf16(cfg, device),
                             graphed=graphed(cfg, device))


def prepare(module: Objective, cfg: TrainerConfig, device: torch.device) -> float8.Float8Report | None:
    """The loss path, float8 linear layers, activation checkpointing and torch.compile per layer,
    the device, and in a process group FSDP2 (float8 before compile and FSDP2: torchao's order).
    Returns what float8 converted (None when off); refuses float8 where it cannot run before any change."""
    from composer.model import Layer

    sharded = torch.distributed.is_initialized()
    preflight(cfg, device)
    module.loss_impl = resolve_loss(cfg, module)
    layers = [m for m in module.modules() if isinstance(m, Layer)]
    report = float8.apply_float8(module, recipe=cfg.float8, fsdp=sharded) if cfg.float8 else None
    if cfg.compile:  # every layer type x shape x train/eval is one entry of Module._call_impl's cache (default 8)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for layer in layers:
        layer.checkpoint = cfg.activation_checkpointing
        if cfg.compile:
            layer.compile()
    if cfg.compile:
        module.full_loss = torch.compile(loss_and_correct)  # one graph per task's shapes, like a layer
    module.to(device)
    if sharded:
        distributed.shard(module, layers, bf16=_bf16(cfg, device))
    return report


class _Preemption:
    """With `save_on_signal`, SIGTERM and SIGUSR1 are noted as they arrive and acted on at the end of
    the step (a checkpoint, then `Preempted`): a handler must not checkpoint mid-step. Only the main
    thread can take signals; a run in another thread (search.evaluator's) keeps the process's handlers."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.received: list[int] = []  # signals that arrived; acted on at the end of a step
        self.handlers: dict[int, Any] = {}  # the handlers to restore

    def install(self) -> None:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGUSR1):
                self.handlers[signum] = signal.signal(signum, lambda signum, frame: self.received.append(signum))

    def restore(self) -> None:
        for signum, handler in self.handlers.items():
            signal.signal(signum, handler)

    def requested(self, device: torch.device) -> bool:
        """Whether any rank received a signal (a collective: every rank asks after every step)."""
        return self.enabled and distributed.any_rank(bool(self.received), device)

    @property
    def signum(self) -> int:
        return self.received[0] if self.received else signal.SIGTERM


class Trainer:
    """One run of `train`, in named pieces (after torchtitan's Trainer): setup and resume here;
    `run` loops over `train_step` (eager, or a captured CUDA graph) and `between_steps` (evaluation,
    interruption, preemption, checkpoints); `Meter` times and records."""

    def __init__(self, module: nn.Module, *, train_batches: Batches, eval_batches: list[Batch], seq_len: int,
                 cfg: TrainerConfig, run_dir: Path, signature: dict[str, Any], summary: dict[str, Any] | None = None,
                 flops_per_token: float | None = None) -> None:
        self.created = time.perf_counter()
        self.module = module if isinstance(module, Objective) else Objective(module)
        self.train_batches, self.eval_batches, self.cfg = train_batches, eval_batches, cfg
        self.run_dir, self.signature = run_dir, signature
        run_dir.mkdir(parents=True, exist_ok=True)
        self.world, self.sharded = distributed.current(), torch.distributed.is_initialized()
        self.device = resolve_device(cfg.device)
        _, self.accum = micro_batches(cfg, self.world.world_size)
        self.float8 = prepare(self.module, cfg, self.device)
        self.aux = Auxiliary(self.module)  # layers' auxiliary losses and stats (MoE balancing)
        self.graphed = graphed(cfg, self.device)
        self.optimizer = torch.optim.AdamW(param_groups(self.module, cfg.weight_decay), lr=cfg.lr,
                                           betas=(cfg.beta1, cfg.beta2), fused=self.device.type == "cuda")
        self.tokens_per_step = cfg.batch_size * seq_len  # over all ranks
        self.total_steps = max(1, cfg.max_tokens // self.tokens_per_step)
        self.summary = self._skeleton(summary, flops_per_token)
        peak = peak_flops(cfg, self.device)
        resumed = self._resume()
        self.step = self.start_step = 0 if resumed is None else resumed
        records = Records(run_dir, resume_step=resumed, cfg=cfg, config={**signature, "trainer": asdict(cfg)},
                          enabled=self.world.main)
        self.meter = Meter(records, cfg=cfg, total_steps=self.total_steps, tokens_per_step=self.tokens_per_step,
                           flops_per_token=flops_per_token, peak=peak, world=self.world)
        self.preemption = _Preemption(cfg.save_on_signal)
        self.graph: StepGraph | None = None
        self.profiler = self._profiler()
        self.step_name = f"step {run_dir.name}"  # each step's range in a profiler's trace

    def _skeleton(self, summary: dict[str, Any] | None, flops_per_token: float | None) -> dict[str, Any]:
        """summary.json before training: the caller's keys, the signature, and how the step runs."""
        cfg, cuda = self.cfg, self.device.type == "cuda"
        summary = {**(summary or {}), **self.signature, "world_size": self.world.world_size,
                   "eval_batches": len(self.eval_batches),  # forwards of each evaluation (trainer.eval_batch_size)
                   "thread": threading.get_ident()}  # the thread stepping it (pthread id): a GPU trace's launches, low 32 bits
        summary["impl"] = {**summary.get("impl", {}), "loss": self.module.loss_impl, "compile": cfg.compile,
                           "step": "cuda_graph" if self.graphed else "eager",
                           "precision": "bf16 autocast" if _bf16(cfg, self.device) else "fp32",
                           "float8": self.float8.describe() if self.float8 else "off",
                           "optimizer": "AdamW (fused)" if cuda else "AdamW"}
        if flops_per_token:
            summary["train_flops_per_token"] = flops_per_token
        return summary

    def _profiler(self) -> StepProfiler | None:
        """cfg.profile_steps steps once warm: after the eager warm-up, the graph's capture and the first
        compiled steps, or as many of the run's last steps as there are."""
        n = min(self.cfg.profile_steps, self.total_steps - self.start_step)
        if n <= 0:
            return None
        first = min(self.start_step + GRAPH_WARMUP + 1, self.total_steps - n)
        return StepProfiler(first=first, n=n, run_dir=self.run_dir, rank=self.world.rank, cuda=self.device.type == "cuda")

    def _resume(self) -> int | None:
        """Load the run folder's checkpoint (model, optimizer, data position) if any: its step."""
        meta = ckpt.load(self.run_dir, model=self.module, optimizer=self.optimizer, device=self.device,
                         distributed=self.sharded, signature=self.signature)
        if meta is None:
            return None
        self.train_batches.load_state_dict(meta["data"])
        log.info("resumed from %s at step %d of %d", self.run_dir, meta["step"], self.total_steps)
        return meta["step"]

    def run(self) -> dict[str, Any]:
        """Train to the budget, checkpoint, evaluate; summary.json says how it ended."""
        self.preemption.install()
        self.module.train()
        self.meter.start(self.step)
        self.started, waited_before = time.perf_counter(), waited()
        self._add_seconds("setup", self.started - self.created)
        stream = side_stream(self.device) if self.graphed else nullcontext()
        try:
            with stream:
                while self.step < self.total_steps:
                    if self.profiler:
                        self.profiler.before(self.step)
                    self.train_step()
                    if self.profiler and (result := self.profiler.after(self.step)):
                        self._profiled(result)
                    self.between_steps()
                with self._timed("final"):
                    final = self._finish()
                self._add_seconds("waiting", waited() - waited_before)
        except DivergedError as exc:
            self._write_summary({**self.summary, "status": "diverged", "error": str(exc), "step": self.step})
            raise
        finally:
            self.preemption.restore()
            self.meter.close()
            if self.profiler:
                self.profiler.close()
        return self._completed(final)

    def _add_seconds(self, phase: str, seconds: float) -> None:
        """summary.json's `seconds`, where a run's time goes besides its steps (searches read it): RUN_PHASES, and
        WITHIN_PHASES within them."""
        times = self.summary["seconds"] = dict(self.summary.get("seconds", {}))  # not the caller's dict
        times[phase] = round(times.get(phase, 0.0) + seconds, 3)

    @contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self._add_seconds(phase, time.perf_counter() - started)

    def _profiled(self, result: dict[str, Any]) -> None:
        self.summary["profile"] = result
        if self.world.main and result.get("events"):
            log.info("profiled steps %d-%d: %s %.1f ms a step; communication %.0f%% (exposed %.0f%%), compute %.0f%%, "
                     "idle %.0f%% (%s)", result["first_step"] + 1, result["first_step"] + result["steps"],
                     result["device"], result["wall_ms_per_step"], 100 * result["comm"], 100 * result["exposed_comm"],
                     100 * result["compute"], 100 * result["idle"], self.run_dir / "profile")

    def train_step(self) -> None:
        """One optimiser step on the next batches, then its metering."""
        lr = self.cfg.lr * lr_multiplier(self.step, total=self.total_steps, cfg=self.cfg)
        batches = self._next_batches()
        if self.graphed and self.graph is None and self.step - self.start_step >= GRAPH_WARMUP:
            with self._timed("capture"):  # within to_graph: the rest is the eager steps
                self.graph = StepGraph(self.optimizer, batches, self._forward_backward, self._update,
                                       held=compile_guard(self.cfg))
            self._add_seconds("to_graph", time.perf_counter() - self.started)
        # named in a trace of the profiler this thread runs (trainer.profile_steps), by the run folder's name; only
        # while one records (a range costs about 5 us a step, a check 0.04 us)
        with torch.profiler.record_function(self.step_name) if torch.autograd._profiler_enabled() else nullcontext():
            if self.graph is not None:
                self.graph.run(lr, batches)
                loss_t, norm_t = self.graph.loss, self.graph.grad_norm
            else:
                loss_t, norm_t = self._eager_step(lr, batches)
        self.step += 1
        self._measure(lr, loss_t, norm_t)

    def _next_batches(self) -> list[Batch]:
        return [tuple(t.to(self.device, non_blocking=True) for t in self.train_batches.next_batch())
                for _ in range(self.accum)]

    def _eager_step(self, lr: float, batches: list[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        """The step on the current stream (also the graph's warmup): the mean loss and gradient norm."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with compile_guard(self.cfg):
            loss_t = distributed.all_mean(self._forward_backward(batches))
            if not self.graphed:  # stop before a diverged step updates the weights
                _check_finite(loss_t.item(), self.step, lr)
            norm_t = self._update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_t, norm_t

    def _forward_backward(self, batches: list[Batch]) -> torch.Tensor:
        """The step's mean loss over its micro-batches, gradients accumulated."""
        loss_sum = torch.zeros((), device=self.device)
        self.aux.begin()
        for micro, (inputs, targets) in enumerate(batches):
            distributed.set_gradient_sync(self.module, micro == self.accum - 1)  # FSDP2 reduces once per step
            # a graph must re-cast the weights every replay: no autocast cache
            with _autocast(self.cfg, self.device, cache=not self.graphed):
                micro_loss, _, counted = self.module(inputs, targets)
            micro_loss = micro_loss / counted.clamp(min=1)  # each micro-batch weighs the same
            aux_loss = self.aux.collect()  # layers' balancing losses, before backward reruns checkpointed forwards
            objective = micro_loss if aux_loss is None else micro_loss + aux_loss
            (objective / self.accum).backward()  # FSDP averages the gradients over ranks at the last
            loss_sum += micro_loss.detach()
        return loss_sum / self.accum

    def _update(self) -> torch.Tensor:
        """Clip and step; the gradient norm before clipping."""
        grad_norm = nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.grad_clip or float("inf"))
        self.optimizer.step()
        float8.after_optimizer_step(self.float8, self.module)  # float8 all-gather: the next step's weight scales
        self.aux.after_step()  # e.g. the MoE routing bias, outside autograd
        return grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm

    def _measure(self, lr: float, loss_t: torch.Tensor, norm_t: torch.Tensor) -> None:
        """The bar's tick; at logged or reported steps the loss is read (a host sync: a graph's only
        divergence check) and recorded."""
        self.meter.bar.update(1)
        if self.meter.due(self.step):
            loss, grad_norm = loss_t.item(), norm_t.item()
            _check_finite(loss, self.step - 1, lr)
            self.meter.train(self.step, loss=loss, lr=lr, grad_norm=grad_norm, extra=self.aux.metrics())

    def between_steps(self) -> None:
        """What runs after a step: periodic evaluation, another run's Ctrl-C, preemption, checkpoints."""
        cfg, step, last = self.cfg, self.step, self.step >= self.total_steps
        if cfg.eval_every and step % cfg.eval_every == 0 and not last:
            self._evaluate()
        if stop_requested():
            raise KeyboardInterrupt("another run of this process (or of its evaluation) was interrupted")
        if self.preemption.requested(self.device):
            self._preempt()
        if cfg.ckpt_every and step % cfg.ckpt_every == 0 and not last:
            with self._timed("checkpoints"):
                self._checkpoint()

    def _preempt(self) -> None:
        self._checkpoint()
        signum = self.preemption.signum
        message = (f"{signal.Signals(signum).name} received: checkpointed at step {self.step} of {self.total_steps} "
                   f"in {self.run_dir}; run the same command again to resume")
        self._write_summary({**self.summary, "status": "preempted", "step": self.step})
        raise Preempted(message, signum)

    def _checkpoint(self) -> None:
        ckpt.save(self.run_dir, model=self.module, optimizer=self.optimizer, device=self.device,
                  distributed=self.sharded,
                  meta={"step": self.step, "data": self.train_batches.state_dict(), "signature": self.signature})

    def _evaluate(self) -> dict[str, float]:
        with compile_guard(self.cfg):
            metrics = evaluate(self.module, self.eval_batches, cfg=self.cfg, device=self.device)
        self.meter.eval(self.step, metrics)
        return metrics

    def _finish(self) -> dict[str, float]:
        """After the last step: free the graph's memory, checkpoint, and the final evaluation."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.graph is not None:
            self.graph = None
            release_memory()  # the graph's memory pool
        self._checkpoint()
        return self._evaluate()

    def _completed(self, final: dict[str, float]) -> dict[str, Any]:
        elapsed = self.meter.elapsed()
        summary = {**self.summary, "status": "completed", "step": self.step, "tokens": self.step * self.tokens_per_step,
                   "train_seconds": round(elapsed, 2), "final": final, **self.meter.throughput(self.step, elapsed)}
        if self.device.type == "cuda":
            summary["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
        self._write_summary(summary)
        return summary

    def _write_summary(self, summary: dict[str, Any]) -> None:
        if self.world.main:  # only rank 0 writes records
            write_json(self.run_dir / "summary.json", summary)


def train(
    module: nn.Module,
    *,
    train_batches: Batches,
    eval_batches: list[tuple[torch.Tensor, torch.Tensor]],
    seq_len: int,
    cfg: TrainerConfig,
    run_dir: Path,
    signature: dict[str, Any],
    summary: dict[str, Any] | None = None,
    flops_per_token: float | None = None,
) -> dict[str, Any]:
    """Train `module` within the token budget; resume from the run folder's checkpoint when present.

    `signature` identifies the run (pattern, task, seed...): resuming a checkpoint with another
    signature is an error. `train_batches` serves this rank's micro-batches (`micro_batches`).
    `flops_per_token` (training FLOPs) turns throughput into MFU. Returns and writes
    `summary.json`: `summary` plus the final metrics. `module` is an `Objective`; a bare model is
    trained inside one (its checkpoint keys then start with `model.`).

    With `cfg.cuda_graph` on one CUDA device the first `GRAPH_WARMUP` steps run eagerly, then one
    step is captured as a CUDA graph and every later step replays it (`graphs.StepGraph`): no
    host work per kernel and no host sync per step; the loss is read (and divergence caught) only
    at logged steps. Without a graph the step runs on the current stream, as a thread of
    `search.evaluator` sets it.
    """
    return Trainer(module, train_batches=train_batches, eval_batches=eval_batches, seq_len=seq_len, cfg=cfg,
                   run_dir=run_dir, signature=signature, summary=summary, flops_per_token=flops_per_token).run()
