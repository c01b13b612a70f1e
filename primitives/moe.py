"""Mixture-of-experts MLP `E` (Megatron-LM's letter): the spec (config and counts).

Each token picks `top_k` of `n_experts` SwiGLU experts by a learned router (token choice), and
its output is the gate-weighted sum of theirs, plus an always-on shared expert when asked for
(DeepSeekMoE, arXiv 2401.06066). Dropless: no capacity factor, no token is ever dropped.
Balancing: the Switch/GShard auxiliary loss (arXiv 2101.03961), added to the training loss by the
trainer, and/or DeepSeek-V3's loss-free router bias (arXiv 2412.19437), moved after each step
towards the under-loaded experts.

Parameters: `n_params` is the total (every expert), `n_active_params` what one token runs
through (router, top_k experts, the shared expert); FLOPs per token use the active ones.
The module, with its loop-over-experts reference and the grouped-GEMM fast path, is in
primitives/nn/moe.py; this file imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from primitives.registry import register

_IMPLS = ("auto", "torch", "kernels")
_SCORES = ("softmax", "sigmoid")


@dataclass(frozen=True, kw_only=True)
class MoEConfig:
    n_experts: int = 8  # routed experts
    top_k: int = 2  # experts per token
    hidden: int | None = None  # each expert's SwiGLU hidden size; None: 4 × d_model / top_k, so
    # the routed experts a token runs through hold as many weights as the dense `-` MLP (4 × d_model):
    # a compute-matched swap of `-` for `E` (the fine-grained experts of DeepSeekMoE and OLMoE)
    shared_experts: int = 0  # always-on experts of the same hidden (DeepSeek-V3: 1), run as one SwiGLU
    score: str = "softmax"  # router gates: softmax (Mixtral, OLMoE, Qwen3) | sigmoid (DeepSeek-V3)
    normalize_top_k: bool = True  # renormalise the k chosen gates to sum 1 (Qwen3's norm_topk_prob, DeepSeek-V3)
    aux_loss_coeff: float = 0.01  # Switch load-balancing loss coefficient (Switch, OLMoE: 0.01); 0: off
    z_loss_coeff: float = 0.0  # router z-loss, mean logsumexp(logits)² (ST-MoE; OLMoE: 0.001); 0: off
    bias_update_rate: float = 0.0  # DeepSeek-V3's γ: the routing bias moves by ±γ per step (V3: 0.001); 0: off
    impl: str = "auto"  # "torch" (loop over experts), "kernels" (grouped GEMM), "auto" (grouped GEMM on CUDA in bf16)

    def __post_init__(self) -> None:
        for name in ("n_experts", "top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.top_k > self.n_experts:
            raise ValueError(f"top_k ({self.top_k}) must be at most n_experts ({self.n_experts})")
        if self.hidden is not None and self.hidden < 1:
            raise ValueError(f"hidden must be positive, got {self.hidden}")
        if not isinstance(self.shared_experts, int) or self.shared_experts < 0:
            raise ValueError(f"shared_experts must be an integer >= 0, got {self.shared_experts!r}")
        for name in ("aux_loss_coeff", "z_loss_coeff", "bias_update_rate"):
            if not getattr(self, name) >= 0:  # NaN fails too
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.score not in _SCORES:
            raise ValueError(f"score must be one of {', '.join(_SCORES)}, got {self.score!r}")
        if self.impl not in _IMPLS:
            raise ValueError(f"impl must be one of {', '.join(_IMPLS)}, got {self.impl!r}")

    def hidden_size(self, d_model: int) -> int:
        return self.hidden or max(1, 4 * d_model // self.top_k)

    def expert_params(self, d_model: int) -> int:
        return 3 * d_model * self.hidden_size(d_model)  # gate, up, down; no biases

    def n_params(self, d_model: int) -> int:
        """Total: router, every routed expert, the shared experts. The routing bias is a buffer."""
        router = d_model * self.n_experts
        return router + (self.n_experts + self.shared_experts) * self.expert_params(d_model)

    def n_active_params(self, d_model: int) -> int:
        """What one token runs through: the router, its top_k experts and the shared experts."""
        router = d_model * self.n_experts
        return router + (self.top_k + self.shared_experts) * self.expert_params(d_model)

    # Accounting (torch-free; scaling/accounting.py sums these over a pattern).

    def forward_flops_per_token(self, d_model: int, *, seq_len: int) -> int:
        """2 × the active weights: the router's logits and the k + shared experts' matmuls (dropless,
        so every token costs exactly this). Gating, sorting and the weighted sum are elementwise.
        Training is 3 × forward."""
        return 2 * self.n_active_params(d_model)

    def inference_flops_per_token(self, d_model: int, *, context: int) -> int:
        """The same as a training token: position-wise."""
        return 2 * self.n_active_params(d_model)

    def state_bytes(self, d_model: int, *, context: int, dtype_bytes: int) -> int:
        """No inference state: position-wise."""
        return 0


register(letter="E", name="moe", config_cls=MoEConfig, module="primitives.nn.moe:MoE", mixes_sequence=False)
