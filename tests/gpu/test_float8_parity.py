"""Float8 training (`trainer.float8`, torchao) against bf16 on one GPU with float8 tensor cores
(collected only where a GPU is present; skipped below compute capability 8.9 or without torchao).

Tolerance, 50 steps of a hybrid proxy at width 64 on the same batches: the mean logged training loss
of the last 10 steps within 5% (relative) of bf16's, and every logged loss finite. float8 (e4m3) keeps
3 mantissa bits, so each GEMM's output differs from bf16's by rounding a few times larger than bf16's
own; over 50 steps that moves the loss by a few percent at most at this width, not its trend. The
real-text parity over hundreds of steps, with tighter bounds, is benchmarks/float8_parity.py.
"""


import pytest
import torch

from composer.engine.float8 import MIN_CAPABILITY, torchao_version
from composer.errors import ConfigError
from tests.gpu.parity import train_recall

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PATTERN = "*-M-*-E-"  # attention, MLP, Mamba-2 and MoE linears (the MoE's router and experts stay in bf16)
STEPS = 50

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < MIN_CAPABILITY or torchao_version() is None,
    reason="float8 training needs a GPU of compute capability >= 8.9 and torchao")


def _train(tmp_path, name, **trainer):
    summary, losses, _ = train_recall(tmp_path, name, pattern=PATTERN, steps=STEPS, n_examples=1024, **trainer)
    return summary, losses


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
