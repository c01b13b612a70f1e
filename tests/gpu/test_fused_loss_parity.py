"""The chunked (fused-linear) cross-entropy against the plain path on CUDA (collected only where a GPU is present).

Tolerances: relative max error, max|chunked - plain| / max|plain|, TF32 off:
  fp32: 1e-5 (cuBLAS may pick other kernels for a chunk's rows than for all rows: sums in another order)
  bf16 autocast: 2e-2 (as test_kernel_parity.py; the loss itself is fp32 on both paths: 1e-3)
Through a whole model the error is the norm-relative ‖chunked - plain‖ / ‖plain‖ (bf16: 2e-2): the
paths round the logits' gradient to bf16 before (chunked) or after (plain) scaling it by 1/tokens,
and that difference travels back through every layer (1.1e-2 max-relative, CPU bf16, layer 0).
The peak memory of each path is printed for the device run's log, not asserted.
"""

import pytest
import torch

from composer.config import ModelConfig
from composer.engine.batches import IGNORE
from composer.engine.loss import chunked_loss_and_correct
from composer.model import build_model
from composer.engine.objective import Objective, loss_and_correct
from tests.gpu.parity import no_tf32, norm_err, rel_err  # noqa: F401  (no_tf32: an autouse fixture)

DEVICE = torch.device("cuda")
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _run(loss_fn, hidden, weight, targets, dtype):
    """Loss, grads of hidden and weight, and the peak memory above the inputs, in GiB."""
    hidden, weight = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        loss, correct, counted = loss_fn(hidden, weight, targets)
    (loss / counted).backward()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    return loss.detach(), correct, hidden.grad, weight.grad, peak


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_loss_matches_the_plain_path_at_a_llama_vocabulary(dtype):
    torch.manual_seed(0)
    n, d, vocab = 4100, 512, 128_256  # 4100: the last chunk of 1,046 rows is ragged
    hidden = torch.randn(n, d, device=DEVICE)  # (N, D)
    weight = torch.randn(vocab, d, device=DEVICE) / d**0.5  # (V, D)
    targets = torch.randint(0, vocab, (n,), device=DEVICE)
    targets[::5] = IGNORE
    chunked = _run(chunked_loss_and_correct, hidden, weight, targets, dtype)
    plain = _run(lambda h, w, t: loss_and_correct(h @ w.T, t), hidden, weight, targets, dtype)
    errors = {"loss": rel_err(chunked[0], plain[0]), "grad_hidden": rel_err(chunked[2], plain[2]),
              "grad_weight": rel_err(chunked[3], plain[3])}
    print({k: f"{v:.2e}" for k, v in errors.items()}, f"peak GiB chunked {chunked[4]:.2f} plain {plain[4]:.2f}")
    assert chunked[2].dtype == chunked[3].dtype == torch.float32
    assert errors["loss"] <= 1e-3 and abs(chunked[1].item() - plain[1].item()) <= n // 1000  # argmax ties in bf16
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL[dtype], f"{worst}: {errors[worst]:.3e} > {TOL[dtype]:.0e}"


def test_a_hybrid_model_trains_on_the_same_gradients_through_either_loss():
    """bf16 autocast, tied embedding, mamba-ssm kernels where installed: the head weight's gradient
    (the embedding's, lookup included), the final norm's and the first layer's agree (norm-relative)."""
    cfg = ModelConfig(pattern="*-M-", vocab_size=32_000, d_model=256)
    tokens = torch.randint(0, 32_000, (4, 512), device=DEVICE)
    targets = torch.roll(tokens, -1, dims=1)
    targets[:, -1] = IGNORE
    grads, losses = {}, {}
    for impl in ("chunked", "full"):
        module = Objective(build_model(cfg, seed=0), loss_impl=impl).to(DEVICE)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _, counted = module(tokens, targets)
        (loss / counted).backward()
        losses[impl] = loss.item()
        grads[impl] = {n: p.grad for n, p in module.named_parameters()}
    errors = {n: norm_err(grads["chunked"][n], grads["full"][n])
              for n in ("model.embed.weight", "model.layers.0.mixer.qkv.weight", "model.norm.weight")}
    print({k: f"{v:.2e}" for k, v in errors.items()}, "loss", losses)
    assert abs(losses["chunked"] - losses["full"]) / losses["full"] <= 1e-3
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL[torch.bfloat16], f"{worst}: {errors[worst]:.3e}"
