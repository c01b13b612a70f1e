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
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"dt_min and dt_max need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        if self.dt_init_floor < 0:
            raise ValueError(f"dt_init_floor must be >= 0, got {self.dt_init_floor}")
        if not 0 < self.a_init_min <= self.a_init_max:
            raise ValueError(
                f"a_init_min and a_init_max need 0 < a_init_min <= a_init_max, "
                f"got {self.a_init_min}, {self.a_init_max}"
            )
        if self.impl not in _IMPLS:
            raise ValueError(f"impl must be one of {', '.join(_IMPLS)}, got {self.impl!r}")

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


register(letter="M", name="mamba2", config_cls=Mamba2Config, module="primitives.nn.mamba2:Mamba2", mixes_sequence=True)
