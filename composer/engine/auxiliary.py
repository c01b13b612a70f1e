"""Layers' auxiliary training terms (the MoE's load balancing): collected for the trainer.

A mixer takes part by having an `aux_loss` attribute (the optional hooks of primitives/registry.py):
after each training forward it holds a scalar loss (coefficients applied) or None, and `aux_stats`,
a detached 1-D tensor; `after_step(stats)` and `describe_stats(stats)` use the step's mean stats.
Per step the trainer calls `begin`, then `collect` after each micro-batch's forward and before its
backward (activation checkpointing reruns forwards inside backward, rewriting the attributes), adds
the loss it returns to the micro-batch's, and calls `after_step` after the optimiser step; `metrics`
at logged steps. Everything up to `metrics` is device work without host syncs, so a captured CUDA
graph (composer/engine/graphs.py) replays it: the sums made during the capture are the graph's
static tensors, rewritten by every replay, and `metrics` reads them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from composer.engine import distributed
from composer.model import Layer


class Auxiliary:
    """The auxiliary terms of `module`'s layers; empty (every call a no-op) when no mixer has any."""

    def __init__(self, module: nn.Module) -> None:
        layers = [m for m in module.modules() if isinstance(m, Layer)]
        self.mixers = [(i, layer.mixer) for i, layer in enumerate(layers) if hasattr(layer.mixer, "aux_loss")]
        self.begin()
        self.step_loss: Tensor | None = None  # the last step's mean auxiliary loss (over micro-batches and ranks)
        self.step_stats: Tensor | None = None  # the last step's mean stats of every mixer, concatenated

    def begin(self) -> None:
        """Before a step's first forward."""
        self.micro, self.loss_sum = 0, None
        self.stats_sum: list[Tensor | None] = [None] * len(self.mixers)

    def collect(self) -> Tensor | None:
        """After a training forward: the sum of its layers' auxiliary losses (None if none), its stats kept."""
        if not self.mixers:
            return None
        loss = None
        for j, (_, mixer) in enumerate(self.mixers):
            if mixer.aux_loss is not None:
                loss = mixer.aux_loss if loss is None else loss + mixer.aux_loss
            if mixer.aux_stats is not None:
                stats = mixer.aux_stats.float()
                self.stats_sum[j] = stats if self.stats_sum[j] is None else self.stats_sum[j] + stats
            mixer.aux_loss = mixer.aux_stats = None  # free the graph behind it; a stale value is never reused
        self.micro += 1
        if loss is not None:
            self.loss_sum = loss.detach().float() if self.loss_sum is None else self.loss_sum + loss.detach().float()
        return loss

    @torch.no_grad()
    def after_step(self) -> None:
        """After the optimiser step: the step's mean stats (one all-reduce over ranks), handed to the mixers."""
        if not self.micro:
            return
        kept = [(mixer, s) for (_, mixer), s in zip(self.mixers, self.stats_sum) if s is not None]
        if kept:
            self.step_stats = distributed.all_mean(torch.cat([s for _, s in kept]) / self.micro)
            for (mixer, s), mean in zip(kept, self.step_stats.split([len(s) for _, s in kept])):
                if hasattr(mixer, "after_step"):
                    mixer.after_step(mean)
        if self.loss_sum is not None:
            self.step_loss = distributed.all_mean(self.loss_sum / self.micro)

    def metrics(self) -> dict[str, float]:
        """The last step's terms for metrics.jsonl: `train/aux_loss` and each layer's described stats,
        keyed `train/layer<i>.<name>` (i: the layer's index in the pattern). Reads the device."""
        out: dict[str, float] = {}
        if self.step_loss is not None:
            out["train/aux_loss"] = self.step_loss.item()
        if self.step_stats is not None:
            values = self.step_stats.tolist()
            for (i, mixer), s in zip(self.mixers, self.stats_sum):
                if s is None:
                    continue
                chunk, values = values[: len(s)], values[len(s) :]
                if hasattr(mixer, "describe_stats"):
                    out.update({f"train/layer{i}.{key}": v for key, v in mixer.describe_stats(chunk).items()})
        return out
