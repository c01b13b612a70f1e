"""Mamba-2 SSD mixer `M` (Dao & Gu 2024, arXiv 2405.21060): the spec (config and counts).

The module, with its pure-PyTorch chunked scan and the optional mamba-ssm kernels, is in
primitives/nn/mamba2.py; this file imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from composer.errors import ConfigError
from primitives.registry import register

_IMPLS = ("auto", "torch", "kernels")


@dataclass(frozen=True, kw_only=True)
class Mamba2Config:
    d_state: int = 64  # N: state size per head channel; the memory of the recurrence
    head_dim: int = 32  # P: channels per head; heads = expand * d_model / head_dim
    expand: int = 2  # d_inner = expand * d_model, as in Mamba
    d_conv: int = 4  # causal conv width (the kernel supports 2..4)
    n_groups: int = 1  # B and C are shared by the heads of a group (like GQA's KV groups)
    chunk_size: int = 64  # SSD block length: quadratic work inside, recurrence across
    dt_min: float = 0.001  # initial step sizes are log-uniform in [dt_min, dt_max]
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4  # lower clamp of the initial step size
    a_init_min: float = 1.0  # -A is initialised uniform in [a_init_min, a_init_max]
    a_init_max: float = 16.0
    impl: str = "auto"  # "torch", "kernels" (mamba-ssm, fail if absent), "auto" (kernels on CUDA if installed)

    def __post_init__(self) -> None:
        for name in ("d_state", "head_dim", "expand", "d_conv", "n_groups", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        check_decay_init(self)

    def d_inner(self, d_model: int) -> int:
        return self.expand * d_model

    def n_heads(self, d_model: int) -> int:
        d_inner = self.d_inner(d_model)
        if d_inner % self.head_dim:
            raise ConfigError(
                f"mamba2: d_inner = expand * d_model = {self.expand} * {d_model} = {d_inner} "
                f"is not divisible by head_dim = {self.head_dim}"
            )
        n_heads = d_inner // self.head_dim
        if n_heads % self.n_groups:
            raise ConfigError(f"mamba2: {n_heads} heads are not divisible into n_groups = {self.n_groups}")
        return n_heads

    def conv_dim(self, d_model: int) -> int:
        return self.d_inner(d_model) + 2 * self.n_groups * self.d_state  # the conv runs over x, B and C

    def n_params(self, d_model: int) -> int:
        d_inner, n_heads, conv_dim = self.d_inner(d_model), self.n_heads(d_model), self.conv_dim(d_model)
        in_proj = d_model * (d_inner + conv_dim + n_heads)  # z, xBC, dt; no bias
        conv = conv_dim * (self.d_conv + 1)  # depthwise weights and bias
        per_head = 3 * n_heads  # A_log, dt_bias, D
        return in_proj + conv + per_head + d_inner + d_inner * d_model  # + norm weight, out_proj

    # Accounting (torch-free; scaling/accounting.py sums these over a pattern). Matmul and conv FLOPs
    # only, 2 per multiply-add; exp, softplus, gating and the norm are elementwise and left out.

    def _projection_flops_per_token(self, d_model: int) -> int:
        d_inner, n_heads, conv_dim = self.d_inner(d_model), self.n_heads(d_model), self.conv_dim(d_model)
        in_out = 2 * d_model * (d_inner + conv_dim + n_heads) + 2 * d_inner * d_model  # in_proj, out_proj
        return in_out + 2 * conv_dim * self.d_conv  # + the depthwise causal conv

    def forward_flops_per_sequence(self, d_model: int, *, seq_len: int) -> int:
        """Forward FLOPs of one training sequence through the chunked SSD scan of
        primitives/nn/mamba2.py (`ssd_chunked`), einsum by einsum. The scan runs in chunks of
        Lc = min(chunk_size, seq_len) over the sequence padded to c · Lc, c = ceil(seq_len / Lc):
          within-chunk scores C·Bᵀ      2 · G · Lc · N  per padded token (once per group of heads)
          within-chunk outputs          2 · H · Lc · P  per padded token
          chunk states (B ⊗ x summed)   2 · H · P · N   per padded token
        and with more than one chunk (one chunk starts from nothing and its state is the final one)
          state passing across chunks   2 · H · (c + 1)² · P · N  per sequence
          state readout C · state       2 · H · P · N   per padded token
        plus the projections and the conv (2 · conv_dim · d_conv) per real token."""
        n_heads, p, n = self.n_heads(d_model), self.head_dim, self.d_state
        lc = min(self.chunk_size, seq_len)
        chunks = -(-seq_len // lc)
        padded = chunks * lc
        scan = padded * 2 * (self.n_groups * lc * n + n_heads * lc * p + n_heads * p * n)
        if chunks > 1:
            scan += 2 * n_heads * (chunks + 1) ** 2 * p * n + padded * 2 * n_heads * p * n
        return seq_len * self._projection_flops_per_token(d_model) + scan

    def forward_flops_per_token(self, d_model: int, *, seq_len: int) -> int:
        """forward_flops_per_sequence / seq_len, rounded to the nearest integer (exact when the
        chunk count divides evenly). Grows with seq_len only through the chunk terms.
        Training is 3 × forward."""
        return round(self.forward_flops_per_sequence(d_model, seq_len=seq_len) / seq_len)

    def inference_flops_per_token(self, d_model: int, *, context: int) -> int:
        """The recurrent step, constant in context: projections and conv, the state update
        (dt · x ⊗ B added to the decayed state, one multiply-add per element, 2 · H · P · N) and the
        readout C · state (2 · H · P · N)."""
        state = self.n_heads(d_model) * self.head_dim * self.d_state
        return self._projection_flops_per_token(d_model) + 4 * state

    def state_bytes(self, d_model: int, *, context: int, dtype_bytes: int) -> int:
        """Constant in context: the conv tail conv_dim · (d_conv − 1) at dtype_bytes, and the SSM state
        n_heads · head_dim · d_state kept at float32 or wider (max(dtype_bytes, 4)), as the module
        keeps it: decays compound over thousands of steps."""
        conv = self.conv_dim(d_model) * (self.d_conv - 1) * dtype_bytes
        ssm = self.n_heads(d_model) * self.head_dim * self.d_state * max(dtype_bytes, 4)
        return conv + ssm


register(letter="M", name="mamba2", config_cls=Mamba2Config, module="primitives.nn.mamba2:Mamba2", mixes_sequence=True)


def check_decay_init(cfg) -> None:
    """The init ranges and `impl` shared by the decaying-state mixers (Mamba-2, Gated DeltaNet):
    dt log-uniform in [dt_min, dt_max] clamped at dt_init_floor, -A uniform in [a_init_min, a_init_max]."""
    if not 0 < cfg.dt_min <= cfg.dt_max:
        raise ValueError(f"dt_min and dt_max need 0 < dt_min <= dt_max, got {cfg.dt_min}, {cfg.dt_max}")
    if cfg.dt_init_floor < 0:
        raise ValueError(f"dt_init_floor must be >= 0, got {cfg.dt_init_floor}")
    if not 0 < cfg.a_init_min <= cfg.a_init_max:
        raise ValueError(f"a_init_min and a_init_max need 0 < a_init_min <= a_init_max, "
                         f"got {cfg.a_init_min}, {cfg.a_init_max}")
    if cfg.impl not in _IMPLS:
        raise ValueError(f"impl must be one of {', '.join(_IMPLS)}, got {cfg.impl!r}")
