"""Gated DeltaNet mixer `G` (Yang, Kautz & Hatamizadeh 2024, arXiv 2412.06464), as Qwen3-Next
uses it: the spec (config and counts).

The module, with its pure-PyTorch chunked form, the step-by-step oracle and the optional `fla`
kernels, is in primitives/nn/gdn.py; this file imports no torch.

Shapes, with H query/key heads of d_k channels and H_v = v_head_ratio · H value heads of
d_v = expand_v · d_k channels: key width K = H · d_k, value width V = H_v · d_v, and each head
carries a d_k × d_v state.
"""

from __future__ import annotations

from dataclasses import dataclass

from composer.errors import ConfigError
from primitives.mamba2 import check_decay_init
from primitives.registry import register


@dataclass(frozen=True, kw_only=True)
class GatedDeltaNetConfig:
    head_dim: int = 32  # d_k: query/key channels per head (Qwen3-Next: 128)
    n_heads: int | None = None  # query/key heads H; null: d_model / head_dim (key width = d_model, as Qwen3-Next)
    v_head_ratio: int = 2  # value heads per query/key head (Qwen3-Next's 32 value over 16 key heads: 2)
    expand_v: int = 1  # d_v = expand_v * d_k (Qwen3-Next: 1; fla's GatedDeltaNet: 2 with one value head per key head)
    d_conv: int = 4  # short causal conv over q, k and v
    chunk_size: int = 64  # block length of the torch path's chunked form (fla's kernels fix their own, 64)
    dt_min: float = 0.001  # initial step sizes are log-uniform in [dt_min, dt_max], as Mamba-2
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4  # lower clamp of the initial step size
    a_init_min: float = 1.0  # -A is initialised uniform in [a_init_min, a_init_max]; decay = exp(A · dt)
    a_init_max: float = 16.0
    impl: str = "auto"  # "torch", "kernels" (fla, fail if absent or unsafe), "auto" (fla on CUDA when installed and safe)

    def __post_init__(self) -> None:
        for name in ("head_dim", "v_head_ratio", "expand_v", "d_conv", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_heads is not None and (
            not isinstance(self.n_heads, int) or isinstance(self.n_heads, bool) or self.n_heads < 1
        ):
            raise ValueError(f"n_heads must be a positive integer or null, got {self.n_heads!r}")
        check_decay_init(self)

    def n_qk_heads(self, d_model: int) -> int:
        if self.n_heads is not None:
            return self.n_heads
        if d_model % self.head_dim:
            raise ConfigError(f"gdn: d_model = {d_model} is not divisible by head_dim = {self.head_dim}; set n_heads")
        return d_model // self.head_dim

    def n_v_heads(self, d_model: int) -> int:
        return self.v_head_ratio * self.n_qk_heads(d_model)

    @property
    def head_v_dim(self) -> int:
        return self.expand_v * self.head_dim

    def key_dim(self, d_model: int) -> int:
        return self.n_qk_heads(d_model) * self.head_dim  # K

    def value_dim(self, d_model: int) -> int:
        return self.n_v_heads(d_model) * self.head_v_dim  # V

    def conv_dim(self, d_model: int) -> int:
        return 2 * self.key_dim(d_model) + self.value_dim(d_model)  # the conv runs over q, k and v

    def proj_dim(self, d_model: int) -> int:
        """in_proj's output: q, k, v, the output gate z (V), beta and alpha (one each per value head)."""
        return self.conv_dim(d_model) + self.value_dim(d_model) + 2 * self.n_v_heads(d_model)

    def n_params(self, d_model: int) -> int:
        in_proj = d_model * self.proj_dim(d_model)  # no bias
        conv = self.conv_dim(d_model) * self.d_conv  # depthwise weights, no bias (Qwen3-Next, fla)
        per_head = 2 * self.n_v_heads(d_model)  # A_log, dt_bias
        norm = self.head_v_dim  # the gated RMSNorm's weight, shared by the heads
        return in_proj + conv + per_head + norm + self.value_dim(d_model) * d_model  # + out_proj

    # Accounting (torch-free; scaling/accounting.py sums these over a pattern). Matmul, conv and
    # triangular-solve FLOPs, 2 per multiply-add; the L2 norms, gates, exp and the gated norm are
    # elementwise and left out.

    def _projection_flops_per_token(self, d_model: int) -> int:
        in_out = 2 * d_model * self.proj_dim(d_model) + 2 * self.value_dim(d_model) * d_model  # in_proj, out_proj
        return in_out + 2 * self.conv_dim(d_model) * self.d_conv  # + the depthwise causal conv

    def forward_flops_per_sequence(self, d_model: int, *, seq_len: int) -> int:
        """Forward FLOPs of one training sequence through the chunked form of primitives/nn/gdn.py
        (`gated_delta_rule_chunked`), matmul by matmul. It runs in chunks of Lc = min(chunk_size,
        seq_len) over the sequence padded to c · Lc, per value head (q and k are shared by
        v_head_ratio value heads but the chunk work is per value head):
          within chunks, in parallel:  K·Kᵀ and Q·Kᵀ           2 · 2 · Lc · d_k  per padded token
                                       (I + A)⁻¹ [βV | βΓK]     (Lc − 1) · (d_v + d_k)  (unit lower triangular solve)
          across chunks, one by one:   the entering state read by the keys and the queries, and
                                       the chunk's writes added to it   3 · 2 · d_k · d_v  per padded token
                                       (the first chunk has no entering state to read: 2 · 2 · d_k · d_v
                                       per token of it fewer)
                                       the within-chunk outputs         2 · Lc · d_v  per padded token
        plus the projections and the conv (2 · conv_dim · d_conv) per real token."""
        h, dk, dv = self.n_v_heads(d_model), self.head_dim, self.head_v_dim
        lc = min(self.chunk_size, seq_len)
        padded = -(-seq_len // lc) * lc
        per_padded_token = 4 * lc * dk + (lc - 1) * (dv + dk) + 6 * dk * dv + 2 * lc * dv
        first_chunk_reads = lc * 4 * dk * dv
        return seq_len * self._projection_flops_per_token(d_model) + h * (padded * per_padded_token - first_chunk_reads)

    def forward_flops_per_token(self, d_model: int, *, seq_len: int) -> int:
        """forward_flops_per_sequence / seq_len, rounded to the nearest integer (exact when seq_len is
        a multiple of the chunk length). Training is 3 × forward."""
        return round(self.forward_flops_per_sequence(d_model, seq_len=seq_len) / seq_len)

    def inference_flops_per_token(self, d_model: int, *, context: int) -> int:
        """The recurrent step, constant in context: projections and conv, and per value head the
        state read by the key (Sᵀk), the rank-1 write k ⊗ β(v − Sᵀk) and the readout Sᵀq, one
        multiply-add per state element each (3 · 2 · d_k · d_v)."""
        return self._projection_flops_per_token(d_model) + 6 * self.n_v_heads(d_model) * self.head_dim * self.head_v_dim

    def state_bytes(self, d_model: int, *, context: int, dtype_bytes: int) -> int:
        """Constant in context: the conv tail conv_dim · (d_conv − 1) at dtype_bytes, and the
        recurrent state n_v_heads · d_k · d_v kept at float32 or wider (max(dtype_bytes, 4)), as the
        module keeps it: decays compound over thousands of steps."""
        conv = self.conv_dim(d_model) * (self.d_conv - 1) * dtype_bytes
        recurrent = self.n_v_heads(d_model) * self.head_dim * self.head_v_dim * max(dtype_bytes, 4)
        return conv + recurrent


# 'G' is Megatron-LM's own letter for Gated DeltaNet (Symbols.GDN in megatron/core/models/hybrid/layers/utils.py).
register(letter="G", name="gdn", config_cls=GatedDeltaNetConfig, module="primitives.nn.gdn:GatedDeltaNet", mixes_sequence=True)
