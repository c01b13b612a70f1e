"""The language-modelling loss without the full logits: a fused-linear, chunked cross-entropy.

The plain path (`composer.engine.objective.loss_and_correct`) computes logits = hidden @ Wᵀ for every
position and takes the cross-entropy in fp32: at a 128K vocabulary that is 4 GiB of fp32 logits
per 8K tokens, and as much again for their gradient. Here the positions are taken a chunk at a
time: a chunk's logits, its loss, and at once its share of the gradients of the hidden states and
of the head weight. The loss is a sum, so its gradient is known in the forward pass; backward only
scales it by the incoming gradient. So no chunk's logits are recomputed, and the head costs the
same three matmuls as the plain path, while only one chunk of logits exists at a time.

Numerics follow the plain path under bf16 autocast: the matmuls take the autocast dtype, the
softmax and the loss run in fp32, the head weight's gradient is summed over chunks in fp32.
"""

from __future__ import annotations

import torch

from composer.engine.batches import IGNORE

CHUNK_ELEMENTS = 2**27  # logits per chunk: 512 MiB in fp32, 1,046 positions at a 128K vocabulary


def chunk_rows(vocab_size: int) -> int:
    """Positions per chunk at this vocabulary: as many as fit CHUNK_ELEMENTS logits."""
    return max(1, CHUNK_ELEMENTS // vocab_size)


def _chunk_losses(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, rows: int,
    grad_hidden: torch.Tensor | None = None, grad_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss, correct) over hidden (N, D), weight (V, D), targets (N,), `rows` positions at a
    time; fills grad_hidden (N, D) and adds into grad_weight (V, D, fp32) the loss's gradients when given."""
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    correct = torch.zeros((), dtype=torch.int64, device=hidden.device)
    for start in range(0, len(hidden), rows):
        h, t = hidden[start : start + rows], targets[start : start + rows]  # (n, D), (n,)
        logits = (h @ weight.T).float()  # (n, V)
        counted = t != IGNORE  # (n,)
        picked = torch.where(counted, t, 0)[:, None]  # (n, 1): any valid index on ignored rows
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # (n, 1)
        loss += ((lse - logits.gather(1, picked))[:, 0] * counted).sum()
        correct += ((logits.argmax(dim=-1) == t) & counted).sum()
        if grad_hidden is None and grad_weight is None:
            continue
        dlogits = logits.sub_(lse).exp_()  # (n, V): softmax, in place of the logits
        dlogits.scatter_add_(1, picked, -torch.ones_like(lse))  # minus the one-hot target
        dlogits = dlogits.mul_(counted[:, None]).to(weight.dtype)  # (n, V): ignored rows add nothing
        if grad_hidden is not None:
            grad_hidden[start : start + rows] = dlogits @ weight  # (n, D)
        if grad_weight is not None:
            grad_weight += dlogits.T @ h  # (V, D)
    return loss, correct


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """loss = Σ CE(hidden @ weightᵀ, targets), its gradients computed in forward (see the module docstring)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int):
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None  # (N, D)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None  # (V, D)
        loss, correct = _chunk_losses(hidden, weight, targets, rows=rows, grad_hidden=grad_hidden,
                                      grad_weight=grad_weight)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_correct: None):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_loss.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_loss).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None


def chunked_loss_and_correct(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`loss_and_correct(hidden @ weight.T, targets)` without the full logits: the summed
    cross-entropy, correct predictions and counted positions over target positions only.

    hidden (..., D), weight (V, D) (the LM head, or the tied embedding), targets (...) with IGNORE
    at positions that do not count. `rows`: positions per chunk (default `chunk_rows(V)`)."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):  # the matmuls in the autocast dtype, as the plain path's
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    flat_hidden, flat_targets = hidden.flatten(0, -2), targets.flatten()  # (N, D), (N,)
    rows = rows or chunk_rows(len(weight))
    with torch.autocast(device_type, enabled=False):
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            loss, correct = _FusedLinearCrossEntropy.apply(flat_hidden, weight, flat_targets, rows)
        else:  # evaluation: no gradients to compute
            loss, correct = _chunk_losses(flat_hidden, weight, flat_targets, rows=rows)
    return loss, correct, (flat_targets != IGNORE).sum()
