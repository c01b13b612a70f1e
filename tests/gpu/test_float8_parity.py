"""Float8 training (`trainer.float8`, torchao) against bf16 on one GPU with float8 tensor cores
(collected only where a GPU is present; skipped below compute capability 8.9 or without torchao).

Tolerance, 50 steps of a hybrid proxy at width 64 on the same batches: the mean logged training loss
of the last 10 steps within 5% (relative) of bf16's, and every logged loss finite. float8 (e4m3) keeps
3 mantissa bits, so each GEMM's output differs from bf16's by rounding a few times larger than bf16's
own; over 50 steps that moves the loss by a few percent at most at this width, not its trend. The
real-text parity over hundreds of steps, with tighter bounds, is benchmarks/float8_parity.py.
"""

import json

import pytest
import torch

from composer.config import model_config_from_mapping
from composer.engine.batches import ArrayBatches
from composer.engine.float8 import MIN_CAPABILITY, torchao_version
from composer.engine.trainer import TrainerConfig, train
from composer.errors import ConfigError
from composer.model import build_model
from composer.tasks.mad import TASKS, task_config_from_mapping

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PATTERN = "*-M-*-E-"  # attention, MLP, Mamba-2 and MoE linears (the MoE's router and experts stay in bf16)
STEPS = 50

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < MIN_CAPABILITY or torchao_version() is None,
    reason="float8 training needs a GPU of compute capability >= 8.9 and torchao")


def _train(tmp_path, name, **trainer):
    cfg = TrainerConfig(**{"max_tokens": STEPS * 16 * 64, "batch_size": 16, "lr": 3e-3, "device": DEVICE.type,
                           "log_every": 1, "ckpt_every": 0, "progress": False, **trainer})
    task_cfg = task_config_from_mapping("in_context_recall", {"length": 64, "n_train": 1024, "n_test": 64})
    x, y = TASKS["in_context_recall"].generate(task_cfg, n_examples=1024, seed=0)
    model = build_model(model_config_from_mapping({"pattern": PATTERN, "vocab_size": 16, "d_model": 64, "mamba2": {
        "impl": "torch", "head_dim": 16, "chunk_size": 16}}, where="model"), seed=0)
    summary = train(model, train_batches=ArrayBatches(x.to(DEVICE), y.to(DEVICE), batch_size=16, seed=0),
                    eval_batches=[(x[:64], y[:64])], seq_len=64, cfg=cfg, run_dir=tmp_path / name,
                    signature={"name": name})
    losses = [json.loads(line)["train/loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
              if "train/loss" in line]
    return summary, torch.tensor(losses)


@pytest.mark.parametrize("recipe", ["rowwise", "tensorwise"])
def test_float8_trains_as_bf16(tmp_path, recipe):
    bf16, bf16_losses = _train(tmp_path, "bf16")
    fp8, fp8_losses = _train(tmp_path, recipe, float8=recipe)
    assert bf16["impl"]["float8"] == "off" and fp8["impl"]["float8"].startswith(f"{recipe} (torchao ")
    assert len(fp8_losses) == len(bf16_losses) == STEPS and torch.isfinite(fp8_losses).all()
    tail = (fp8_losses[-10:].mean() - bf16_losses[-10:].mean()).abs() / bf16_losses[-10:].mean()
    print(f"{recipe}: last-10 mean loss bf16 {bf16_losses[-10:].mean():.4f}, float8 {fp8_losses[-10:].mean():.4f} "
          f"({tail:.2%}); {fp8['impl']['float8']}")
    assert tail < 0.05


def test_float8_under_compile_runs(tmp_path):
    summary, losses = _train(tmp_path, "compiled", float8="rowwise", compile=True)
    assert summary["impl"]["compile"] and summary["impl"]["float8"].startswith("rowwise")
    assert len(losses) == STEPS and torch.isfinite(losses).all()


def test_float8_with_a_cuda_graph_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="cuda_graph"):
        _train(tmp_path, "graph", float8="rowwise", cuda_graph=True)
