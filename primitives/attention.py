"""Causal grouped-query self-attention `*`: the spec (config and counts).

The module is in primitives/nn/attention.py; this file imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from primitives.registry import register

SDPA_BACKENDS = ("math", "flash", "efficient", "cudnn")
BACKENDS = ("auto", *SDPA_BACKENDS, "flash_attn")


@dataclass(frozen=True, kw_only=True)
class AttentionConfig:
    n_heads: int = 4
    n_kv_heads: int | None = None  # grouped-query attention; None: as many as n_heads (MHA)
    head_dim: int | None = None  # None: d_model // n_heads
    rope_theta: float | None = 10_000.0  # None: no positional encoding (NoPE)
    window: int | None = None  # sliding window: a query sees itself and window-1 earlier tokens
    qk_norm: bool = False  # RMSNorm on queries and keys per head (stabilises large learning rates)
    backend: str = "auto"  # auto (SDPA picks) | math | flash | efficient | cudnn | flash_attn (the package)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        kv = self.kv_heads
        if self.n_heads < 1 or kv < 1 or self.n_heads % kv:
            raise ValueError(f"n_heads ({self.n_heads}) must be a positive multiple of n_kv_heads ({kv})")
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be positive or null, got {self.window}")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    def head_size(self, d_model: int) -> int:
        if self.head_dim is not None:
            return self.head_dim
        if d_model % self.n_heads:
            raise ValueError(f"d_model ({d_model}) is not divisible by n_heads ({self.n_heads}); set head_dim")
        return d_model // self.n_heads

    def n_params(self, d_model: int) -> int:
        hd = self.head_size(d_model)
        qkv = d_model * (self.n_heads + 2 * self.kv_heads) * hd
        out = self.n_heads * hd * d_model
        return qkv + out + (2 * hd if self.qk_norm else 0)


register(letter="*", name="attention", config_cls=AttentionConfig, module="primitives.nn.attention:Attention", mixes_sequence=True)
