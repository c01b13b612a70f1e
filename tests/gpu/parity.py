"""Shared by the GPU parity tests: TF32 off (so fp32 tolerances mean fp32), and the error measures.

Import the fixture by name into a test module: `from tests.gpu.parity import no_tf32  # noqa: F401`.
(Not a tests/gpu/conftest.py: the tests import `conftest` by that name, and a second one shadows it.)
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def rel_err(fast: torch.Tensor, ref: torch.Tensor) -> float:
    """max|fast - ref| / max|ref|, in fp64."""
    return ((fast.double() - ref.double()).abs().max() / ref.double().abs().max().clamp(min=1e-12)).item()


def norm_err(fast: torch.Tensor, ref: torch.Tensor) -> float:
    """‖fast - ref‖ / ‖ref‖, in fp64."""
    return ((fast.double() - ref.double()).norm() / ref.double().norm().clamp(min=1e-12)).item()
