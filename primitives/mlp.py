"""SwiGLU MLP `-` (Shazeer 2020, arXiv 2002.05202), as in Llama: the spec (config and counts).

The module is in primitives/nn/mlp.py; this file imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from primitives.registry import register


@dataclass(frozen=True, kw_only=True)
class MLPConfig:
    hidden: int | None = None  # SwiGLU hidden size; None: 4 × d_model (Llama 3.2 1B's ratio)

    def __post_init__(self) -> None:
        if self.hidden is not None and self.hidden < 1:
            raise ValueError(f"hidden must be positive, got {self.hidden}")

    def hidden_size(self, d_model: int) -> int:
        return self.hidden or 4 * d_model

    def n_params(self, d_model: int) -> int:
        return 3 * d_model * self.hidden_size(d_model)  # gate, up, down; no biases

    # Accounting (torch-free; scaling/accounting.py sums these over a pattern).

    def forward_flops_per_token(self, d_model: int, *, seq_len: int) -> int:
        """2 × the weights (gate, up, down); position-wise, so seq_len does not matter.
        Training is 3 × forward."""
        return 2 * self.n_params(d_model)

    def inference_flops_per_token(self, d_model: int, *, context: int) -> int:
        """The same as a training token: an MLP reads no context."""
        return 2 * self.n_params(d_model)

    def state_bytes(self, d_model: int, *, context: int, dtype_bytes: int) -> int:
        """No inference state: position-wise."""
        return 0


register(letter="-", name="mlp", config_cls=MLPConfig, module="primitives.nn.mlp:MLP", mixes_sequence=False)
