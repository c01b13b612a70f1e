"""Training throughput of composer against mamba-ssm's `MambaLMHeadModel` at the same layout (issue 7).

For each layout composer's model and the peer are built in this one process and timed alike: one
training step is forward, backward and a fused AdamW step on the same batch of random tokens under
bf16 autocast (fp32 parameters), timed with CUDA events after warm-up (compile time excluded),
median of the timed steps. Reported per model: tokens/s, MFU (training FLOPs per token from
scaling.accounting, 6N plus attention's 12·L·d·T and the SSD scan, against the GPU's dense bf16
peak: 989 TFLOP/s on H100/H200), peak memory, and composer's tokens/s over the peer's.

    python benchmarks/train_bench.py                                  # every layout, both sides (GPU)
    python benchmarks/train_bench.py --layouts llama-1b --variants eager:chunked,compile:chunked,eager:full
    python benchmarks/train_bench.py --cpu-smoke                      # tiny sizes on the CPU, composer only
    python benchmarks/train_bench.py --report results.json            # the table again, from a results file

Layouts (`LAYOUTS`): the pattern unit repeated to the preset's size by the extrapolator's ratio s
(scaling.extrapolate.scale_ratio, rounded to whole repeats), at the preset's widths
(scaling.presets: 128K vocabulary, tied embeddings, GQA, Mamba-2 state 128, head dim 64).

The peer (`peer_settings`): mamba-ssm's LM is a stack of Blocks, each one mixer (Mamba2 or MHA)
with its own MLP of one global width d_intermediate. So `*-` repeated maps exactly (every mixer
followed by an MLP); `M` repeated maps exactly (d_intermediate 0); `M-M-M*-` has 3 MLPs per 4
mixers, so the peer gets an MLP after every mixer at 3/4 of the width: the same FLOPs and the same
parameters but one more MLP pre-norm per unit (d_model each), not the same order. Its attention
runs without rotary embeddings (rotary_emb_dim=0): mamba-ssm takes them from the flash_attn
package, which the GPU machine lacks; composer keeps its RoPE. Its attention runs through SDPA's
default backend, its Mamba-2 through its fused conv+scan path, its norms through its Triton
add+norm kernel, its loss over the full logits.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from composer.config import ModelConfig
from composer.errors import ConfigError
from composer.model import build_model
from composer.records import write_json
from composer.engine.trainer import TrainerConfig, param_groups, peak_flops, prepare
from composer.engine.objective import Objective
from primitives.mlp import MLPConfig
from scaling.accounting import count_parameters, train_flops_per_token
from scaling.extrapolate import scale_ratio
from scaling.presets import Preset, get_preset, preset_model_config

LAYOUTS = {  # name -> (pattern unit, preset)
    "llama-350m": ("*-", "350m"),  # Llama-3.2-style transformer
    "llama-1b": ("*-", "1b"),
    "nemotron-350m": ("M-M-M*-", "350m"),  # Nemotron-H-style hybrid
    "nemotron-1b": ("M-M-M*-", "1b"),
    "mamba2-350m": ("M", "350m"),  # pure Mamba-2 stack
}
SMOKE_PRESET = Preset(name="smoke", d_model=64, n_blocks=2, mlp_hidden=128, n_heads=4, n_kv_heads=2, head_dim=16,
                      vocab_size=512, mamba_d_state=16, mamba_head_dim=16, mamba_chunk_size=32)
MLP_MULTIPLE = 128  # mamba-ssm's GatedMLP rounds its hidden size up to this
KERNEL_GROUPS = {  # group -> kernel-name pattern; the first that matches takes the kernel
    "attention": r"flash|fmha|sdpa|scaled_dot|attention|cudnn",
    "ssd scan": r"chunk_scan|chunk_state|state_passing|bmm_chunk|chunk_cumsum|ssd|selective",
    "conv1d": r"conv1d",
    "norm": r"norm",
    "loss": r"softmax|cross_entropy|nll_loss|logsumexp",
    "optimizer": r"adam|multi_tensor",
    "gemm": r"gemm|gemv|xmma|cutlass|nvjet|matmul|aten::(add|b)?mm\b",
}


@dataclass(frozen=True, kw_only=True)
class Variant:
    """How composer's side runs: torch.compile per layer or not, and the loss path."""

    compile: bool
    loss: str  # chunked | full

    @classmethod
    def parse(cls, text: str) -> Variant:
        mode, _, loss = text.partition(":")
        if mode not in ("eager", "compile") or loss not in ("chunked", "full"):
            raise ConfigError(f"variant {text!r}: expected eager|compile:chunked|full, e.g. eager:chunked")
        return cls(compile=mode == "compile", loss=loss)

    def __str__(self) -> str:
        return f"{'compile' if self.compile else 'eager'}:{self.loss}"


@dataclass(frozen=True, kw_only=True)
class Settings:
    layouts: tuple[str, ...]
    sides: tuple[str, ...]  # composer, peer
    variants: tuple[Variant, ...]  # composer's; the first is measured for every layout before the others
    batch: int  # sequences per step
    seq_len: int
    warmup: int  # untimed steps (compilation, autotuning, cuDNN plans)
    steps: int  # timed steps; the median counts
    attention_backend: str  # composer's attention backend
    profile: bool  # one more step under the profiler: GPU time by kernel group
    budget_s: float | None  # no job starts after this many seconds; None: no limit
    device: str
    smoke: bool  # tiny sizes (SMOKE_PRESET)


@dataclass(frozen=True, kw_only=True)
class Job:
    layout: str
    side: str
    variant: Variant | None  # None for the peer


def layout_config(layout: str, *, smoke: bool, attention_backend: str) -> ModelConfig:
    """Composer's model of a layout: the unit repeated round(s) times at the preset's widths."""
    unit, preset = LAYOUTS[layout]
    preset = SMOKE_PRESET if smoke else get_preset(preset)
    repeats = max(1, round(scale_ratio(unit, preset)))
    cfg = preset_model_config(preset, unit * repeats)
    attention = replace(cfg.primitive_config("*"), backend=attention_backend)
    return replace(cfg, primitives={**cfg.primitives, "attention": attention})


def peer_equivalent(cfg: ModelConfig) -> ModelConfig:
    """The composer pattern that the peer computes: every mixer followed by an MLP whose width
    spreads the layout's MLP parameters over all mixers (none when the layout has no MLP)."""
    mixers = cfg.pattern.replace("-", "")
    if not mixers:
        raise ConfigError(f"pattern {cfg.pattern!r} has no mixer: mamba-ssm's blocks each need one")
    n_mlp = cfg.pattern.count("-")
    hidden = n_mlp * cfg.primitive_config("-").hidden_size(cfg.d_model) / len(mixers)
    d_intermediate = round(hidden / MLP_MULTIPLE) * MLP_MULTIPLE
    pattern = "".join(m + ("-" if d_intermediate else "") for m in mixers)
    return replace(cfg, pattern=pattern, primitives={**cfg.primitives, "mlp": MLPConfig(hidden=d_intermediate or None)})


def peer_settings(equivalent: ModelConfig) -> dict[str, Any]:
    """mamba-ssm MambaConfig fields for `peer_equivalent(cfg)` (see the module docstring)."""
    d, attn, ssm = equivalent.d_model, equivalent.primitive_config("*"), equivalent.primitive_config("M")
    mixers = equivalent.pattern.replace("-", "")
    return {
        "d_model": d,
        "n_layer": len(mixers),
        "d_intermediate": equivalent.primitive_config("-").hidden_size(d) if "-" in equivalent.pattern else 0,
        "vocab_size": equivalent.vocab_size,
        "ssm_cfg": {"layer": "Mamba2", "d_state": ssm.d_state, "d_conv": ssm.d_conv, "expand": ssm.expand,
                    "headdim": ssm.head_dim, "ngroups": ssm.n_groups, "chunk_size": ssm.chunk_size},
        "attn_layer_idx": [i for i, m in enumerate(mixers) if m == "*"],
        "attn_cfg": {"num_heads": attn.n_heads, "num_heads_kv": attn.kv_heads, "head_dim": attn.head_size(d),
                     "rotary_emb_dim": 0, "qkv_proj_bias": False, "out_proj_bias": False, "causal": True},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 8,
        "tie_embeddings": equivalent.tie_embeddings,
    }


@functools.cache
def _peer_model_cls() -> tuple[type, type] | str:
    """(MambaConfig, MambaLMHeadModel), or why mamba-ssm cannot be imported."""
    try:
        from mamba_ssm.models.config_mamba import MambaConfig
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    except (ImportError, OSError) as exc:
        return f"mamba-ssm not importable: {exc}"
    return MambaConfig, MambaLMHeadModel


def _batch(vocab: int, s: Settings, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(0)
    tokens = torch.randint(0, vocab, (s.batch, s.seq_len + 1), generator=g, device=device)  # (B, T + 1)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()  # (B, T), (B, T)


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def build_composer(cfg: ModelConfig, variant: Variant, s: Settings, device: torch.device):
    """(one training step, the module, what ran) for composer's side."""
    with device:
        module = Objective(build_model(cfg, seed=0))
    prepare(module, TrainerConfig(compile=variant.compile, loss=variant.loss, device=str(device)), device)
    optimizer = torch.optim.AdamW(param_groups(module, 0.1), lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
    inputs, targets = _batch(cfg.vocab_size, s, device)

    def step() -> None:
        with _autocast(device):
            loss_sum, _, counted = module(inputs, targets)
        (loss_sum / counted).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    impl = {**module.model.impl_report(), "loss": module.loss_impl, "compile": variant.compile}
    return step, module, impl


def build_peer(equivalent: ModelConfig, s: Settings, device: torch.device):
    """(one training step, the model, what ran) for mamba-ssm's side: its LM over the full logits."""
    classes = _peer_model_cls()
    if isinstance(classes, str):
        raise RuntimeError(classes)
    MambaConfig, MambaLMHeadModel = classes
    model = MambaLMHeadModel(MambaConfig(**peer_settings(equivalent)), device=device, dtype=torch.float32)
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.95), fused=True)
    inputs, targets = _batch(equivalent.vocab_size, s, device)

    def step() -> None:
        with _autocast(device):
            logits = model(inputs).logits  # (B, T, V)
        F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    impl = {"attention": "sdpa, default backend, no rotary", "mamba2": "fused conv1d + SSD scan (mem-eff path)",
            "loss": "full"}
    return step, model, impl


def time_steps(step: Callable[[], None], s: Settings, device: torch.device) -> list[float]:
    """Milliseconds of each timed step, after `s.warmup` untimed ones."""
    for _ in range(s.warmup):
        step()
    times = []
    for _ in range(s.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            tic = time.perf_counter()
            step()
            times.append(1e3 * (time.perf_counter() - tic))
    return times


def profile_step(step: Callable[[], None], device: torch.device) -> dict[str, Any]:
    """One step under torch.profiler: the share of device time (CPU: of op self time) per kernel
    group (`KERNEL_GROUPS`) and the ten costliest kernels."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activity = ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    if device.type == "cuda":
        kernels = [(e.name, e.time_range.elapsed_us()) for e in prof.events() if e.device_type == DeviceType.CUDA]
    else:
        kernels = [(e.name, e.self_cpu_time_total) for e in prof.events() if e.device_type == DeviceType.CPU]
    total = sum(t for _, t in kernels) or 1.0
    groups: dict[str, float] = {}
    by_name: dict[str, float] = {}
    for name, t in kernels:
        group = next((g for g, pattern in KERNEL_GROUPS.items() if re.search(pattern, name, re.IGNORECASE)), "other")
        groups[group] = groups.get(group, 0.0) + t / total
        by_name[name] = by_name.get(name, 0.0) + t
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:10]
    return {"device_ms": round(total / 1e3, 2), "shares": {g: round(v, 4) for g, v in sorted(groups.items())},
            "top": [{"kernel": name[:120], "ms": round(t / 1e3, 3)} for name, t in top]}


def run_job(job: Job, s: Settings, device: torch.device) -> dict[str, Any]:
    """Build and time one model: the record of the result."""
    cfg = layout_config(job.layout, smoke=s.smoke, attention_backend=s.attention_backend)
    measured = cfg if job.side == "composer" else peer_equivalent(cfg)
    record: dict[str, Any] = {"layout": job.layout, "side": job.side, "variant": str(job.variant or ""),
                              "pattern": measured.pattern, "n_layers": measured.n_layers,
                              "n_params_analytic": count_parameters(measured)["n_params"],
                              "train_flops_per_token": train_flops_per_token(measured, seq_len=s.seq_len)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if job.side == "composer":
        step, model, impl = build_composer(cfg, job.variant, s, device)
    else:
        step, model, impl = build_peer(measured, s, device)
        record["peer_config"] = peer_settings(measured)
    record["impl"] = impl
    record["n_params"] = sum(p.numel() for p in model.parameters())
    times = time_steps(step, s, device)
    median = statistics.median(times)
    tokens_per_s = s.batch * s.seq_len / (median / 1e3)
    peak = peak_flops(TrainerConfig(), device)
    record.update(step_ms=round(median, 2), step_ms_all=[round(t, 2) for t in times], tokens_per_s=round(tokens_per_s),
                  mfu=round(tokens_per_s * record["train_flops_per_token"] / peak, 4) if peak else None)
    if device.type == "cuda":
        record["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if s.profile:
        try:
            record["profile"] = profile_step(step, device)
        except Exception as exc:  # the timing stands without it
            record["profile_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return record


def plan(s: Settings) -> list[Job]:
    """The peer and composer's first variant for every layout, then the other variants."""
    first = [Job(layout=layout, side=side, variant=s.variants[0] if side == "composer" else None)
             for layout in s.layouts for side in ("peer", "composer") if side in s.sides]
    rest = [Job(layout=layout, side="composer", variant=v) for v in s.variants[1:] for layout in s.layouts]
    return first + (rest if "composer" in s.sides else [])


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()  # compiled layers hold their modules


def environment(device: torch.device, *, peer_side: bool) -> dict[str, Any]:
    """The machine and versions; mamba-ssm's only when the peer runs (it may be mid-install otherwise)."""
    peer = _peer_model_cls() if peer_side else "not imported (no peer side)"
    if not isinstance(peer, str):
        import mamba_ssm

        peer = mamba_ssm.__version__
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "cuda": torch.version.cuda, "host": os.uname().nodename, "mamba_ssm": peer}


def run(s: Settings, out: Path) -> dict[str, Any]:
    device = torch.device(s.device)
    started = time.monotonic()
    settings = {**asdict(s), "variants": [str(v) for v in s.variants]}
    results: dict[str, Any] = {"environment": environment(device, peer_side="peer" in s.sides), "settings": settings,
                               "results": []}
    for job in plan(s):
        record: dict[str, Any] = {"layout": job.layout, "side": job.side, "variant": str(job.variant or "")}
        if s.budget_s is not None and time.monotonic() - started > s.budget_s:
            record["error"] = f"skipped: past the time budget of {s.budget_s:.0f} s"
        elif job.side == "peer" and (isinstance(reason := _peer_model_cls(), str) or device.type != "cuda"):
            record["error"] = f"skipped: {reason if isinstance(reason, str) else 'the peer runs on CUDA only'}"
        else:
            tic = time.monotonic()
            try:
                record = run_job(job, s, device)
            except Exception as exc:  # one model's failure (out of memory, a kernel) must not lose the others
                record["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            record["seconds"] = round(time.monotonic() - tic, 1)
            _release(device)
        results["results"].append(record)
        print(_one_line(record), flush=True)
        write_json(out, results)
    return results


def _one_line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['layout']:>14} {r['side']:>8} {r['variant']:>15}  {r['error']}"
    return (f"{r['layout']:>14} {r['side']:>8} {r['variant']:>15}  {r['n_params'] / 1e6:7.1f}M params  "
            f"{r['step_ms']:8.1f} ms/step  {r['tokens_per_s']:>9,} tokens/s  MFU {_pct(r['mfu'])}  "
            f"{r.get('peak_memory_gib', '-')} GiB  ({r['seconds']} s)")


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown(results: dict[str, Any]) -> str:
    """The results table, composer rows with their tokens/s over the peer's of the same layout, then
    the profiled share of each kernel group."""
    rows = results["results"]
    peer = {r["layout"]: r["tokens_per_s"] for r in rows if r["side"] == "peer" and "error" not in r}
    lines = [_row("layout", "side", "variant", "layers", "params", "ms/step", "tokens/s", "MFU", "peak GiB", "vs peer"),
             _row("---", "---", "---", *["---:"] * 7)]
    for r in rows:
        name = (r["layout"], r["side"], r["variant"])
        if "error" in r:
            lines.append(_row(*name, r["error"], *[""] * 6))
            continue
        ratio = f"{r['tokens_per_s'] / peer[r['layout']]:.2f}×" if r["side"] == "composer" and r["layout"] in peer else ""
        lines.append(_row(*name, r["n_layers"], f"{r['n_params'] / 1e6:.1f}M", f"{r['step_ms']:.1f}",
                          f"{r['tokens_per_s']:,}", _pct(r["mfu"]), r.get("peak_memory_gib", "—"), ratio))
    profiled = [r for r in rows if "profile" in r]
    if profiled:
        groups = sorted({g for r in profiled for g in r["profile"]["shares"]})
        lines += ["", "Share of the step's device time by kernel group:", "",
                  _row("layout", "side", "variant", *groups), _row("---", "---", "---", *["---:"] * len(groups))]
        lines += [_row(r["layout"], r["side"], r["variant"], *(_pct(r["profile"]["shares"].get(g, 0.0)) for g in groups))
                  for r in profiled]
    env, st = results["environment"], results["settings"]
    lines += ["", f"{env['device']}, torch {env['torch']}, mamba-ssm: {env['mamba_ssm']}; batch {st['batch']} × "
                  f"{st['seq_len']} tokens, median of {st['steps']} steps after {st['warmup']} warm-up"]
    return "\n".join(lines)


def settings_from_args(argv: list[str] | None = None) -> tuple[Settings, Path] | list[Path]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layouts", default="all", help=f"comma-separated, or all: {', '.join(LAYOUTS)}")
    p.add_argument("--sides", default="composer,peer")
    p.add_argument("--variants", default="eager:chunked",
                   help="composer's, comma-separated: eager|compile:chunked|full; the first runs first for all layouts")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--attention-backend", default=None, help="composer's; default cudnn on CUDA, auto elsewhere")
    p.add_argument("--profile", action="store_true", help="one more step under the profiler per model")
    p.add_argument("--budget-s", type=float, default=None, help="start no model after this many seconds")
    p.add_argument("--out", type=Path, default=Path("train_bench.json"))
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes, batch 2 x 64, 2 steps, on the CPU")
    p.add_argument("--report", type=Path, nargs="+", help="print the table of these results files and exit")
    a = p.parse_args(argv)
    if a.report:
        return a.report
    device = "cpu" if a.cpu_smoke or not torch.cuda.is_available() else "cuda"
    layouts = tuple(LAYOUTS) if a.layouts == "all" else tuple(a.layouts.split(","))
    sides = tuple(a.sides.split(","))
    unknown = sorted(set(layouts) - set(LAYOUTS)) + sorted(set(sides) - {"composer", "peer"})
    if unknown:
        raise ConfigError(f"unknown layout or side {unknown[0]!r} (layouts: {', '.join(LAYOUTS)}; "
                          "sides: composer, peer)")
    if a.cpu_smoke:
        a.batch, a.seq_len, a.warmup, a.steps = 2, 64, 1, 2
    settings = Settings(
        layouts=layouts, sides=sides, variants=tuple(Variant.parse(v) for v in a.variants.split(",")),
        batch=a.batch, seq_len=a.seq_len, warmup=a.warmup, steps=a.steps,
        attention_backend=a.attention_backend or ("cudnn" if device == "cuda" else "auto"), profile=a.profile,
        budget_s=a.budget_s, device=device, smoke=a.cpu_smoke,
    )
    return settings, a.out


def main(argv: list[str] | None = None) -> None:
    try:
        parsed = settings_from_args(argv)
    except ConfigError as exc:
        sys.exit(f"train_bench: error: {exc}")
    if isinstance(parsed, list):
        for path in parsed:
            print(markdown(json.loads(path.read_text())), end="\n\n")
        return
    settings, out = parsed
    results = run(settings, out)
    print()
    print(markdown(results))


if __name__ == "__main__":
    main()
