"""benchmarks/stacked_proxies.py: K proxies of different patterns trained as one stacked model (torch.func
vmap over each position's same-letter layers) train each candidate as it trains alone. On the CPU: the
loss curves of both from the same weights and batches, and the per-candidate gradient clipping against
torch's clip_grad_norm_ where it binds. Timings are the GPU's (RESULTS.md), not tested."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import cli_env

SCRIPT = Path(__file__).parents[1] / "benchmarks/stacked_proxies.py"
TOL = 1e-5  # relative, per step: the same float32 sums in batched kernels (measured 5e-7 over 10 steps)


def _bench():
    spec = importlib.util.spec_from_file_location("stacked_proxies", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_runs_and_every_candidate_trains_as_alone(tmp_path):
    out = tmp_path / "stacked.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--k", "4", "--length", "8", "--d-model", "32",
                           "--check-steps", "8", "--out", str(out)], capture_output=True, text=True, timeout=600,
                          env=cli_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and len(set(result["patterns"])) == 4
    assert {len(p) for p in result["patterns"]} == {8}
    positions = list(zip(*result["patterns"]))
    assert any(len(set(c)) > 1 for c in positions)  # some positions hold several letters: the regrouping is exercised
    check = result["equivalence"]
    assert check["steps"] == 8 and check["max_relative_loss_difference"] < TOL
    assert check["final_losses_solo"] != check["final_losses_stacked"][::-1]  # four different curves, not one


def test_per_candidate_clipping_is_clip_grad_norm_of_each_alone():
    bench = _bench()
    patterns = ["*-M-", "M--*", "*-*-"]
    device = torch.device("cpu")
    alone = bench.build(patterns, 32, "torch", device)
    stack = bench.StackedProxies(bench.build(patterns, 32, "torch", device))
    x = torch.randint(0, 16, (4, 24))
    y = torch.randint(0, 16, (4, 24))
    norms = []
    for model in alone:
        F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
        norms.append(nn.utils.clip_grad_norm_(model.parameters(), 0.05))
    stack.losses(x, y).sum().backward()
    stacked_norms = bench.clip_per_candidate(stack.stacks(), stack.k, 0.05)
    assert torch.allclose(stacked_norms, torch.stack(norms), rtol=1e-5)
    assert (stacked_norms > 0.05).all()  # the clip binds for every candidate
    for k, model in enumerate(alone):  # the clipped gradients, weight for weight: the embedding and a layer's
        assert torch.allclose(stack.embed.grad[k], model.embed.weight.grad, rtol=1e-4, atol=1e-8)
    group = next(g for g in stack.positions[0] if 0 in g.index.tolist())
    row, name = group.index.tolist().index(0), group.names[0]
    assert torch.allclose(group.weights[0].grad[row], dict(alone[0].layers[0].named_parameters())[name].grad,
                          rtol=1e-4, atol=1e-8), name


def test_every_primitive_but_moe_stacks():
    """Gated DeltaNet's and sliding-window attention's torch paths vmap as attention, MLP and Mamba-2's do; MoE's
    routing does not, and is refused by name."""
    import pytest

    from composer.config import model_config_from_mapping
    from composer.model import build_model

    bench = _bench()
    settings = {"vocab_size": 16, "d_model": 32, "gdn": {"head_dim": 8, "chunk_size": 8}, "swa": {"window": 4}}

    def models(patterns):
        return [build_model(model_config_from_mapping({**settings, "pattern": p}), seed=0) for p in patterns]

    x, y = torch.randint(0, 16, (2, 24)), torch.randint(0, 16, (2, 24))
    patterns = ["G-W-", "W-G-", "G*-G"]
    alone = torch.stack([F.cross_entropy(m(x).flatten(0, 1), y.flatten()) for m in models(patterns)])
    assert torch.allclose(bench.StackedProxies(models(patterns)).losses(x, y), alone, rtol=TOL)
    with pytest.raises(ValueError, match="cannot hold MoE"):
        bench.StackedProxies(models(["*E-E", "E*E-"]))


def test_folded_layers_equal_each_candidates_own():
    """The fold (benchmarks/stacked_proxies.py FOLDS) runs n candidates' attention as one batch and their Mamba-2
    layers as one layer of n x H heads and n x G groups: each candidate's output, and its weights' gradients, equal
    its own layer's. Two groups per Mamba-2 layer, so that a head reading another candidate's B or C would show;
    grouped-query and sliding-window attention, so that the batch fold meets both."""
    from composer.config import model_config_from_mapping
    from composer.model import build_model

    bench = _bench()
    settings = {"vocab_size": 16, "d_model": 32, "mamba2": {"head_dim": 8, "n_groups": 2, "chunk_size": 8},
                "attention": {"n_heads": 4, "n_kv_heads": 2}, "swa": {"window": 4, "n_heads": 4, "n_kv_heads": 2}}
    for letter in "M*W":
        layers = [build_model(model_config_from_mapping({**settings, "pattern": letter}), seed=s).layers[0]
                  for s in range(3)]
        group = bench._Group(layers, [0, 1, 2])
        x = torch.randn(3, 2, 24, 32, requires_grad=True)
        folded = group(x)
        alone = torch.stack([layer(x[i]) for i, layer in enumerate(layers)])
        assert torch.allclose(folded, alone, rtol=1e-4, atol=1e-5), letter
        weights = torch.randn_like(alone)  # a loss that weighs every output differently
        (folded * weights).sum().backward()
        (alone * weights).sum().backward()
        for name, stacked in zip(group.names, group.weights):
            own = torch.stack([dict(layer.named_parameters())[name].grad for layer in layers])
            assert torch.allclose(stacked.grad, own, rtol=1e-4, atol=1e-6), (letter, name)
        assert bench.STACK[0] == "fold" and letter in bench.FOLDS
