"""What an extrapolation hands to training: a complete `composer-pretrain` config for the grown
model and its plan, and the Megatron-LM arguments of the same model. No torch."""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict
from pathlib import Path

import yaml

from composer.config import ModelConfig
from composer.pattern import to_megatron_args
from scaling.extrapolate import Extrapolation
from scaling.rules import TrainingPlan


def pretrain_config(result: Extrapolation, model_cfg: ModelConfig, plan: TrainingPlan, *, seq_len: int) -> str:
    """A complete, self-contained `composer-pretrain` config (YAML) for the grown model and its plan:
    configs/pretrain.yaml's keys with configs/data/docs.yaml and configs/trainer/pretrain.yaml merged in."""
    configs = Path(__file__).resolve().parent.parent / "configs"
    model_section = asdict(model_cfg)
    model_section.update(model_section.pop("primitives"))  # one section per primitive, as configs/model
    micro = max(1, 2 ** int(math.log2(max(1, 8192 // seq_len))))  # ~8K tokens per GPU per forward
    trainer = yaml.safe_load((configs / "trainer" / "pretrain.yaml").read_text())
    trainer.update(max_tokens=plan.tokens, batch_size=plan.batch_sequences, micro_batch_size=min(micro, plan.batch_sequences),
                   lr=plan.peak_lr, schedule="wsd", warmup=plan.warmup_steps / plan.steps,
                   decay=plan.decay_steps / plan.steps, min_lr_ratio=0.0, eval_every=1000, ckpt_every=1000,
                   compile=True)  # per layer: +20-25% tokens/s on H200 (benchmarks/RESULTS.md, issue 7)
    base = yaml.safe_load((configs / "pretrain.yaml").read_text())
    config = {
        "name": f"{result.target}-{hashlib.sha1(result.pattern.encode()).hexdigest()[:8]}", "seq_len": seq_len,
        "seed": 0, "model": model_section, "data": yaml.safe_load((configs / "data" / "docs.yaml").read_text()),
        "trainer": trainer, **{k: base[k] for k in ("export", "needle", "leaderboard")}, "hydra": base["hydra"],
    }
    header = (f"# {result.pattern!r}: {result.source_pattern!r} grown to {result.target} by {result.method}.\n"
              f"# A complete composer-pretrain config. Point data.path and data.tokenizer at your corpus, then\n"
              f"#   torchrun --nproc_per_node=8 -m composer.apps.pretrain --config-path $PWD/<this folder> --config-name pretrain\n"
              f"# trainer.micro_batch_size is sequences per GPU per forward: lower it if a GPU runs out of memory.\n")
    return header + yaml.safe_dump(config, sort_keys=False)


def megatron_args(model_cfg: ModelConfig, *, seq_len: int) -> list[str]:
    """Megatron-LM arguments for the same model (hybrid models: `pretrain_mamba.py`)."""
    attn, mlp, mamba = (model_cfg.primitives[name] for name in ("attention", "mlp", "mamba2"))
    d = model_cfg.d_model
    args = [*to_megatron_args(model_cfg.pattern), "--hidden-size", str(d), "--ffn-hidden-size", str(mlp.hidden_size(d)),
            "--num-attention-heads", str(attn.n_heads), "--group-query-attention", "--num-query-groups",
            str(attn.kv_heads), "--kv-channels", str(attn.head_size(d)), "--mamba-state-dim", str(mamba.d_state),
            "--mamba-head-dim", str(mamba.head_dim), "--mamba-num-groups", str(mamba.n_groups),
            "--seq-length", str(seq_len), "--max-position-embeddings", str(seq_len), "--normalization", "RMSNorm",
            "--swiglu", "--disable-bias-linear"]
    if attn.rope_theta is not None:
        args += ["--position-embedding-type", "rope", "--rotary-base", f"{attn.rope_theta:g}"]
    if "G" in model_cfg.pattern:  # Gated DeltaNet: Megatron's linear-attention settings
        gdn = model_cfg.primitives["gdn"]
        args += ["--linear-num-key-heads", str(gdn.n_qk_heads(d)), "--linear-key-head-dim", str(gdn.head_dim),
                 "--linear-num-value-heads", str(gdn.n_v_heads(d)), "--linear-value-head-dim", str(gdn.head_v_dim),
                 "--linear-conv-kernel-dim", str(gdn.d_conv)]
    if "E" in model_cfg.pattern:  # MoE: experts, routing and balancing as Megatron's MoE layer takes them
        moe = model_cfg.primitives["moe"]
        args += ["--num-experts", str(moe.n_experts), "--moe-router-topk", str(moe.top_k),
                 "--moe-ffn-hidden-size", str(moe.hidden_size(d)), "--moe-router-score-function", moe.score,
                 "--moe-router-load-balancing-type", "aux_loss" if moe.aux_loss_coeff else "none",
                 "--moe-aux-loss-coeff", f"{moe.aux_loss_coeff:g}", "--moe-z-loss-coeff", f"{moe.z_loss_coeff:g}"]
        if moe.shared_experts:
            args += ["--moe-shared-expert-intermediate-size", str(moe.shared_experts * moe.hidden_size(d))]
        if moe.bias_update_rate:
            args += ["--moe-router-enable-expert-bias", "--moe-router-bias-update-rate", f"{moe.bias_update_rate:g}"]
    if not model_cfg.tie_embeddings:
        args.append("--untie-embeddings-and-output-weights")
    return [f"'{a}'" if any(c in a for c in "*|") else a for a in args]
