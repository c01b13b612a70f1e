"""The composed model: token embedding -> one pre-norm residual layer per pattern letter -> RMSNorm -> LM head."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.utils.checkpoint
from torch import nn

from composer.config import ModelConfig
from primitives import REGISTRY


class Layer(nn.Module):
    """The one generic residual layer: x + mixer(norm(x)), whatever the primitive."""

    def __init__(self, letter: str, cfg: ModelConfig) -> None:
        super().__init__()
        self.letter = letter
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mixer = REGISTRY[letter].module_cls(cfg.primitive_config(letter), d_model=cfg.d_model)
        self.checkpoint = False  # activation checkpointing: recompute the mixer in backward

    def _mix(self, x: torch.Tensor, state: object | None = None) -> torch.Tensor:
        return self.mixer(self.norm(x), state)  # (B, T, D)

    def forward(self, x: torch.Tensor, state: object | None = None) -> torch.Tensor:
        if self.checkpoint and state is None and torch.is_grad_enabled():
            return x + torch.utils.checkpoint.checkpoint(self._mix, x, use_reentrant=False)
        return x + self._mix(x, state)  # (B, T, D)


class ComposedModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Layer(letter, cfg) for letter in cfg.pattern)
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.init_weights()

    def init_weights(self) -> None:
        """N(0, weight_std) everywhere; output projections scaled by 1/sqrt(n_layers) so the residual
        stream's variance does not grow with depth (GPT-2's rule, one residual branch per layer)."""
        std = self.cfg.weight_std
        nn.init.normal_(self.embed.weight, std=std)
        if self.head is not None:
            nn.init.normal_(self.head.weight, std=std)
        for layer in self.layers:
            nn.init.ones_(layer.norm.weight)
            layer.mixer.init_weights(std=std, out_std=std / math.sqrt(self.cfg.n_layers))
        nn.init.ones_(self.norm.weight)

    def hidden(self, tokens: torch.Tensor, states: list | None = None) -> torch.Tensor:
        """tokens (B, T) -> final normed hidden states (B, T, D)."""
        if states is None:
            self.reach(tokens.shape[1], tokens.device)
        x = self.embed(tokens)  # (B, T, D)
        if self.cfg.scale_embeddings:
            x = x * self.cfg.d_model**0.5
        for i, layer in enumerate(self.layers):
            x = layer(x, None if states is None else states[i])
        return self.norm(x)

    @property
    def head_weight(self) -> torch.Tensor:
        """The LM head's (V, D) weight: the embedding when tied."""
        return self.embed.weight if self.head is None else self.head.weight

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.head_weight.T  # (B, T, V)

    def forward(self, tokens: torch.Tensor, states: list | None = None) -> torch.Tensor:
        return self.logits(self.hidden(tokens, states))  # (B, T, V)

    def reach(self, positions: int, device: torch.device) -> None:
        """Layers that keep tables of positions (attention's rotary embedding) make them for 0..positions-1 once,
        here, outside their compiled code; layers of one kind share them."""
        made: dict = {}
        for layer in self.layers:
            if hasattr(layer.mixer, "reach"):
                layer.mixer.reach(positions, device, made)

    def allocate_states(self, *, batch_size: int, max_len: int) -> list:
        """Per-layer inference state: KV cache for attention, conv and SSM state for Mamba-2."""
        p = next(self.parameters())
        self.reach(max_len, p.device)
        return [
            layer.mixer.allocate_state(batch_size=batch_size, max_len=max_len, device=p.device, dtype=p.dtype)
            for layer in self.layers
        ]

    @torch.no_grad()
    def generate(
        self, prompt: torch.Tensor, *, max_new_tokens: int, temperature: float = 0.0, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Autoregressive decoding with per-layer state: the prompt is prefilled once, then one token
        per step. Returns (tokens (B, T + new), logits of every step (B, T + new - 1, V)).
        temperature 0 is greedy."""
        B, T = prompt.shape
        states = self.allocate_states(batch_size=B, max_len=T + max_new_tokens)
        step_logits = [self(prompt, states)]  # (B, T, V)
        tokens = [prompt]
        for i in range(max_new_tokens):
            last = step_logits[-1][:, -1]  # (B, V)
            if temperature > 0:
                probs = torch.softmax(last.float() / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            else:
                nxt = last.argmax(dim=-1, keepdim=True)
            tokens.append(nxt)
            if i + 1 < max_new_tokens:
                step_logits.append(self(nxt, states))  # (B, 1, V)
        return torch.cat(tokens, dim=1), torch.cat(step_logits, dim=1)

    def impl_report(self) -> dict[str, str]:
        """Which implementation each primitive runs, e.g. {'*': 'sdpa:auto', 'M': 'torch (cpu)'}."""
        device = next(self.parameters()).device
        return {layer.letter: layer.mixer.describe_impl(device) for layer in self.layers}


_SEEDING = threading.Lock()  # the global RNG is one per process; threads (search.evaluator's parallel runs) take turns


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Build modules from `seed` without disturbing the caller's RNG state, one thread at a time."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with _SEEDING, torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def build_model(cfg: ModelConfig, *, seed: int = 0) -> ComposedModel:
    """Deterministic for a seed: the same config and seed give bit-identical weights."""
    with seeded(seed):
        return ComposedModel(cfg)
