"""The MoE's grouped-GEMM path against its loop over experts, on CUDA only (collected only where a
GPU is present), and MoE layers in the CUDA-graph and compiled training step.

Both paths get the same weights and inputs, so they route identically (the router runs in fp32
either way); what differs is how the experts' matmuls are computed. Tolerances, relative max
error max|fast - ref| / max|ref|, TF32 off:
  fp32: 1e-5 (the same products, summed in another order)
  bf16: 2e-2 (both in bf16, cuBLAS against grouped CUTLASS kernels: bf16 roundings several deep)
Training: the graphed step against the eager one, bf16 autocast, 24 steps: losses within 2e-2, as
test_cuda_graph_parity.py allows.
"""

import json
import time

import pytest
import torch

from composer.config import model_config_from_mapping
from composer.engine.batches import ArrayBatches
from composer.engine.trainer import TrainerConfig, train
from composer.model import build_model
from composer.tasks.mad import TASKS, task_config_from_mapping
from primitives.moe import MoEConfig
from primitives.nn.moe import MoE
from tests.gpu.parity import no_tf32, rel_err  # noqa: F401  (no_tf32: an autouse fixture)

DEVICE = torch.device("cuda")
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _forward_backward(module, x, *, autocast=False):
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        y = module(x)
    (y.float() * torch.linspace(-1, 1, y.shape[-1], device=y.device)).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters()}
    return y.detach(), x.grad.detach(), grads


def _pair(settings, d_model, dtype):
    torch.manual_seed(0)
    ref = MoE(MoEConfig(impl="torch", **settings), d_model=d_model).to(DEVICE, dtype)
    fast = MoE(MoEConfig(impl="kernels", **settings), d_model=d_model).to(DEVICE, dtype)  # fp32 too
    fast.load_state_dict(ref.state_dict())
    assert fast.describe_impl(DEVICE) == "grouped_mm" and ref.describe_impl(DEVICE) == "loop (impl='torch')"
    return fast, ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("settings", [
    {"n_experts": 8, "top_k": 2, "hidden": 128},
    {"n_experts": 64, "top_k": 8, "hidden": 64, "shared_experts": 1, "score": "sigmoid"},  # OLMoE-like, fine-grained
])
@pytest.mark.parametrize("skewed", [False, True])
def test_grouped_mm_matches_the_loop(dtype, settings, skewed):
    fast, ref = _pair(settings, 256, dtype)
    if skewed:  # one expert is every token's first choice, most get none: groups of 0 and of every token
        with torch.no_grad():
            for m in (fast, ref):
                m.router_bias[3] = 100.0
    x = torch.randn(2, 300, 256, device=DEVICE, dtype=dtype)  # 600 tokens: groups of every size, unaligned
    y, gx, gp = _forward_backward(fast, x)
    y_ref, gx_ref, gp_ref = _forward_backward(ref, x)
    errors = {"out": rel_err(y, y_ref), "grad_x": rel_err(gx, gx_ref)}
    errors.update({f"grad_{n}": rel_err(gp[n], gp_ref[n]) for n in gp})
    print({k: f"{v:.2e}" for k, v in errors.items()})  # quoted in the device run's log
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL[dtype], f"{worst}: {errors[worst]:.3e} > {TOL[dtype]:.0e}"


def test_grouped_mm_under_autocast_with_fp32_weights():
    """As the trainer runs it: fp32 parameters, bf16 autocast."""
    fast, ref = _pair({"n_experts": 8, "top_k": 2}, 256, torch.float32)
    x = torch.randn(4, 128, 256, device=DEVICE)
    y, gx, gp = _forward_backward(fast, x, autocast=True)
    y_ref, gx_ref, gp_ref = _forward_backward(ref, x, autocast=True)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    assert rel_err(y, y_ref) <= 2e-2 and rel_err(gx, gx_ref) <= 2e-2
    assert max(rel_err(gp[n], gp_ref[n]) for n in gp) <= 2e-2


def test_grouped_mm_is_faster_than_the_loop():
    """OLMoE-1B-7B's layer (64 experts of hidden 1024, top 8, d_model 2048), 8K tokens, bf16 forward +
    backward: the time of each path, printed for the device log."""
    times = {}
    for impl in ("torch", "auto"):
        torch.manual_seed(0)
        m = MoE(MoEConfig(n_experts=64, top_k=8, hidden=1024, impl=impl), d_model=2048).to(DEVICE, torch.bfloat16)
        x = torch.randn(8192, 2048, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
        for step in range(8):
            if step == 3:
                torch.cuda.synchronize()
                start = time.perf_counter()
            m(x).sum().backward()
        torch.cuda.synchronize()
        times[impl] = (time.perf_counter() - start) / 5
    flops = 3 * 2 * 8192 * MoEConfig(n_experts=64, top_k=8, hidden=1024).n_active_params(2048)
    print({k: f"{v * 1e3:.2f} ms, {flops / v / 1e12:.0f} TFLOP/s" for k, v in times.items()})
    assert times["auto"] < times["torch"]


def _train(tmp_path, name, **trainer):
    cfg = TrainerConfig(**{"max_tokens": 24 * 16 * 64, "batch_size": 16, "lr": 3e-3, "device": "cuda",
                           "log_every": 1, "ckpt_every": 0, "progress": False, **trainer})
    task_cfg = task_config_from_mapping("in_context_recall", {"length": 64, "n_train": 512, "n_test": 64})
    x, y = TASKS["in_context_recall"].generate(task_cfg, n_examples=512, seed=0)
    model = build_model(model_config_from_mapping(
        {"pattern": "*E*E", "vocab_size": 16, "d_model": 64, "moe": {"bias_update_rate": 0.001}}, where="model"), seed=0)
    summary = train(model, train_batches=ArrayBatches(x.to(DEVICE), y.to(DEVICE), batch_size=16, seed=0),
                    eval_batches=[(x[:64], y[:64])], seq_len=64, cfg=cfg, run_dir=tmp_path / name,
                    signature={"name": name})
    records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
               if "train/loss" in line]
    bias = torch.cat([layer.mixer.router_bias for layer in model.layers if layer.letter == "E"])
    return summary, records, bias, model


@pytest.mark.parametrize("compile", [False, True])
def test_moe_trains_in_the_graphed_and_compiled_step(tmp_path, compile):
    eager, eager_records, eager_bias, model = _train(tmp_path, "eager")
    graph, graph_records, graph_bias, _ = _train(tmp_path, "graph", cuda_graph=True, compile=compile)
    assert model.impl_report()["E"].startswith("grouped_mm")  # auto: bf16 under the trainer's autocast
    assert eager["impl"]["step"] == "eager" and graph["impl"]["step"] == "cuda_graph"
    assert len(graph_records) == len(eager_records) == 24
    losses = torch.tensor([r["train/loss"] for r in graph_records])
    eager_losses = torch.tensor([r["train/loss"] for r in eager_records])
    print("losses", losses[-1].item(), eager_losses[-1].item(), "bias", graph_bias.abs().sum().item())
    assert ((losses - eager_losses).abs() / eager_losses).max() < 2e-2
    # the replayed graph logs each step's own expert load and moves the routing bias after each step
    loads = [r["train/layer3.expert_load_max"] for r in graph_records]
    assert all(v >= 1.0 for v in loads) and len(set(loads[2:])) > 1
    assert graph_bias.abs().sum() > 0 and eager_bias.abs().sum() > 0
