"""Error measures of the GPU parity tests."""

import torch


def rel_err(fast: torch.Tensor, ref: torch.Tensor) -> float:
    """max|fast - ref| / max|ref|, in fp64."""
    return ((fast.double() - ref.double()).abs().max() / ref.double().abs().max().clamp(min=1e-12)).item()


def norm_err(fast: torch.Tensor, ref: torch.Tensor) -> float:
    """‖fast - ref‖ / ‖ref‖, in fp64."""
    return ((fast.double() - ref.double()).norm() / ref.double().norm().clamp(min=1e-12)).item()
