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
        if self.head_dim is None and d_model % self.n_heads:
            raise ValueError(f"d_model ({d_model}) is not divisible by n_heads ({self.n_heads}); set head_dim")
        hd = self.head_dim if self.head_dim is not None else d_model // self.n_heads
        if self.rope_theta is not None and hd % 2:  # rotary embeddings turn pairs of channels
            size = f"head_dim {hd}" if self.head_dim is not None else f"head size {hd} (d_model {d_model} / {self.n_heads} heads)"
            raise ValueError(f"{size} must be even for rotary embeddings; change n_heads or head_dim, or set rope_theta: null")
        return hd

    def n_params(self, d_model: int) -> int:
        hd = self.head_size(d_model)
        qkv = d_model * (self.n_heads + 2 * self.kv_heads) * hd
        out = self.n_heads * hd * d_model
        return qkv + out + (2 * hd if self.qk_norm else 0)

    # Accounting (torch-free; scaling/accounting.py sums these over a pattern). Matmul FLOPs only,
    # 2 per multiply-add; RoPE, softmax and norms are elementwise and left out, as FlopCounterMode does.

    def attended_keys(self, length: int) -> int:
        """Keys one query attends at this length: all of them, or the sliding window."""
        return length if self.window is None else min(length, self.window)

    def forward_flops_per_token(self, d_model: int, *, seq_len: int) -> int:
        """Forward FLOPs per token when training on sequences of seq_len: 2 × the projection weights,
        plus QKᵀ and AV, 2 · 2 · n_heads · head_dim · L_eff with L_eff = min(seq_len, window).

        The full L_eff square is counted, not halved for causality (PaLM and Chinchilla count it so;
        dense-mask kernels compute it). Training is 3 × forward (backward = 2 × forward)."""
        hd = self.head_size(d_model)
        weights = self.n_params(d_model) - (2 * hd if self.qk_norm else 0)
        return 2 * weights + 4 * self.n_heads * hd * self.attended_keys(seq_len)

    def inference_flops_per_token(self, d_model: int, *, context: int) -> int:
        """FLOPs to decode one token that attends `context` keys (itself included), or the window."""
        hd = self.head_size(d_model)
        weights = self.n_params(d_model) - (2 * hd if self.qk_norm else 0)
        return 2 * weights + 4 * self.n_heads * hd * self.attended_keys(context)

    def state_bytes(self, d_model: int, *, context: int, dtype_bytes: int) -> int:
        """KV cache of one sequence: 2 · n_kv_heads · head_dim · min(context, window) · dtype_bytes.

        With a window the module's cache is a ring of `window` entries (primitives/nn/attention.py)."""
        return 2 * self.kv_heads * self.head_size(d_model) * self.attended_keys(context) * dtype_bytes


register(letter="*", name="attention", config_cls=AttentionConfig, module="primitives.nn.attention:Attention", mixes_sequence=True)
