"""Measured speed of a model and of the Llama layout of its size, on the device at hand (composer-bench).

Per model, in one process (`run_bench`):
  check    before anything is timed: a short random prompt, its first half prefilled, the rest decoded one
           token per step through the very decode step that is timed below; the logits must equal the full
           forward's within `tolerance` (max |decode - forward| over max |forward|), else `BenchError`
  train    forward + backward + fused AdamW on random tokens, fp32 weights under bf16 autocast on CUDA (as
           the trainer runs; `compile`: torch.compile per layer), median step after warm-up; tokens/s, and
           MFU: scaling.accounting's training FLOPs per token over the device's peak (engine.trainer.peak_flops)
  prefill  at each context: one forward over `context` random tokens at batch 1 that fills every layer's
           inference state, then the logits of the last position; tokens/s
  decode   at each context: that prefilled state copied to `batch` sequences, then one token per step through
           each layer's stateful path (KV cache, sliding-window ring, Mamba-2 and Gated DeltaNet state; MLP and
           MoE keep none); tokens/s = batch × steps / time, and memory; at batch 1 and at the largest batch
           that fits (doubling from 1, then bisection, capped at `max_batch`)
Inference runs with `dtype` weights and states (bf16 on CUDA). Memory is the CUDA allocator's peak during the
measurement (weights, states, activations, the graph's pool); off CUDA, with no allocator peak to read, it is
the weights plus the states (training: weights, gradients and AdamW's two moments). Out of memory is a
measured outcome ({"oom": true, "error": ...}), not a crash.

On CUDA the decode step is one captured CUDA graph, replayed every step. The KV cache keeps its position as
a Python int for eager decoding, which a graph would bake in, so before the steps every state moves its
changing numbers to the device (`KVCache.use_device_position`: a (1,) tensor the step reads and advances).
A model whose step cannot be captured decodes eagerly, and then so does the other (a fair ratio), with
`decode_graph: false` and the reason recorded.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from composer.config import ModelConfig
from composer.engine.objective import Objective
from composer.engine.trainer import TrainerConfig, param_groups, peak_flops, prepare
from composer.engine.trainer import resolve_device as trainer_device
from composer.errors import ComposerError, ConfigError
from composer.model import ComposedModel, build_model
from scaling.accounting import count_parameters, train_flops_per_token
from scaling.presets import PRESETS, Preset, get_preset

log = logging.getLogger(__name__)

SCHEMA = 1  # of bench.json
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2}  # the decode check's default, by inference dtype
TINY = Preset(  # CPU-sized, for tests and smoke runs: every primitive at a few thousand parameters
    name="tiny", d_model=64, n_blocks=2, mlp_hidden=128, n_heads=4, n_kv_heads=2, head_dim=16, vocab_size=512,
    mamba_d_state=16, mamba_head_dim=16, mamba_chunk_size=16, gdn_head_dim=16, swa_window=16, moe_n_experts=4,
    moe_top_k=2, moe_hidden=64,
)
Step = Callable[[torch.Tensor], torch.Tensor]  # tokens (B, 1) -> logits (B, 1, V), advancing the states


class BenchError(ComposerError):
    """The decode path disagrees with the full forward: timing it would time a wrong model."""


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    contexts: tuple[int, ...] = (4096, 32768)  # prefill and decode contexts, tokens
    train_batch: int = 8  # sequences per training step
    train_seq_len: int = 2048  # tokens per training sequence
    train_steps: int = 10  # timed training steps; the median counts
    prefill_repeats: int = 10  # timed prefills per context; the median counts (3 left 17% between identical models at 4K)
    decode_steps: int = 32  # timed decode steps per batch size
    warmup: int = 3  # untimed repeats before each timing (kernel autotuning, cuDNN plans, allocator)
    max_batch: int = 256  # the largest decode batch tried
    compile: bool = False  # torch.compile each layer for the training step (as trainer.compile)
    cuda_graph: bool = True  # replay the decode step as a CUDA graph (CUDA only)
    check_tokens: int = 32  # the decode check's prompt: half prefilled, half decoded a token at a time
    tolerance: float | None = None  # decode check, max |decode - forward| / max |forward|; None: TOLERANCE
    dtype: str = "auto"  # inference weights and states: auto (bf16 on CUDA, fp32 elsewhere) | bf16 | fp32
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda | cuda:N
    peak_tflops: float = 0.0  # for MFU; 0: a known GPU's dense bf16 peak (engine.trainer.PEAK_TFLOPS)
    seed: int = 0  # weights and tokens

    def __post_init__(self) -> None:
        contexts = self.contexts
        if isinstance(contexts, (str, bytes)) or not isinstance(contexts, Sequence) or not contexts or not all(
                isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in contexts):
            shown = list(contexts) if isinstance(contexts, Sequence) and not isinstance(contexts, str) else contexts
            raise ValueError(f"contexts must be a non-empty list of positive integers, got {shown!r}")
        object.__setattr__(self, "contexts", tuple(sorted(set(contexts))))
        for name in ("train_batch", "train_seq_len", "train_steps", "prefill_repeats", "decode_steps", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.check_tokens < 2:
            raise ValueError(f"check_tokens must be >= 2 (half prefilled, half decoded), got {self.check_tokens}")
        if self.tolerance is not None and not self.tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0 or null (the dtype's default), got {self.tolerance}")
        if self.dtype not in ("auto", *DTYPES):
            raise ValueError(f"dtype must be auto, bf16 or fp32, got {self.dtype!r}")
        if self.peak_tflops < 0:
            raise ValueError(f"peak_tflops must be >= 0, got {self.peak_tflops}")
        resolve_device(self.device)


@dataclass(frozen=True, kw_only=True)
class Subject:
    """One model to measure: its config, and the exported folder its weights come from (None: random init)."""

    role: str  # "model" (what was asked for) or "llama" (the reference)
    model: ModelConfig
    export: Path | None = None


# ------------------------------------------------------------------------------------------ what is measured

def bench_preset(name: str) -> Preset:
    """A preset by name: scaling.presets' sizes, or "tiny" (CPU-sized)."""
    if str(name).lower() == TINY.name:
        return TINY
    try:
        return get_preset(name)
    except ConfigError:
        raise ConfigError(f"unknown preset {name!r} (valid presets: {', '.join([*PRESETS, TINY.name])})") from None


def llama_layout(cfg: ModelConfig) -> ModelConfig:
    """The Llama layout ("*-" × n) at cfg's width, vocabulary and primitive settings, n the number of blocks
    whose non-embedding parameters come nearest cfg's active ones (the reference of an export)."""
    counts = count_parameters(cfg)
    goal = counts["n_active_params"] - counts["n_embedding_params"]

    def size(n_blocks: int) -> int:
        return count_parameters(replace(cfg, pattern="*-" * n_blocks))["n_non_embedding_params"]

    one_block = size(2) - size(1)
    return replace(cfg, pattern="*-" * max(1, round((goal - cfg.d_model) / one_block)))  # d_model: the final norm


def resolve_device(name: str) -> torch.device:
    """The trainer's rule (auto: this process's GPU, else the CPU; CUDA asked for but absent refused),
    for cpu and cuda devices only."""
    if name != "auto":
        try:
            kind = torch.device(name).type
        except RuntimeError:
            kind = None
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    try:
        return trainer_device(name)
    except ConfigError:
        raise ValueError(f"device={name} but CUDA is not available on this machine") from None


def device_name(device: torch.device) -> str:
    """'NVIDIA H200', or 'cpu'."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def inference_dtype(cfg: BenchConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[cfg.dtype]


# ------------------------------------------------------------------------------------------ devices and memory

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(work: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    tic = time.perf_counter()
    work()
    _sync(device)
    return time.perf_counter() - tic


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _memory(device: torch.device, resident: int, foreign: int = 0) -> int:
    """The allocator's peak on CUDA less `foreign` (bytes held before the measurement that are not its
    model's: `_foreign`); elsewhere `resident`, the bytes the measurement must hold."""
    return torch.cuda.max_memory_allocated(device) - foreign if device.type == "cuda" else resident


def _foreign(device: torch.device, model: torch.nn.Module | None = None) -> int:
    """Bytes on the device now that are not `model`'s weights and buffers: left by what ran before (on the
    H200 the second of two identical models measured 0.6 GiB more). Subtracted, a figure does not depend on
    what was measured before it."""
    if device.type != "cuda":
        return 0
    own = 0 if model is None else sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]
                                      if t.device.type == "cuda")
    return max(0, torch.cuda.memory_allocated(device) - own)


def _or_oom(what: str, measure: Callable[[], dict[str, Any]], *, device: torch.device) -> dict[str, Any]:
    """measure(), or {"oom": true, "error"} when it runs out of memory (then the memory is released)."""
    try:
        return measure()
    except Exception as exc:  # torch.OutOfMemoryError, or the CPU allocator's RuntimeError
        if not _is_oom(exc):
            raise
        message = " ".join(str(exc).split())[:200]
    _release(device)  # outside the handler: the traceback, and the tensors its frames hold, are gone
    log.info("%s: out of memory", what)
    return {"oom": True, "error": message}


def _warm_up_libraries(device: torch.device) -> None:
    """cuBLAS allocates its workspaces on first use and keeps them: made here, by a small bf16 training step,
    they count against no model (the first model measured carried them: 3.7x the training memory of the
    same model measured second, at the tiny preset on the H200)."""
    layer = torch.nn.Linear(256, 256, device=device)
    optimizer = torch.optim.AdamW(layer.parameters(), fused=True)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        layer(torch.randn(64, 256, device=device)).float().square().mean().backward()
    optimizer.step()
    del layer, optimizer
    _release(device)


def _weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


# ------------------------------------------------------------------------------------------ inference states

def _map_state(state: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """The state with fn applied to each of its tensor fields (a layer's state is a dataclass or None)."""
    if state is None:
        return None
    return dataclasses.replace(state, **{f.name: fn(v) for f in dataclasses.fields(state)
                                         if isinstance(v := getattr(state, f.name), torch.Tensor)})


def _tensors(state: Any) -> list[torch.Tensor]:
    if state is None:
        return []
    return [v for f in dataclasses.fields(state) if isinstance(v := getattr(state, f.name), torch.Tensor)]


def state_bytes(states: Sequence[Any]) -> int:
    """Bytes of every tensor the layers' states hold."""
    return sum(t.numel() * t.element_size() for s in states for t in _tensors(s))


def use_device_positions(states: Sequence[Any], pattern: str) -> str | None:
    """Move every state's changing Python numbers to the device (its `use_device_position`). Returns None,
    or why a captured graph could not replay the step: a state keeping a Python number without that method."""
    for i, (letter, state) in enumerate(zip(pattern, states)):
        if state is None:
            continue
        if not dataclasses.is_dataclass(state):
            return f"layer {i} ({letter!r}): its state ({type(state).__name__}) is not a dataclass of tensors"
        if hasattr(state, "use_device_position"):
            state.use_device_position()
            continue
        numbers = [f.name for f in dataclasses.fields(state) if type(getattr(state, f.name)) in (int, float)]
        if numbers:
            return (f"layer {i} ({letter!r}): its state keeps {numbers[0]!r} as a Python number "
                    "(a graph would replay it unchanged)")
    return None


def decode_step(model: ComposedModel, states: list, *, batch: int, graph: bool, warmup: int,
                keep_state: bool = False) -> tuple[Step, str | None]:
    """The decode step over `states` (positions already on the device): tokens (B, 1) -> logits (B, 1, V).
    With `graph`, `warmup` eager calls on a side stream, then one CUDA graph captured and replayed each
    call; `keep_state` restores the states after the warm-up (the check's context stays intact). A capture
    that fails gives the eager step and the reason; running out of memory propagates."""

    def eager(tokens: torch.Tensor) -> torch.Tensor:
        return model(tokens, states)  # (B, 1, V)

    if not graph:
        return eager, None
    device = next(model.parameters()).device
    saved = [_map_state(s, torch.clone) for s in states] if keep_state else None
    static_in = torch.zeros(batch, 1, dtype=torch.long, device=device)  # (B, 1)
    reason = None
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(max(1, warmup)):
                eager(static_in)
        torch.cuda.current_stream(device).wait_stream(side)
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph):
            static_out = eager(static_in)  # (B, 1, V), rewritten by each replay
    except Exception as exc:
        if _is_oom(exc):
            raise
        reason = f"capture failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    if saved is not None:
        for state, copy in zip(states, saved):
            for dst, src in zip(_tensors(state), _tensors(copy)):
                dst.copy_(src)
    if reason is not None:
        return eager, reason

    def replay(tokens: torch.Tensor) -> torch.Tensor:
        static_in.copy_(tokens)
        cuda_graph.replay()
        return static_out

    return replay, None


# ------------------------------------------------------------------------------------------ measurements

@torch.no_grad()
def check_decode(model: ComposedModel, *, tokens: int, tolerance: float, graph: bool, warmup: int = 1,
                 seed: int = 0, tamper: Callable[[list], None] | None = None) -> dict[str, Any]:
    """A random prompt (1, tokens): its first half prefilled, the rest decoded a token per step through
    `decode_step` (a CUDA graph when `graph`), every logit against the full forward's. `tamper(states)`
    runs between the prefill and the steps: the public hook to break a state on purpose. Raises BenchError
    (one line) above `tolerance`; returns the figures and whether the step ran as a graph."""
    device = next(model.parameters()).device
    pattern = model.cfg.pattern
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.cfg.vocab_size, (1, tokens), generator=generator).to(device)  # (1, T)
    full = model(prompt).float()  # (1, T, V)
    split = tokens // 2
    states = model.allocate_states(batch_size=1, max_len=tokens)
    logits = [model(prompt[:, :split], states).float()]  # (1, split, V)
    reason = use_device_positions(states, pattern)
    if tamper is not None:
        tamper(states)
    step, failed = decode_step(model, states, batch=1, graph=graph and reason is None, warmup=warmup,
                               keep_state=True)
    for t in range(split, tokens):
        logits.append(step(prompt[:, t : t + 1]).to(torch.float32, copy=True))  # (1, 1, V)
    decoded = torch.cat(logits, dim=1)  # (1, T, V)
    diff = (decoded - full).abs()
    worst, scale = diff.max().item(), full.abs().max().item()
    relative = worst / scale if scale > 0 else worst
    if not relative <= tolerance:  # NaN fails too
        where = int(diff.amax(dim=-1)[0].argmax())
        phase = "prefilled" if where < split else "decoded"
        raise BenchError(
            f"decode check failed for {pattern!r}: the stateful path's logits differ from the full forward's by "
            f"{relative:.3g} of the logit scale (max |diff| {worst:.3g}, max |logit| {scale:.3g}) at position {where} "
            f"({phase}; {split} of {tokens} tokens prefilled), above the tolerance {tolerance:g}")
    graph_reason = (reason or failed) if graph else None
    return {"tokens": tokens, "prefilled": split, "max_abs_diff": worst, "logit_scale": scale, "relative": relative,
            "tolerance": tolerance, "passed": True, "decode_graph": graph and graph_reason is None,
            "decode_graph_reason": graph_reason}


def measure_training(model_cfg: ModelConfig, cfg: BenchConfig, device: torch.device) -> dict[str, Any]:
    """Training tokens/s and MFU of a freshly built model: forward, backward and fused AdamW on random tokens
    (train_batch × train_seq_len), bf16 autocast on CUDA, the median of `train_steps` after `warmup`."""
    batch, seq_len = cfg.train_batch, cfg.train_seq_len
    foreign = _foreign(device)
    with device:
        module = Objective(build_model(model_cfg, seed=cfg.seed))
    prepare(module, TrainerConfig(compile=cfg.compile, device=str(device)), device)
    optimizer = torch.optim.AdamW(param_groups(module, 0.1), lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
    generator = torch.Generator().manual_seed(cfg.seed)
    tokens = torch.randint(0, model_cfg.vocab_size, (batch, seq_len + 1), generator=generator).to(device)  # (B, T+1)
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()  # (B, T), (B, T)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss_sum, _, counted = module(inputs, targets)
        (loss_sum / counted).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    _reset_peak(device)
    for _ in range(cfg.warmup):
        step()
    times = [_seconds(step, device) for _ in range(cfg.train_steps)]
    median = statistics.median(times)
    tokens_per_s = batch * seq_len / median
    flops = train_flops_per_token(model_cfg, seq_len=seq_len)
    peak = peak_flops(TrainerConfig(peak_tflops=cfg.peak_tflops), device)
    return {"batch": batch, "seq_len": seq_len, "step_ms": 1e3 * median, "tokens_per_s": tokens_per_s,
            "flops_per_token": flops, "mfu": tokens_per_s * flops / peak if peak else None,
            "memory_bytes": _memory(device, 4 * _weight_bytes(module), foreign)}  # weights, gradients, AdamW moments


@torch.no_grad()
def measure_prefill(model: ComposedModel, *, context: int, max_len: int, cfg: BenchConfig,
                    device: torch.device) -> tuple[dict[str, Any], list]:
    """Prefill of `context` random tokens at batch 1 (the states filled, the last position's logits): the
    median of `prefill_repeats` after `warmup`. Returns the figures and the filled states, on the host when
    the model is on a GPU (the decode measurement copies them to each batch)."""
    generator = torch.Generator().manual_seed(cfg.seed + context)
    tokens = torch.randint(0, model.cfg.vocab_size, (1, context), generator=generator).to(device)  # (1, C)
    times, foreign = [], _foreign(device, model)
    for i in range(cfg.warmup + cfg.prefill_repeats):
        states = model.allocate_states(batch_size=1, max_len=max_len)
        _reset_peak(device)
        seconds = _seconds(lambda: model.logits(model.hidden(tokens, states)[:, -1:]), device)  # (1, 1, V)
        if i >= cfg.warmup:
            times.append(seconds)
    median = statistics.median(times)
    memory = _memory(device, _weight_bytes(model) + state_bytes(states), foreign)
    if device.type == "cuda":
        states = [_map_state(s, lambda t: t.cpu()) for s in states]
    return {"batch": 1, "tokens_per_s": context / median, "ms": 1e3 * median, "memory_bytes": memory}, states


@torch.no_grad()
def measure_decode(model: ComposedModel, context_states: list, *, batch: int, cfg: BenchConfig, graph: bool,
                   device: torch.device) -> dict[str, Any]:
    """`decode_steps` timed steps at `batch` sequences, each starting from the prefilled `context_states`
    (batch 1, copied to every sequence), after `warmup` untimed ones; the step greedy (argmax fed back)."""
    foreign = _foreign(device, model)
    states = [_map_state(s, lambda t: t.to(device).expand(batch, *t.shape[1:]).clone()) for s in context_states]
    use_device_positions(states, model.cfg.pattern)
    _reset_peak(device)
    step, reason = decode_step(model, states, batch=batch, graph=graph, warmup=cfg.warmup)
    generator = torch.Generator().manual_seed(cfg.seed + batch)
    token = torch.randint(0, model.cfg.vocab_size, (batch, 1), generator=generator).to(device)  # (B, 1)
    for _ in range(cfg.warmup):
        token = step(token)[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)

    def run() -> None:
        nonlocal token
        for _ in range(cfg.decode_steps):
            token = step(token)[:, -1].argmax(dim=-1, keepdim=True)

    seconds = _seconds(run, device)
    held = state_bytes(states)
    return {"batch": batch, "tokens_per_s": batch * cfg.decode_steps / seconds,
            "ms_per_step": 1e3 * seconds / cfg.decode_steps, "memory_bytes": _memory(device, _weight_bytes(model) + held, foreign),
            "state_bytes": held, "graph": graph and reason is None,
            **({"graph_failed": reason} if reason else {})}


def largest_batch(measure: Callable[[int], dict[str, Any]], *, cap: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(batch 1's result, the largest fitting batch's): batches 1, 2, 4, ... while they fit, up to `cap`, then
    bisection between the last that fit and the first that did not. A result with "oom" did not fit."""
    first = measure(1)
    if first.get("oom"):
        return first, first
    best, batch, failed = first, 1, None
    while batch < cap:
        batch = min(2 * batch, cap)
        result = measure(batch)
        if result.get("oom"):
            failed = batch
            break
        best = result
    while failed is not None and failed - best["batch"] > 1:
        middle = (best["batch"] + failed) // 2
        result = measure(middle)
        if result.get("oom"):
            failed = middle
        else:
            best = result
    return first, {**best, "capped": best["batch"] == cap}


# ------------------------------------------------------------------------------------------ the run

def _load_model(subject: Subject, *, dtype: torch.dtype, device: torch.device, seed: int) -> ComposedModel:
    """The model to decode with, in eval mode, `dtype` weights: the export's, or random from `seed`."""
    if subject.export is not None:
        from composer.evals.export import load_pretrained

        model, _ = load_pretrained(subject.export, device=device)
    else:
        with device:
            model = build_model(subject.model, seed=seed)
    return model.to(dtype=dtype).eval()


def _describe(subject: Subject) -> dict[str, Any]:
    counts = count_parameters(subject.model)
    return {"role": subject.role, "pattern": subject.model.pattern, "n_layers": subject.model.n_layers,
            "d_model": subject.model.d_model, "vocab_size": subject.model.vocab_size,
            "export": None if subject.export is None else str(subject.export),
            **{k: counts[k] for k in ("n_params", "n_non_embedding_params", "n_active_params")}}


def _inference(model: ComposedModel, cfg: BenchConfig, *, graph: bool, device: torch.device,
               role: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(prefill, decode) results per context (str keys), out-of-memory outcomes included."""
    prefill, decode = {}, {}
    for context in cfg.contexts:
        max_len = context + 2 * max(1, cfg.warmup) + cfg.decode_steps + 1  # warm-up and timed steps add tokens
        held: list = []

        def run_prefill() -> dict[str, Any]:
            result, states = measure_prefill(model, context=context, max_len=max_len, cfg=cfg, device=device)
            held[:] = states
            return result

        prefill[str(context)] = _or_oom(f"{role} prefill at {context}", run_prefill, device=device)
        if not held:
            decode[str(context)] = {"batch_1": {"oom": True, "error": "the prefill ran out of memory"},
                                    "max": {"oom": True, "error": "the prefill ran out of memory"}}
            continue

        def at(batch: int) -> dict[str, Any]:
            result = _or_oom(f"{role} decode at {context}, batch {batch}", lambda: measure_decode(
                model, held, batch=batch, cfg=cfg, graph=graph, device=device), device=device)
            _release(device)
            return {"batch": batch, **result}

        first, best = largest_batch(at, cap=cfg.max_batch)
        decode[str(context)] = {"batch_1": first, "max": best}
        log.info("%s at %d: prefill %s tokens/s, decode %s tokens/s at batch 1, %s at batch %s", role, context,
                 _fmt(prefill[str(context)].get("tokens_per_s")), _fmt(first.get("tokens_per_s")),
                 _fmt(best.get("tokens_per_s")), best.get("batch"))
        held.clear()
        _release(device)
    return prefill, decode


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def figures(result: dict[str, Any], contexts: Sequence[int]) -> dict[str, Any]:
    """One model's headline numbers, None where it ran out of memory: n_params, train_tokens_per_s, mfu,
    train_memory_bytes, and per context (str keys) prefill_tokens_per_s, decode_b1_tokens_per_s,
    decode_b1_memory_bytes, decode_tokens_per_s and decode_memory_bytes (at the largest batch), decode_batch."""
    def get(section: dict[str, Any] | None, key: str) -> Any:
        return None if not section or section.get("oom") else section.get(key)

    train = result.get("train")
    out: dict[str, Any] = {"n_params": result["n_params"], "train_tokens_per_s": get(train, "tokens_per_s"),
                           "mfu": get(train, "mfu"), "train_memory_bytes": get(train, "memory_bytes")}
    per_context = {"prefill_tokens_per_s": ("prefill", None, "tokens_per_s"),
                   "decode_b1_tokens_per_s": ("decode", "batch_1", "tokens_per_s"),
                   "decode_b1_memory_bytes": ("decode", "batch_1", "memory_bytes"),
                   "decode_tokens_per_s": ("decode", "max", "tokens_per_s"),
                   "decode_memory_bytes": ("decode", "max", "memory_bytes"),
                   "decode_batch": ("decode", "max", "batch")}
    for name, (section, sub, key) in per_context.items():
        values = {}
        for c in map(str, contexts):
            entry = result.get(section, {}).get(c)
            values[c] = get(entry if sub is None else (entry or {}).get(sub), key)
        out[name] = values
    return out


def ratios(model: dict[str, Any], llama: dict[str, Any]) -> dict[str, Any]:
    """model / llama for each figure (None where either is missing), the same shape as `figures`."""
    def divide(a: Any, b: Any) -> float | None:
        return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > 0 and b > 0 else None

    return {k: ({c: divide(v[c], llama[k].get(c)) for c in v} if isinstance(v, dict) else divide(v, llama[k]))
            for k, v in model.items()}


def run_bench(subjects: Sequence[Subject], cfg: BenchConfig, *,
              tamper: Callable[[str, list], None] | None = None) -> dict[str, Any]:
    """Measure every subject (the model first, then its Llama reference) on cfg's device: training, the
    decode check, prefill and decode. Returns bench.json's content: device, dtype, whether decoding ran as
    CUDA graphs (and why not), per role the full results, their `figures` and the model's `ratios` to the
    reference. `tamper(role, states)` is check_decode's hook. Raises BenchError when a check fails."""
    device = resolve_device(cfg.device)
    dtype = inference_dtype(cfg, device)
    tolerance = TOLERANCE[dtype] if cfg.tolerance is None else cfg.tolerance
    wanted = cfg.cuda_graph and device.type == "cuda"
    if device.type == "cuda":
        _warm_up_libraries(device)
    results: dict[str, dict[str, Any]] = {}
    models: dict[str, ComposedModel] = {}
    for subject in subjects:  # training, then the check, for every model before any inference is timed
        role = subject.role
        results[role] = _describe(subject)
        log.info("%s %r: training at batch %d x %d", role, subject.model.pattern, cfg.train_batch, cfg.train_seq_len)
        results[role]["train"] = _or_oom(f"{role} training", lambda: measure_training(subject.model, cfg, device),
                                         device=device)
        _release(device)
        model = _load_model(subject, dtype=dtype, device=device, seed=cfg.seed)
        results[role]["impl"] = model.impl_report()
        hook = None if tamper is None else (lambda states, role=role: tamper(role, states))
        results[role]["check"] = check_decode(model, tokens=cfg.check_tokens, tolerance=tolerance, graph=wanted,
                                              warmup=cfg.warmup, seed=cfg.seed, tamper=hook)
        models[role] = model.to("cpu") if device.type == "cuda" else model  # off the GPU while the other runs
        _release(device)
    reasons = [f"{role}: {r['check']['decode_graph_reason']}" for role, r in results.items()
               if r["check"]["decode_graph_reason"]]
    graph = wanted and not reasons  # both graphed or both eager: the ratios compare like with like
    reason = None if graph else ("; ".join(reasons) if reasons else
                                 "cuda_graph=false" if device.type == "cuda" else "CUDA graphs need a CUDA device")
    for role in list(models):
        model = models.pop(role).to(device)
        results[role]["prefill"], results[role]["decode"] = _inference(model, cfg, graph=graph, device=device, role=role)
        del model
        _release(device)
    figs = {role: figures(r, cfg.contexts) for role, r in results.items()}
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "device_type": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "memory": ("CUDA allocator peak (weights, states, activations), less what was held before" if device.type == "cuda"
                   else "weights + states (training: + gradients and AdamW moments); no allocator peak off CUDA"),
        "decode_graph": graph,
        "decode_graph_reason": reason,
        "tolerance": tolerance,
        "config": {**dataclasses.asdict(cfg), "contexts": list(cfg.contexts)},
        "results": results,
        "figures": figs,
        "ratios": ratios(figs["model"], figs["llama"]) if {"model", "llama"} <= set(figs) else {},
    }
