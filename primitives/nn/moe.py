"""Mixture-of-experts MLP `E`, the module (its config is primitives/moe.py).

    scores = softmax(x Wr) or sigmoid(x Wr)          (N, E), in fp32 whatever the autocast
    chosen = top_k(scores + bias)                     bias: DeepSeek-V3's balancing buffer, for the choice only
    gates  = scores[chosen], renormalised to sum 1 over the k when normalize_top_k (Qwen3, DeepSeek-V3)
    y      = Σ_k gates_k · expert_{chosen_k}(x)  +  shared(x)

Every expert is a SwiGLU; their weights are stacked, `gate_up.weight` (E, 2H, D) and
`out_proj.weight` (E, D, H), plain parameters that FSDP2 shards like any other. Routing is
dropless: every token gets exactly its k experts, however unbalanced the load.

Two implementations of the experts, the same weights and routing (`impl`, reported by describe_impl):
  loop      for each expert, the tokens that chose it: the reference and the tests' oracle. Its
            shapes depend on the routing (host syncs), so no CUDA graph captures it.
  grouped   the (token, slot) assignments sorted by expert into one buffer, each expert's rows a
            contiguous group padded to a multiple of 8 rows, then two grouped GEMMs over all
            experts at once (torch's grouped_mm; CUTLASS in bf16 on Hopper): no Python loop
            over experts, no host sync, static shapes (CUDA graphs, torch.compile). `auto` takes
            it on CUDA in bf16 (autocast or bf16 weights): torch.compile's grouped_mm is bf16 only.

In training each forward leaves its balancing terms for the trainer (composer/engine/auxiliary.py):
`aux_loss`, the Switch loss E · Σ_i f_i · P_i (f_i: the share of assignments routed to expert i,
P_i: its mean router probability; 1 when balanced, E when all go to one expert) times
aux_loss_coeff, plus the router z-loss; and `aux_stats`, f. After each step `after_step` moves the
routing bias by ±bias_update_rate towards the under-loaded experts (DeepSeek-V3).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from composer.errors import ConfigError, KernelUnavailableError
from primitives.mlp import MLPConfig
from primitives.moe import MoEConfig
from primitives.nn.mlp import MLP
from primitives.nn.once import log_impl_once

log = logging.getLogger(__name__)

GROUP_ALIGN = 8  # rows per expert group are padded to this: 16-byte aligned group starts in bf16 (torchtitan's choice)


# torch's grouped GEMM (`F.grouped_mm`, earlier `torch._grouped_mm`), or None when this torch lacks it
GROUPED_MM: Callable | None = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


class ExpertWeights(nn.Module):
    """`n` linear maps in_features -> out_features as one (n, out, in) weight: nn.Linear's layout per expert."""

    def __init__(self, n: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, out_features, in_features))


class MoE(nn.Module):
    """Top-k token-choice mixture of SwiGLU experts: (B, T, d_model) -> (B, T, d_model)."""

    # Out of float8 training (composer/engine/float8.py), submodule -> why; the shared experts convert.
    keep_precision = {"router": "MoE router (routes in fp32)",
                      "gate_up": "MoE experts (stacked weights for grouped GEMMs, not nn.Linear)",
                      "out_proj": "MoE experts (stacked weights for grouped GEMMs, not nn.Linear)"}

    def __init__(self, cfg: MoEConfig, *, d_model: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.d_model, self.hidden = d_model, cfg.hidden_size(d_model)
        if cfg.impl == "kernels" and GROUPED_MM is None:
            raise KernelUnavailableError(f"moe.impl='kernels' needs torch's grouped_mm (torch >= 2.8), "
                                         f"torch {torch.__version__} has none; upgrade torch or use moe.impl=torch")
        if cfg.impl == "kernels" and (d_model % GROUP_ALIGN or self.hidden % GROUP_ALIGN):
            raise ConfigError(f"moe.impl='kernels' needs d_model and the expert hidden size divisible by "
                              f"{GROUP_ALIGN} (grouped_mm's 16-byte strides), got {d_model} and {self.hidden}")
        self.router = nn.Linear(d_model, cfg.n_experts, bias=False)
        self.register_buffer("router_bias", torch.zeros(cfg.n_experts))  # DeepSeek-V3 balancing; moved outside autograd
        self.gate_up = ExpertWeights(cfg.n_experts, d_model, 2 * self.hidden)  # gate and up fused, as in the MLP
        self.out_proj = ExpertWeights(cfg.n_experts, self.hidden, d_model)
        self.shared = MLP(MLPConfig(hidden=cfg.shared_experts * self.hidden), d_model=d_model) if cfg.shared_experts else None
        self.aux_loss: Tensor | None = None  # the last training forward's balancing loss (coefficients applied)
        self.aux_stats: Tensor | None = None  # the last training forward's share of assignments per expert (E,)
        self.init_weights(std=0.02, out_std=0.02)

    def init_weights(self, *, std: float, out_std: float) -> None:
        nn.init.normal_(self.router.weight, std=std)
        nn.init.normal_(self.gate_up.weight, std=std)
        nn.init.normal_(self.out_proj.weight, std=out_std)
        if self.shared is not None:
            self.shared.init_weights(std=std, out_std=out_std)
        with torch.no_grad():
            self.router_bias.zero_()

    def _resolve(self, device: torch.device, dtype: torch.dtype | None = None) -> tuple[bool, str]:
        """(run the grouped GEMM?, a description for the logs and the run folder) for inputs of
        `dtype` (the autocast dtype where autocast is on; None: any, as describe_impl reports it)."""
        if self.cfg.impl == "torch":
            return False, "loop (impl='torch')"
        if self.cfg.impl == "kernels":
            return True, "grouped_mm"  # availability was checked at construction
        if device.type != "cuda":
            return False, f"loop ({device.type})"
        if GROUPED_MM is None:
            return False, f"loop (torch {torch.__version__} has no grouped_mm)"
        if self.d_model % GROUP_ALIGN or self.hidden % GROUP_ALIGN:
            return False, f"loop (grouped_mm needs d_model and hidden divisible by {GROUP_ALIGN})"
        # torch's fast kernel (and its torch.compile support) is bf16 only; other dtypes take the loop
        if dtype is None:
            return True, "grouped_mm (bf16; the loop in other dtypes)"
        if dtype != torch.bfloat16:
            return False, f"loop ({str(dtype).removeprefix('torch.')}: grouped_mm's kernel is bf16)"
        return True, "grouped_mm"

    def describe_impl(self, device: torch.device | str) -> str:
        return self._resolve(torch.device(device))[1]

    def allocate_state(self, *, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype) -> None:
        return None  # position-wise: nothing to carry between tokens

    def forward(self, x: Tensor, state: None = None) -> Tensor:
        grouped, description = self._resolve(x.device, self._compute_dtype(x))
        log_impl_once(self, log, "moe experts run %s", description)
        flat = x.reshape(-1, x.shape[-1])  # (N, D)
        logits, scores, gates, experts = self.route(flat)  # (N, E), (N, E), (N, k), (N, k)
        counts = torch.zeros(self.cfg.n_experts, dtype=torch.long, device=x.device)
        counts.scatter_add_(0, experts.reshape(-1), torch.ones_like(experts.reshape(-1)))  # (E,): no host sync
        y = (self.experts_grouped if grouped else self.experts_loop)(flat, gates, experts, counts)  # (N, D)
        if self.shared is not None:
            y = y + self.shared(flat)
        if self.training and torch.is_grad_enabled():
            self._balance_terms(logits, scores, counts)
        return y.reshape(x.shape)  # (B, T, D)

    def route(self, flat: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """flat (N, D) -> router logits and scores (N, E) in fp32 (or wider), the k gates (N, k) and
        the chosen experts (N, k), in descending order of score + bias."""
        dtype = torch.promote_types(flat.dtype, torch.float32)
        with torch.autocast(flat.device.type, enabled=False):  # routing decisions in fp32: ties matter
            logits = F.linear(flat.to(dtype), self.router.weight.to(dtype))  # (N, E)
        scores = logits.softmax(dim=-1) if self.cfg.score == "softmax" else logits.sigmoid()  # (N, E)
        experts = (scores.detach() + self.router_bias.to(dtype)).topk(self.cfg.top_k, dim=-1).indices  # (N, k)
        gates = scores.gather(-1, experts)  # (N, k): the bias picks, it never weighs
        if self.cfg.normalize_top_k:
            gates = gates / gates.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(dtype).tiny)
        return logits, scores, gates, experts

    def _compute_dtype(self, x: Tensor) -> torch.dtype:
        device_type = x.device.type
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype

    def _expert(self, x: Tensor, e: int) -> Tensor:
        gate, up = F.linear(x, self.gate_up.weight[e]).chunk(2, dim=-1)  # (n, H) each
        return F.linear(F.silu(gate) * up, self.out_proj.weight[e])  # (n, D)

    def experts_loop(self, flat: Tensor, gates: Tensor, experts: Tensor, counts: Tensor) -> Tensor:
        """The reference: for each expert, the tokens that chose it, gate-weighted into the output."""
        y = torch.zeros(flat.shape, dtype=gates.dtype, device=flat.device)  # (N, D), accumulated in fp32
        for e in range(self.cfg.n_experts):
            token, slot = (experts == e).nonzero(as_tuple=True)  # (n,), (n,)
            if len(token):
                y.index_add_(0, token, self._expert(flat[token], e).to(y.dtype) * gates[token, slot, None])
        return y.to(self._compute_dtype(flat))

    def experts_grouped(self, flat: Tensor, gates: Tensor, experts: Tensor, counts: Tensor) -> Tensor:
        """The same by two grouped GEMMs over every expert at once (see the module docstring)."""
        (n, d), k, n_experts = flat.shape, self.cfg.top_k, self.cfg.n_experts
        dtype, grouped_mm = self._compute_dtype(flat), GROUPED_MM
        n_assign = n * k
        rows = n_assign + n_experts * (GROUP_ALIGN - 1)  # room for every group's padding: a static shape
        expert_of = experts.reshape(-1)  # (A,): assignment a is token a // k, slot a % k
        order = expert_of.argsort(stable=True)  # (A,): assignments sorted by expert
        padded = (counts + GROUP_ALIGN - 1) // GROUP_ALIGN * GROUP_ALIGN  # (E,)
        starts = padded.cumsum(0) - padded  # (E,): first row of each group in the buffer
        first = counts.cumsum(0) - counts  # (E,): first position of each expert in `order`
        sorted_expert = expert_of[order]  # (A,)
        row_sorted = starts[sorted_expert] + torch.arange(n_assign, device=flat.device) - first[sorted_expert]
        row = torch.empty_like(order).scatter_(0, order, row_sorted)  # (A,): each assignment's buffer row
        # the last group absorbs the slack rows (zeros in, zeros out), so every row is defined
        offs = torch.cat([padded.cumsum(0)[:-1], padded.new_full((1,), rows)]).to(torch.int32)  # (E,) group ends

        x_rep = flat.to(dtype)[:, None, :].expand(n, k, d).reshape(n_assign, d)  # (A, D): backward sums the k copies
        x_buf = x_rep.new_zeros(rows, d).index_copy(0, row, x_rep)  # (rows, D), grouped by expert
        w_gate_up = self.gate_up.weight.to(dtype).transpose(-2, -1)  # (E, D, 2H), column-major as grouped_mm wants
        w_out = self.out_proj.weight.to(dtype).transpose(-2, -1)  # (E, H, D)
        gate, up = grouped_mm(x_buf, w_gate_up, offs=offs).chunk(2, dim=-1)  # (rows, H) each
        out = grouped_mm(F.silu(gate) * up, w_out, offs=offs)  # (rows, D)
        out = out.index_select(0, row).view(n, k, d)  # (N, k, D), back in assignment order
        return (out.to(gates.dtype) * gates[..., None]).sum(dim=1).to(dtype)  # (N, D)

    def _balance_terms(self, logits: Tensor, scores: Tensor, counts: Tensor) -> None:
        """The training forward's `aux_loss` and `aux_stats` (see the module docstring)."""
        cfg = self.cfg
        load = counts.to(scores.dtype) / counts.sum()  # (E,): f_i, sums to 1
        self.aux_stats = load.detach()
        loss = None
        if cfg.aux_loss_coeff:
            probs = scores if cfg.score == "softmax" else scores / scores.sum(dim=-1, keepdim=True)  # (N, E)
            loss = cfg.aux_loss_coeff * cfg.n_experts * (load * probs.mean(dim=0)).sum()
        if cfg.z_loss_coeff:
            z = cfg.z_loss_coeff * torch.logsumexp(logits, dim=-1).square().mean()
            loss = z if loss is None else loss + z
        self.aux_loss = loss

    @torch.no_grad()
    def after_step(self, stats: Tensor) -> None:
        """After an optimiser step, with the step's mean share per expert (over micro-batches and ranks):
        DeepSeek-V3's balancing, the bias of over-loaded experts down by γ, of under-loaded ones up."""
        if self.cfg.bias_update_rate:
            self.router_bias.add_(self.cfg.bias_update_rate * torch.sign(stats.mean() - stats))

    def describe_stats(self, stats: list[float]) -> dict[str, float]:
        """What metrics.jsonl records of a step's expert load: the most and least loaded expert's share
        relative to a balanced one (both 1 when balanced; expert_load_max = E: one expert takes all)."""
        n = self.cfg.n_experts
        return {"expert_load_max": max(stats) * n, "expert_load_min": min(stats) * n}
