"""SwiGLU MLP `-`, the module (its config is primitives/mlp.py)."""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from primitives.mlp import MLPConfig


class MLP(nn.Module):
    def __init__(self, cfg: MLPConfig, *, d_model: int) -> None:
        super().__init__()
        hidden = cfg.hidden_size(d_model)
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)  # gate and up fused into one matmul
        self.out_proj = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor, state: None = None) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # (B, T, H) each
        return self.out_proj(F.silu(gate) * up)  # (B, T, D)

    def allocate_state(self, *, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype) -> None:
        return None  # position-wise: nothing to carry between tokens

    def describe_impl(self, device: torch.device) -> str:
        return "torch"

    def init_weights(self, *, std: float, out_std: float) -> None:
        nn.init.normal_(self.gate_up.weight, std=std)
        nn.init.normal_(self.out_proj.weight, std=out_std)
