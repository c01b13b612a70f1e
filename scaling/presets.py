"""Target sizes: the reference Llama widths an extrapolated pattern is built at (no torch).

One small factory per size in `PRESETS` (torchtitan's style). 350M, 1B and 3B are the Llama 3.2
style rows of composer-method.md (128K vocabulary, tied embeddings, RoPE θ 500,000); 8B is Llama
3.1 8B (untied). The Mamba-2 fields are the widths a `M` layer takes at that size (Nemotron-H and
mamba_ssm's defaults: state 128, head dim 64, expand 2, chunk 256). The MoE fields are the experts
an `E` layer takes: fine-grained experts whose top_k together hold the preset's MLP hidden
(top_k × moe_hidden = mlp_hidden, so a token's active weights equal the dense `-` layer's), as
OLMoE-1B-7B does at 1B (64 experts, top 8, hidden 1024 at d_model 2048, arXiv 2409.02060) and
Qwen3-30B-A3B / Qwen3-235B-A22B do with 128 experts, top 8 at the larger widths.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from composer.config import ModelConfig
from composer.errors import ConfigError
from composer.pattern import parse_pattern
from primitives.attention import AttentionConfig
from primitives.gdn import GatedDeltaNetConfig
from primitives.mamba2 import Mamba2Config
from primitives.mlp import MLPConfig
from primitives.moe import MoEConfig
from primitives.swa import SlidingWindowConfig
from scaling.accounting import count_parameters

LLAMA3_VOCAB = 128_256


@dataclass(frozen=True, kw_only=True)
class Preset:
    name: str
    d_model: int
    n_blocks: int  # blocks of the reference Llama model; its pattern is "*-" × n_blocks
    mlp_hidden: int  # SwiGLU hidden size
    n_heads: int
    n_kv_heads: int  # grouped-query attention
    head_dim: int
    vocab_size: int = LLAMA3_VOCAB
    tie_embeddings: bool = True
    rope_theta: float = 500_000.0
    mamba_d_state: int = 128
    mamba_head_dim: int = 64
    mamba_expand: int = 2
    mamba_chunk_size: int = 256
    gdn_head_dim: int = 128  # 'G' layers: Qwen3-Next's heads (d_model / 128 query/key heads, twice as many value heads)
    swa_window: int = 1024  # 'W' layers: Gemma 3's local window (its global layers see 128K)
    moe_n_experts: int = 64  # 'E' layers: routed experts (OLMoE: 64)
    moe_top_k: int = 8  # experts per token (OLMoE, Qwen3: 8)
    moe_hidden: int = 1024  # each expert's SwiGLU hidden: mlp_hidden / moe_top_k

    @property
    def n_layers(self) -> int:
        return 2 * self.n_blocks  # attention and MLP are separate layers here

    def primitive_configs(self) -> dict[str, object]:
        """Primitive name -> its config at this width; primitives not named keep their defaults."""
        return {
            "attention": AttentionConfig(
                n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, head_dim=self.head_dim, rope_theta=self.rope_theta
            ),
            "swa": SlidingWindowConfig(n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, head_dim=self.head_dim,
                                       rope_theta=self.rope_theta, window=self.swa_window),
            "mlp": MLPConfig(hidden=self.mlp_hidden),
            "moe": MoEConfig(n_experts=self.moe_n_experts, top_k=self.moe_top_k, hidden=self.moe_hidden,
                             z_loss_coeff=0.001),  # OLMoE's router z-loss beside the default 0.01 balancing loss
            "mamba2": Mamba2Config(
                d_state=self.mamba_d_state,
                head_dim=self.mamba_head_dim,
                expand=self.mamba_expand,
                chunk_size=self.mamba_chunk_size,
            ),
            "gdn": GatedDeltaNetConfig(head_dim=self.gdn_head_dim),
        }


def llama_350m() -> Preset:  # the sibling paper's 350M (arXiv 2510.04800)
    return Preset(name="350m", d_model=1536, n_blocks=14, mlp_hidden=4096, n_heads=24, n_kv_heads=8, head_dim=64,
                  moe_hidden=512)  # OLMoE's 64 experts, top 8


def llama_1b() -> Preset:  # Llama 3.2 1B
    return Preset(name="1b", d_model=2048, n_blocks=16, mlp_hidden=8192, n_heads=32, n_kv_heads=8, head_dim=64,
                  moe_hidden=1024)  # OLMoE-1B-7B's experts exactly


def llama_3b() -> Preset:  # Llama 3.2 3B
    return Preset(name="3b", d_model=3072, n_blocks=28, mlp_hidden=8192, n_heads=24, n_kv_heads=8, head_dim=128,
                  moe_n_experts=128, moe_hidden=1024)  # Qwen3-30B-A3B's 128 experts, top 8


def llama_8b() -> Preset:  # Llama 3.1 8B: untied head
    return Preset(
        name="8b", d_model=4096, n_blocks=32, mlp_hidden=14336, n_heads=32, n_kv_heads=8, head_dim=128,
        tie_embeddings=False, moe_n_experts=128, moe_hidden=1792,  # Qwen3-235B-A22B's 128 experts, top 8 (its d_model)
    )


PRESETS: dict[str, Callable[[], Preset]] = {"350m": llama_350m, "1b": llama_1b, "3b": llama_3b, "8b": llama_8b}


def get_preset(preset: str | Preset) -> Preset:
    """A Preset by name (case-insensitive, '1B' == '1b'), or the Preset itself."""
    if isinstance(preset, Preset):
        return preset
    factory = PRESETS.get(str(preset).lower())
    if factory is None:
        raise ConfigError(f"unknown preset {preset!r} (valid presets: {', '.join(PRESETS)})")
    return factory()


def reference_pattern(preset: str | Preset) -> str:
    """The Llama layout at this size: "*-" × n_blocks."""
    return "*-" * get_preset(preset).n_blocks


def preset_model_config(preset: str | Preset, pattern: str) -> ModelConfig:
    """The model of `pattern` at the preset's width, vocabulary and primitive settings."""
    p = get_preset(preset)
    return ModelConfig(
        pattern=parse_pattern(pattern),
        vocab_size=p.vocab_size,
        d_model=p.d_model,
        tie_embeddings=p.tie_embeddings,
        primitives=p.primitive_configs(),
    )


def sized_preset(n_non_embedding_params: float) -> Preset:
    """A Llama-style reference of about `n_non_embedding_params` (sizes between presets, for
    isoFLOP grids): the widths of the preset nearest in log non-embedding size, with as many `*-`
    blocks as fit (at least one). Non-embedding, like the extrapolator's s: at a 128K vocabulary
    the embeddings are 0.2–0.5B parameters whatever the depth."""
    if not n_non_embedding_params > 0:
        raise ConfigError(f"n_non_embedding_params must be positive, got {n_non_embedding_params!r}")

    def size(p: Preset) -> int:
        return count_parameters(preset_model_config(p, reference_pattern(p)))["n_non_embedding_params"]

    base = min((f() for f in PRESETS.values()), key=lambda p: abs(math.log(size(p) / n_non_embedding_params)))
    one_block = size(replace(base, n_blocks=2)) - size(replace(base, n_blocks=1))
    n_blocks = max(1, round((n_non_embedding_params - base.d_model) / one_block))  # d_model: the final norm
    return replace(base, name=f"{base.name}-width-{n_blocks}-blocks", n_blocks=n_blocks)
