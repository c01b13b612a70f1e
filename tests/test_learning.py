"""The proxy signal: on MAD in-context recall at its baseline setting and the default training
budget, attention and Gated DeltaNet learn the task and an MLP-only pattern cannot (it has no way
to mix tokens)."""

import pytest
import torch

from composer.config import ModelConfig
from composer.runs.proxy import train_on_task
from composer.tasks.mad import task_config_from_mapping
from composer.engine.trainer import TrainerConfig


def _recall_accuracy(pattern: str, run_dir, *, d_model: int = 64, **primitives) -> float:
    task = task_config_from_mapping("in_context_recall")  # baseline: vocab 16, length 128, 12,800 examples
    model = ModelConfig(pattern=pattern, vocab_size=task.vocab_size, d_model=d_model, primitives=primitives)
    summary = train_on_task(model_cfg=model, task_name="in_context_recall", task_cfg=task,
                            trainer_cfg=TrainerConfig(progress=False, device="cpu"), seed=0, run_dir=run_dir)
    return summary["final"]["accuracy"]


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def test_attention_learns_in_context_recall(tmp_path):
    assert _recall_accuracy("**", tmp_path) >= 0.9


def test_mlp_only_stays_near_chance(tmp_path):
    chance = task_config_from_mapping("in_context_recall").chance_accuracy  # 1/8
    assert _recall_accuracy("----", tmp_path) < chance + 0.1


@pytest.mark.parametrize("pattern", ["GG", "G-"])
def test_gated_deltanet_learns_in_context_recall(tmp_path, pattern):
    """At width 32 (two 16-wide heads, ~1 min on two cores); attention needs 64 here."""
    from primitives.gdn import GatedDeltaNetConfig

    assert _recall_accuracy(pattern, tmp_path, d_model=32, gdn=GatedDeltaNetConfig(head_dim=16)) >= 0.9
