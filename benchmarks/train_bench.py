"""Training throughput of composer against a peer at the same layout: mamba-ssm's `MambaLMHeadModel`
(issue 7) for the Llama, Nemotron-H and Mamba-2 layouts, fla's `GatedDeltaNetForCausalLM` (issue 16)
for the Qwen3-Next-style one.

For each layout composer's model and the peer are built in this one process and timed alike: one
training step is forward, backward and a fused AdamW step on the same batch of random tokens under
bf16 autocast (fp32 parameters), timed with CUDA events after warm-up (compile time excluded),
median of the timed steps. A variant's third part, `rowwise` or `tensorwise`, runs composer's
linear layers in float8 (`trainer.float8`, torchao: composer/engine/float8.py; the record's
`impl.float8` says which layers); where the machine cannot (no CUDA GPU of compute capability
>= 8.9, no torchao) the row says why instead. Reported per model: tokens/s, MFU (training FLOPs per token from
scaling.accounting, 6N plus attention's 12·L·d·T, the SSD scan and the chunked delta rule, against
the GPU's dense bf16 peak: 989 TFLOP/s on H100/H200; the peer is counted with the same FLOPs as the
composer pattern it computes), peak memory, and composer's tokens/s over the peer's.

    python benchmarks/train_bench.py                                  # every layout, both sides (GPU)
    python benchmarks/train_bench.py --layouts llama-1b --variants eager:chunked,compile:chunked,eager:full
    python benchmarks/train_bench.py --layouts qwen3next-1b --variants compile:full,eager:full  # against fla
    python benchmarks/train_bench.py --layouts llama-1b,nemotron-1b \
        --variants compile:full,compile:full:rowwise,compile:full:tensorwise     # float8 against bf16 (issue 18)
    python benchmarks/train_bench.py --cpu-smoke                      # tiny sizes on the CPU, composer only
    python benchmarks/train_bench.py --report results.json            # the table again, from a results file

Layouts (`LAYOUTS`): the pattern unit repeated to the preset's size by the extrapolator's ratio s
(scaling.extrapolate.scale_ratio, rounded to whole repeats), at the preset's widths
(scaling.presets: 128K vocabulary, tied embeddings, GQA, Mamba-2 state 128, head dim 64; Gated
DeltaNet head dim 128, d_model / 128 query/key heads and twice as many value heads). Each layout's
peer is in `PEERS` (mamba-ssm unless named there).

The mamba-ssm peer (`peer_settings`): its LM is a stack of Blocks, each one mixer (Mamba2 or MHA)
with its own MLP of one global width d_intermediate. So `*-` repeated maps exactly (every mixer
followed by an MLP); `M` repeated maps exactly (d_intermediate 0); `M-M-M*-` has 3 MLPs per 4
mixers, so the peer gets an MLP after every mixer at 3/4 of the width: the same FLOPs and the same
parameters but one more MLP pre-norm per unit (d_model each), not the same order. Its attention
runs without rotary embeddings (rotary_emb_dim=0): mamba-ssm takes them from the flash_attn
package, which the GPU machine lacks; composer keeps its RoPE. Its attention runs through SDPA's
default backend, its Mamba-2 through its fused conv+scan path, its norms through its Triton
add+norm kernel, its loss over the full logits.

The fla peer (`fla_settings`; flash-linear-attention 0.6.0): fla's GatedDeltaNetForCausalLM is a
stack of blocks, each a mixer (Gated DeltaNet, or attention at the block indices of `attn.layers`)
and a SwiGLU MLP of `intermediate_size`, each behind its own RMSNorm, then a final norm. So a
pattern of (mixer, `-`) pairs, such as `G-G-G-*-` repeated, maps exactly: the same widths, heads,
MLP size and vocabulary, and the same parameter count (the same projections, convs, A_log/dt_bias,
gated-norm weight, norms and tied embedding; fla splits composer's one in_proj into q/k/v/a/b/g
projections). The FLOPs counted for it are composer's. Where the two still differ:
- Attention: fla's `Attention` calls the flash-attn package, which the GPU machine lacks; the
  benchmark then puts its own SDPA call at fla's `flash_attn_func` with composer's backend (cuDNN
  on CUDA: K/V heads copied for GQA as composer does), so both sides run the same attention
  kernel, and says so in the record's `impl`. fla applies RoPE (θ 500,000, over the whole head)
  with its Triton rotary kernel, composer with its own. Neither has Qwen3-Next's output gate on
  attention, its q/k norms or its partial rotary.
- Gated DeltaNet: fla runs its layer's own path (Triton short conv over q, k, v; gates, sigmoid and
  q/k L2 norms inside the chunk kernel; value heads grouped over query/key heads inside the
  kernel; its fused gated RMSNorm); composer computes the gates and the gated norm in torch and
  repeats q, k per value head before the same fla chunk kernel (or runs its torch chunked form
  when `impl=auto` refuses fla: see the record's `impl`). fla's kernels fix the chunk at 64, as
  composer's accounting counts. Initialisation differs (A uniform in (0, 16] against [1, 16]),
  which does not change the time.
- Norms and MLP: fla's Triton fused add+RMSNorm and fused SwiGLU; composer's are torch (fused by
  torch.compile in the compile variants). Norm epsilon is set to composer's.
- Loss: the logits and the cross-entropy over them in fp32 outside the model, as for mamba-ssm
  (fla's fused cross-entropy, used only with `labels`, is off).
- Hopper: fla 0.6.0 refuses the gated delta rule's backward with Triton >= 3.4.0, < 3.7.1 unless
  tilelang is installed (its issue #640); with the GPU machine's Triton 3.6, carry tilelang, or the
  peer's row records that error and composer's GDN falls back to its torch path.
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
from composer.engine.float8 import RECIPES, torchao_version
from composer.errors import ConfigError
from composer.model import build_model
from composer.records import write_json
from composer.engine.trainer import TrainerConfig, param_groups, peak_flops, preflight, prepare
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
    "qwen3next-1b": ("G-G-G-*-", "1b"),  # Qwen3-Next-style hybrid: 3 Gated DeltaNet to 1 attention, dense MLPs
}
PEERS = {"qwen3next-1b": "fla"}  # layout -> its peer; a layout not named here: mamba-ssm
SMOKE_PRESET = Preset(name="smoke", d_model=64, n_blocks=2, mlp_hidden=128, n_heads=4, n_kv_heads=2, head_dim=16,
                      vocab_size=512, mamba_d_state=16, mamba_head_dim=16, mamba_chunk_size=32, gdn_head_dim=16)
FLA_CHUNK = 64  # fla's chunked delta-rule kernels fix their chunk length
MLP_MULTIPLE = 128  # mamba-ssm's GatedMLP rounds its hidden size up to this
KERNEL_GROUPS = {  # group -> kernel-name pattern; the first that matches takes the kernel
    # the short convolutions: causal-conv1d's and fla's kernels, or torch's depthwise conv (its own kernel or
    # cuDNN's implicit GEMM), before attention: cuDNN's convolutions are named "cudnn" too
    "conv1d": r"conv1d|depthwise|implicit_gemm|implicit_precomp",
    "attention": r"flash|fmha|sdpa|scaled_dot|attention|cudnn",
    "ssd scan": r"chunk_scan|chunk_state|state_passing|bmm_chunk|chunk_cumsum|ssd|selective",
    "delta rule": r"gated_delta|delta_rule|gdn_gate|wy_repr|recompute_w_u|kkt|solve_tril|chunk_(fwd|bwd)_kernel|"
                  r"chunk_(local|global)_cumsum|l2norm|solve_triangular|trsm",  # Gated DeltaNet (fla's, or torch's)
    "norm": r"norm",
    "loss": r"softmax|cross_entropy|nll_loss|logsumexp",
    "optimizer": r"adam|multi_tensor",
    "gemm": r"gemm|gemv|xmma|cutlass|nvjet|matmul|aten::(add|b)?mm\b",
}


@dataclass(frozen=True, kw_only=True)
class Variant:
    """How composer's side runs: torch.compile per layer or not, the loss path, float8 or not."""

    compile: bool
    loss: str  # chunked | full
    float8: str | None = None  # a float8 recipe (trainer.float8); None: bf16

    @classmethod
    def parse(cls, text: str) -> Variant:
        parts = text.split(":")  # mode, loss[, float8 recipe]
        if len(parts) not in (2, 3) or parts[0] not in ("eager", "compile") or parts[1] not in ("chunked", "full") \
                or parts[2:] and parts[2] not in RECIPES:
            raise ConfigError(f"variant {text!r}: expected eager|compile:chunked|full[:{'|'.join(RECIPES)}], "
                              "e.g. eager:chunked or compile:full:rowwise")
        return cls(compile=parts[0] == "compile", loss=parts[1], float8=parts[2] if len(parts) == 3 else None)

    def __str__(self) -> str:
        return f"{'compile' if self.compile else 'eager'}:{self.loss}" + (f":{self.float8}" if self.float8 else "")


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
    gdn_impl: str  # composer's Gated DeltaNet impl: on CUDA `kernels` (fla, as the peer, also where `auto` keeps bf16 on torch)
    profile: bool  # one more step under the profiler: GPU time by kernel group
    budget_s: float | None  # no job starts after this many seconds; None: no limit
    device: str
    smoke: bool  # tiny sizes (SMOKE_PRESET)


@dataclass(frozen=True, kw_only=True)
class Job:
    layout: str
    side: str
    variant: Variant | None  # None for the peer


def peer_kind(layout: str) -> str:
    """The package whose model is the layout's peer: "mamba-ssm" or "fla"."""
    return PEERS.get(layout, "mamba-ssm")


def layout_config(layout: str, *, smoke: bool, attention_backend: str, gdn_impl: str = "auto") -> ModelConfig:
    """Composer's model of a layout: the unit repeated round(s) times at the preset's widths."""
    unit, preset = LAYOUTS[layout]
    preset = SMOKE_PRESET if smoke else get_preset(preset)
    repeats = max(1, round(scale_ratio(unit, preset)))
    cfg = preset_model_config(preset, unit * repeats)
    attention = replace(cfg.primitive_config("*"), backend=attention_backend)
    gdn = replace(cfg.primitive_config("G"), impl=gdn_impl)
    return replace(cfg, primitives={**cfg.primitives, "attention": attention, "gdn": gdn})


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


def fla_equivalent(cfg: ModelConfig) -> ModelConfig:
    """The composer pattern that fla's model computes: the layout itself, once `fla_settings` maps it,
    its delta rule counted at fla's chunk length (the presets' own, 64)."""
    fla_settings(cfg)  # raises ConfigError where fla's blocks cannot hold the layout
    gdn = cfg.primitive_config("G")
    if "G" not in cfg.pattern or gdn.chunk_size == FLA_CHUNK:
        return cfg
    return replace(cfg, primitives={**cfg.primitives, "gdn": replace(gdn, chunk_size=FLA_CHUNK)})


def fla_settings(cfg: ModelConfig, *, seq_len: int = 2048) -> dict[str, Any]:
    """fla 0.6.0 GatedDeltaNetConfig fields for a composer layout of (mixer, `-`) pairs with mixers
    `G` and `*` (see the module docstring): one fla block per pair, attention at the pairs whose
    mixer is `*`, every width and head count equal to composer's."""
    pattern, d = cfg.pattern, cfg.d_model
    pairs = [pattern[i : i + 2] for i in range(0, len(pattern), 2)]
    if len(pattern) % 2 or any(pair[1] != "-" or pair[0] not in "G*" for pair in pairs):
        raise ConfigError(f"pattern {pattern!r}: fla's GatedDeltaNet blocks are (G or *) each followed by an MLP")
    gdn, attn, mlp = cfg.primitive_config("G"), cfg.primitive_config("*"), cfg.primitive_config("-")
    head_dim = attn.head_size(d)
    if head_dim * attn.n_heads != d or attn.window is not None or attn.qk_norm or attn.rope_theta is None:
        raise ConfigError(f"fla's attention has head_dim = d_model / num_heads, RoPE, no window and no q/k norm; "
                          f"composer's: head_dim {head_dim} × {attn.n_heads} heads at d_model {d}, window "
                          f"{attn.window}, qk_norm {attn.qk_norm}, rope_theta {attn.rope_theta}")
    return {
        "hidden_size": d,
        "num_hidden_layers": len(pairs),
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_embeddings,
        "norm_eps": cfg.norm_eps,
        "max_position_embeddings": seq_len,  # the rotary table's length
        "initializer_range": 0.02,
        # Gated DeltaNet mixers: H query/key heads of head_dim, H_v = v_head_ratio · H value heads of expand_v · head_dim
        "attn_mode": "chunk",
        "head_dim": gdn.head_dim,
        "num_heads": gdn.n_qk_heads(d),
        "num_v_heads": gdn.n_v_heads(d),
        "expand_v": float(gdn.expand_v),
        "use_gate": True,  # the SiLU output gate through the per-head gated RMSNorm, as composer's
        "output_gate_activation": "swish",
        "use_short_conv": True,
        "conv_size": gdn.d_conv,
        "allow_neg_eigval": False,
        # the attention blocks
        "attn": {"layers": [i for i, pair in enumerate(pairs) if pair[0] == "*"], "num_heads": attn.n_heads,
                 "num_kv_heads": attn.kv_heads, "qkv_bias": False, "window_size": None,
                 "rope_theta": float(attn.rope_theta)},
        # every block's SwiGLU MLP
        "intermediate_size": mlp.hidden_size(d),
        "hidden_act": "swish",
        "fuse_norm": True,
        "fuse_swiglu": True,
        "fuse_cross_entropy": False,  # the loss runs outside the model, over the full logits, as for mamba-ssm
        "fuse_linear_cross_entropy": False,
        "use_cache": False,
    }


def peer_config(layout: str, cfg: ModelConfig) -> ModelConfig:
    """The composer pattern that the layout's peer computes (its parameters and FLOPs are counted on it)."""
    return fla_equivalent(cfg) if peer_kind(layout) == "fla" else peer_equivalent(cfg)


def peer_config_fields(layout: str, measured: ModelConfig, *, seq_len: int) -> dict[str, Any]:
    """The peer's own config fields for `peer_config(layout, cfg)`."""
    return fla_settings(measured, seq_len=seq_len) if peer_kind(layout) == "fla" else peer_settings(measured)


@functools.cache
def _peer_model_cls() -> tuple[type, type] | str:
    """(MambaConfig, MambaLMHeadModel), or why mamba-ssm cannot be imported."""
    try:
        from mamba_ssm.models.config_mamba import MambaConfig
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    except (ImportError, OSError) as exc:
        return f"mamba-ssm not importable: {exc}"
    return MambaConfig, MambaLMHeadModel


@functools.cache
def _fla_model_cls() -> tuple[type, type] | str:
    """(GatedDeltaNetConfig, GatedDeltaNetForCausalLM) of fla, or why fla cannot be imported."""
    try:
        from fla.models import GatedDeltaNetConfig, GatedDeltaNetForCausalLM
    except (ImportError, OSError, RuntimeError) as exc:  # RuntimeError: fla's import-time device checks
        return f"fla not importable: {exc}"
    return GatedDeltaNetConfig, GatedDeltaNetForCausalLM


def _peer_classes(kind: str) -> tuple[type, type] | str:
    return _fla_model_cls() if kind == "fla" else _peer_model_cls()


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
    float8 = prepare(module, TrainerConfig(compile=variant.compile, loss=variant.loss, float8=variant.float8,
                                           device=str(device)), device)
    optimizer = torch.optim.AdamW(param_groups(module, 0.1), lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
    inputs, targets = _batch(cfg.vocab_size, s, device)

    def step() -> None:
        with _autocast(device):
            loss_sum, _, counted = module(inputs, targets)
        (loss_sum / counted).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    impl = {**module.model.impl_report(), "loss": module.loss_impl, "compile": variant.compile,
            "float8": float8.describe() if float8 else "off"}
    return step, module, impl


def float8_refusal(variant: Variant | None, device: torch.device) -> str | None:
    """Why this machine cannot run the variant's float8 (the trainer's own one-line refusal); None if it can."""
    if variant is None or variant.float8 is None:
        return None
    try:
        preflight(TrainerConfig(float8=variant.float8, device=str(device)), device)
    except ConfigError as exc:
        return str(exc)
    return None


def build_peer(equivalent: ModelConfig, s: Settings, device: torch.device, kind: str = "mamba-ssm"):
    """(one training step, the model, what ran) for the peer's side, `kind` "mamba-ssm" or "fla"."""
    return (_build_fla_peer if kind == "fla" else _build_mamba_peer)(equivalent, s, device)


def _peer_step(model: torch.nn.Module, vocab: int, s: Settings, device: torch.device) -> Callable[[], None]:
    """A peer's training step: its logits, the cross-entropy over them in fp32, the fused AdamW step."""
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.95), fused=True)
    inputs, targets = _batch(vocab, s, device)

    def step() -> None:
        with _autocast(device):
            logits = model(inputs).logits  # (B, T, V)
        F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _build_mamba_peer(equivalent: ModelConfig, s: Settings, device: torch.device):
    """mamba-ssm's LM over the full logits."""
    classes = _peer_model_cls()
    if isinstance(classes, str):
        raise RuntimeError(classes)
    MambaConfig, MambaLMHeadModel = classes
    model = MambaLMHeadModel(MambaConfig(**peer_settings(equivalent)), device=device, dtype=torch.float32)
    impl = {"attention": "sdpa, default backend, no rotary", "mamba2": "fused conv1d + SSD scan (mem-eff path)",
            "loss": "full"}
    return _peer_step(model, equivalent.vocab_size, s, device), model, impl


def sdpa_as_flash_attn(backend: str) -> Callable[..., torch.Tensor]:
    """A stand-in for flash-attn's `flash_attn_func(q, k, v, causal=True, window_size=(-1, -1))`, the
    one call fla's Attention makes without padding masks: SDPA with composer's attention backend."""

    def flash_attn_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                        window_size: tuple[int, int] = (-1, -1), **unsupported: Any) -> torch.Tensor:
        if not causal or tuple(window_size) != (-1, -1) or unsupported:
            raise NotImplementedError(f"the SDPA stand-in is causal and unwindowed only; got causal={causal}, "
                                      f"window_size={window_size}, {sorted(unsupported)}")
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, hd), K/V with Hkv heads
        gqa = k.shape[1] != q.shape[1]
        if gqa and backend in ("efficient", "cudnn"):  # as composer's attention: these backends lack native GQA
            k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
            gqa = False
        if backend == "auto":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            chosen = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
                      "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]
            with sdpa_kernel([chosen]):
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        return y.transpose(1, 2)  # (B, T, H, hd)

    flash_attn_func.composer_stand_in = True
    return flash_attn_func


def _build_fla_peer(equivalent: ModelConfig, s: Settings, device: torch.device):
    """fla's GatedDeltaNetForCausalLM over the full logits; its attention through flash-attn, or, where
    that package is missing, through `sdpa_as_flash_attn` with composer's attention backend."""
    classes = _fla_model_cls()
    if isinstance(classes, str):
        raise RuntimeError(classes)
    GatedDeltaNetConfig, GatedDeltaNetForCausalLM = classes
    import fla.layers.attn as fla_attn

    attention = "flash-attn (fla's own call)"
    if getattr(fla_attn, "flash_attn_func", None) is None or getattr(fla_attn.flash_attn_func, "composer_stand_in", False):
        fla_attn.flash_attn_func = sdpa_as_flash_attn(s.attention_backend)
        attention = f"sdpa:{s.attention_backend} at fla's flash_attn_func (no flash-attn package), fla's rotary"
    with device:
        model = GatedDeltaNetForCausalLM(GatedDeltaNetConfig(**fla_settings(equivalent, seq_len=s.seq_len)))
    model.to(device=device, dtype=torch.float32).train()
    impl = {"attention": attention, "gdn": "fla GatedDeltaNet layer (chunk mode, Triton)",
            "norm": "fla fused add+RMSNorm", "mlp": "fla fused SwiGLU", "loss": "full"}
    return _peer_step(model, equivalent.vocab_size, s, device), model, impl


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


def kernel_group(name: str) -> str:
    """The `KERNEL_GROUPS` group of a kernel (or op) name; "other" where none matches."""
    return next((g for g, pattern in KERNEL_GROUPS.items() if re.search(pattern, name, re.IGNORECASE)), "other")


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
        group = kernel_group(name)
        groups[group] = groups.get(group, 0.0) + t / total
        by_name[name] = by_name.get(name, 0.0) + t
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:10]
    return {"device_ms": round(total / 1e3, 2), "shares": {g: round(v, 4) for g, v in sorted(groups.items())},
            "top": [{"kernel": name[:120], "ms": round(t / 1e3, 3)} for name, t in top]}


def run_job(job: Job, s: Settings, device: torch.device) -> dict[str, Any]:
    """Build and time one model: the record of the result."""
    cfg = layout_config(job.layout, smoke=s.smoke, attention_backend=s.attention_backend, gdn_impl=s.gdn_impl)
    measured = cfg if job.side == "composer" else peer_config(job.layout, cfg)
    record: dict[str, Any] = {"layout": job.layout, "side": job.side, "variant": str(job.variant or ""),
                              "pattern": measured.pattern, "n_layers": measured.n_layers,
                              "n_params_analytic": count_parameters(measured)["n_params"],
                              "train_flops_per_token": train_flops_per_token(measured, seq_len=s.seq_len)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if job.side == "composer":
        step, model, impl = build_composer(cfg, job.variant, s, device)
    else:
        step, model, impl = build_peer(measured, s, device, peer_kind(job.layout))
        record["peer"] = peer_kind(job.layout)
        record["peer_config"] = peer_config_fields(job.layout, measured, seq_len=s.seq_len)
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


def environment(device: torch.device, *, peer_side: bool, peers: tuple[str, ...] = ("mamba-ssm",)) -> dict[str, Any]:
    """The machine and versions; a peer package's only when its peer runs (it may be mid-install
    otherwise); fla's only when one of the layouts has it as its peer."""
    if not peer_side:
        peer = "not imported (no peer side)"
    elif "mamba-ssm" not in peers:
        peer = "not imported (no mamba-ssm peer)"
    else:
        peer = _peer_model_cls()
    if not isinstance(peer, str):
        import mamba_ssm

        peer = mamba_ssm.__version__
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "cuda": torch.version.cuda, "host": os.uname().nodename, "mamba_ssm": peer}
    if "fla" in peers:
        fla = _fla_model_cls() if peer_side else "not imported (no peer side)"
        if not isinstance(fla, str):
            import importlib.metadata

            import triton

            fla = f"{importlib.metadata.version('flash-linear-attention')} (triton {triton.__version__})"
        env["fla"] = fla
    return env


def run(s: Settings, out: Path) -> dict[str, Any]:
    device = torch.device(s.device)
    started = time.monotonic()
    settings = {**asdict(s), "variants": [str(v) for v in s.variants]}
    peers = tuple(sorted({peer_kind(layout) for layout in s.layouts}))
    results: dict[str, Any] = {"environment": environment(device, peer_side="peer" in s.sides, peers=peers),
                               "settings": settings, "results": []}
    if any(v.float8 for v in s.variants):
        results["environment"]["torchao"] = torchao_version() or "not installed"
    for job in plan(s):
        record: dict[str, Any] = {"layout": job.layout, "side": job.side, "variant": str(job.variant or "")}
        if s.budget_s is not None and time.monotonic() - started > s.budget_s:
            record["error"] = f"skipped: past the time budget of {s.budget_s:.0f} s"
        elif job.side == "peer" and (isinstance(reason := _peer_classes(peer_kind(job.layout)), str)
                                     or device.type != "cuda"):
            record["error"] = f"skipped: {reason if isinstance(reason, str) else 'the peer runs on CUDA only'}"
        elif job.side == "composer" and (refusal := float8_refusal(job.variant, device)):
            record["error"] = f"skipped: {refusal}"
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


def _side(r: dict[str, Any]) -> str:
    """The side as shown: "peer:fla" for fla's peer, "peer" for mamba-ssm's (as before fla's came)."""
    kind = peer_kind(r["layout"]) if r["layout"] in LAYOUTS else "mamba-ssm"
    return f"peer:{kind}" if r["side"] == "peer" and kind != "mamba-ssm" else r["side"]


def _one_line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['layout']:>14} {_side(r):>8} {r['variant']:>15}  {r['error']}"
    return (f"{r['layout']:>14} {_side(r):>8} {r['variant']:>15}  {r['n_params'] / 1e6:7.1f}M params  "
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
        name = (r["layout"], _side(r), r["variant"])
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
        lines += [_row(r["layout"], _side(r), r["variant"], *(_pct(r["profile"]["shares"].get(g, 0.0)) for g in groups))
                  for r in profiled]
    env, st = results["environment"], results["settings"]
    fla = f", fla: {env['fla']}" if "fla" in env else ""
    fla += f", torchao: {env['torchao']}" if "torchao" in env else ""
    lines += ["", f"{env['device']}, torch {env['torch']}, mamba-ssm: {env['mamba_ssm']}{fla}; batch {st['batch']} × "
                  f"{st['seq_len']} tokens, median of {st['steps']} steps after {st['warmup']} warm-up"]
    return "\n".join(lines)


def settings_from_args(argv: list[str] | None = None) -> tuple[Settings, Path] | list[Path]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layouts", default="all", help=f"comma-separated, or all: {', '.join(LAYOUTS)}")
    p.add_argument("--sides", default="composer,peer")
    p.add_argument("--variants", default="eager:chunked",
                   help="composer's, comma-separated: eager|compile:chunked|full[:rowwise|tensorwise] (float8); "
                        "the first runs first for all layouts")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--attention-backend", default=None, help="composer's; default cudnn on CUDA, auto elsewhere")
    p.add_argument("--gdn-impl", default=None, choices=("auto", "torch", "kernels"),
                   help="composer's Gated DeltaNet; default kernels on CUDA (fla, as the peer runs), auto elsewhere")
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
        gdn_impl=a.gdn_impl or ("kernels" if device == "cuda" else "auto"),
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
