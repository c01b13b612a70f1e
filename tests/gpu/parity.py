"""Shared by the GPU parity tests: TF32 off (so fp32 tolerances mean fp32), the error measures, and a
hybrid proxy trained on in-context recall (`train_recall`) for tests that compare trainer settings.

Import the fixture by name into a test module: `from tests.gpu.parity import no_tf32  # noqa: F401`.
(Not a tests/gpu/conftest.py: the tests import `conftest` by that name, and a second one shadows it.)
"""

import json
from pathlib import Path

import pytest
import torch

from composer.config import model_config_from_mapping
from composer.engine.batches import ArrayBatches
from composer.engine.trainer import TrainerConfig, train
from composer.model import build_model
from composer.tasks.mad import TASKS, task_config_from_mapping

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


def train_recall(tmp_path: Path, name: str, *, pattern: str, steps: int, n_examples: int, batches=ArrayBatches,
                 mamba2_impl: str = "torch", **trainer) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """`pattern` at width 64 trained `steps` steps of 16 on in-context recall (length 64, seed 0) with
    TrainerConfig fields `trainer`: (summary, the logged training losses, the final weights flattened)."""
    cfg = TrainerConfig(**{"max_tokens": steps * 16 * 64, "batch_size": 16, "lr": 3e-3, "device": DEVICE.type,
                           "log_every": 1, "ckpt_every": 0, "progress": False, **trainer})
    task_cfg = task_config_from_mapping("in_context_recall", {"length": 64, "n_train": n_examples, "n_test": 64})
    x, y = TASKS["in_context_recall"].generate(task_cfg, n_examples=n_examples, seed=0)
    model = build_model(model_config_from_mapping({"pattern": pattern, "vocab_size": 16, "d_model": 64, "mamba2": {
        "impl": mamba2_impl, "head_dim": 16, "chunk_size": 16}}, where="model"), seed=0)
    summary = train(model, train_batches=batches(x.to(DEVICE), y.to(DEVICE), batch_size=16, seed=0),
                    eval_batches=[(x[:64], y[:64])], seq_len=64, cfg=cfg, run_dir=tmp_path / name,
                    signature={"name": name})
    losses = [json.loads(line)["train/loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
              if "train/loss" in line]
    weights = torch.cat([p.detach().flatten().float() for p in model.parameters()])
    return summary, torch.tensor(losses), weights
