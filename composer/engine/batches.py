"""Batch streams with a resumable position: the trainer's only view of data."""

from __future__ import annotations

from typing import Protocol

import torch

IGNORE = -100  # target of positions that count in neither loss nor accuracy (cross-entropy's ignore_index)


class Batches(Protocol):
    """An endless, deterministic stream of (inputs, targets) batches whose position can be saved."""

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def state_dict(self) -> dict[str, int]: ...
    def load_state_dict(self, state: dict[str, int]) -> None: ...


class EpochOrder:
    """The resumable core of every batch stream: `position` (batches served) and a permutation of
    `n_items` per epoch seeded by (seed, epoch), so a resumed run replays exactly the same order.
    The permutation is held on `device`: where the data is, so that indexing it copies nothing."""

    def __init__(self, n_items: int, *, seed: int, device: torch.device | str = "cpu") -> None:
        self.n_items, self.seed, self.device, self.position = n_items, seed, device, 0
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, permutation) cache

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._order is None or self._order[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(self.n_items, generator=g).to(self.device))
        return self._order[1]

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])


class ArrayBatches(EpochOrder):
    """Epochs over fixed tensors (a MAD training set), reshuffled each epoch from (seed, epoch).

    The position is the number of batches served, so a resumed run sees exactly the batches an
    uninterrupted one would have. A partial batch at an epoch's end is dropped. Arrays on a GPU
    give batches there.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, *, batch_size: int, seed: int) -> None:
        if len(inputs) < batch_size:
            raise ValueError(f"batch size {batch_size} is larger than the {len(inputs)} training examples")
        super().__init__(len(inputs), seed=seed, device=inputs.device)
        self.inputs, self.targets, self.batch_size = inputs, targets, batch_size
        self.per_epoch = len(inputs) // batch_size

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, k = divmod(self.position, self.per_epoch)
        idx = self.permutation(epoch)[k * self.batch_size : (k + 1) * self.batch_size]
        self.position += 1
        return self.inputs[idx], self.targets[idx]  # (B, T_in), (B, T_out)
