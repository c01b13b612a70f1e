"""What the trainer trains: the model (plus a task's own output head) and its loss, the plain
cross-entropy over the full logits or composer.engine.loss's chunked one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from composer.engine.batches import IGNORE
from composer.engine.loss import chunked_loss_and_correct


class Objective(nn.Module):
    """The trained module: the model, plus a task's own output head when the task has one (compression).

    forward(tokens) gives the logits; forward(tokens, targets) the summed loss, correct predictions
    and counted positions (`loss_and_correct`). The loss runs inside forward because that is where
    FSDP2 has gathered the head weight; `loss_impl` ("full" or "chunked", set by the trainer from
    `trainer.loss`) says whether it materialises the full logits. The full path's loss is
    `full_loss`: `loss_and_correct`, compiled by the trainer with the layers (`trainer.compile`), where
    its casts, softmax, gather and counts would otherwise be a dozen small kernels a step."""

    def __init__(self, model: nn.Module, head: nn.Module | None = None, *, loss_impl: str = "full") -> None:
        super().__init__()
        self.model, self.head, self.loss_impl = model, head, loss_impl
        self.full_loss = loss_and_correct

    def forward(
        self, tokens: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if targets is None:
            return self._logits(tokens)
        if self.loss_impl == "chunked":
            return chunked_loss_and_correct(self.model.hidden(tokens), self.model.head_weight, targets)
        return self.full_loss(self._logits(tokens), targets)

    def _logits(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            return self.model(tokens)  # (B, T, V)
        return self.head(self.model.hidden(tokens))  # (B, T_out, V)


def loss_and_correct(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed cross-entropy, correct predictions and counted positions, over target positions only."""
    flat_logits, flat_targets = logits.float().flatten(0, -2), targets.flatten()
    loss_sum = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE, reduction="sum")
    counted = flat_targets != IGNORE
    correct = ((flat_logits.argmax(-1) == flat_targets) & counted).sum()
    return loss_sum, correct, counted.sum()
