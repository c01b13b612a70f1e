"""The mixture-of-experts MLP `E`: counts against the module, the grouped path against the loop
over experts (the oracle), dropless routing, the balancing loss and bias, training through the
shared trainer (expert load in metrics.jsonl), and total vs active parameters in the accounting,
the extrapolator and the leaderboard. The CUDA fast path's parity test is tests/gpu/test_moe_parity.py."""

from __future__ import annotations

import json
import math

import pytest
import torch

from composer.config import ModelConfig, model_config_from_mapping
from composer.engine.batches import ArrayBatches
from composer.engine.trainer import TrainerConfig, train
from composer.errors import ConfigError
from composer.model import build_model
from composer.tasks.mad import TASKS, task_config_from_mapping
from primitives.mlp import MLPConfig
from primitives.moe import MoEConfig
from primitives.nn.moe import GROUPED_MM, MoE
from scaling.accounting import account, count_parameters
from scaling.extrapolate import extrapolate
from scaling.presets import preset_model_config

D = 32
SETTINGS = [
    {},  # 8 experts, top 2, hidden 4 * D / 2
    {"n_experts": 4, "top_k": 1, "hidden": 40},
    {"n_experts": 6, "top_k": 3, "hidden": 24, "shared_experts": 1, "score": "sigmoid"},
    {"n_experts": 5, "top_k": 5, "hidden": 16, "shared_experts": 2, "normalize_top_k": False},
]


def _grouped_runs_on_cpu() -> bool:
    """torch's grouped_mm has a CPU path in recent versions (2.13 here); older ones are CUDA only."""
    if GROUPED_MM is None:
        return False
    try:
        GROUPED_MM(torch.zeros(8, 16), torch.zeros(2, 16, 16).transpose(-2, -1), offs=torch.tensor([8, 8]).int())
    except RuntimeError:
        return False
    return True


needs_cpu_grouped_mm = pytest.mark.skipif(not _grouped_runs_on_cpu(), reason="this torch's grouped_mm has no CPU path")


def _pair(**settings) -> tuple[MoE, MoE]:
    """The loop and the grouped path with the same weights (and a routing bias that matters)."""
    torch.manual_seed(0)
    loop = MoE(MoEConfig(impl="torch", **settings), d_model=D)
    with torch.no_grad():
        loop.router_bias.copy_(torch.randn(loop.cfg.n_experts) * 0.01)
    grouped = MoE(MoEConfig(impl="kernels", **settings), d_model=D)
    grouped.load_state_dict(loop.state_dict())
    return loop, grouped


def _per_token(module: MoE, x: torch.Tensor) -> torch.Tensor:
    """A third formulation, token by token: Σ over its k experts of gate · expert(x_t), + shared."""
    flat = x.reshape(-1, D)
    _, _, gates, experts = module.route(flat)
    rows = []
    for t in range(len(flat)):
        y = sum(gates[t, j] * module._expert(flat[t : t + 1], int(experts[t, j]))[0] for j in range(module.cfg.top_k))
        if module.shared is not None:
            y = y + module.shared(flat[t : t + 1])[0]
        rows.append(y)
    return torch.stack(rows).reshape(x.shape)


# ------------------------------------------------------------------------------------------- counts

@pytest.mark.parametrize("settings", SETTINGS)
def test_counts_equal_the_module(settings):
    cfg = MoEConfig(**settings)
    module = MoE(cfg, d_model=D)
    experts = module.gate_up.weight.numel() + module.out_proj.weight.numel()  # every routed expert
    shared = 0 if module.shared is None else sum(p.numel() for p in module.shared.parameters())
    router = module.router.weight.numel()
    assert cfg.n_params(D) == sum(p.numel() for p in module.parameters()) == router + experts + shared
    assert cfg.n_active_params(D) == router + experts * cfg.top_k // cfg.n_experts + shared
    assert cfg.forward_flops_per_token(D, seq_len=64) == cfg.inference_flops_per_token(D, context=9) == 2 * cfg.n_active_params(D)
    assert cfg.state_bytes(D, context=100, dtype_bytes=2) == 0


def test_default_hidden_matches_the_dense_mlp():
    # top_k experts of hidden 4·d/k hold a dense MLP's weights: E swaps for `-` at the same compute (+ the router)
    cfg = MoEConfig(n_experts=8, top_k=2)
    assert cfg.hidden_size(64) == 128
    assert cfg.n_active_params(64) == MLPConfig().n_params(64) + 64 * 8
    assert cfg.n_params(64) == 4 * MLPConfig().n_params(64) + 64 * 8


def test_config_errors():
    with pytest.raises(ValueError, match="top_k"):
        MoEConfig(n_experts=2, top_k=3)
    with pytest.raises(ValueError, match="score"):
        MoEConfig(score="relu")
    with pytest.raises(ValueError, match="aux_loss_coeff"):
        MoEConfig(aux_loss_coeff=-1.0)
    with pytest.raises(ConfigError, match="divisible by 8"):
        MoE(MoEConfig(impl="kernels", hidden=36), d_model=D)
    with pytest.raises(ConfigError, match="model.moe"):
        model_config_from_mapping({"pattern": "E", "vocab_size": 8, "moe": {"impl": "fast"}})


# ------------------------------------------------------------------------------------ the two paths

@needs_cpu_grouped_mm
@pytest.mark.parametrize("settings", SETTINGS[:3])
def test_grouped_path_equals_the_loop(settings):
    loop, grouped = _pair(**settings)
    assert loop.describe_impl("cpu") == "loop (impl='torch')" and grouped.describe_impl("cpu") == "grouped_mm"
    x = torch.randn(2, 37, D)
    outs, grads = [], []
    for module in (loop, grouped):
        xi = x.clone().requires_grad_(True)
        y = module(xi)
        (y * torch.linspace(-1, 1, D)).sum().backward()
        outs.append(y.detach())
        grads.append([xi.grad] + [p.grad for p in module.parameters()])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    for g_grouped, g_loop in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_grouped, g_loop, rtol=1e-5, atol=1e-6)


@needs_cpu_grouped_mm
def test_grouped_path_in_bf16():
    loop, grouped = _pair(n_experts=4, top_k=2, hidden=64)
    x = torch.randn(3, 20, D, dtype=torch.bfloat16)
    loop, grouped = loop.to(torch.bfloat16), grouped.to(torch.bfloat16)
    y_loop, y_grouped = loop(x), grouped(x)
    assert y_grouped.dtype == torch.bfloat16
    assert (y_grouped.float() - y_loop.float()).abs().max() <= 2e-2 * y_loop.float().abs().max()


def test_auto_is_the_loop_on_cpu_and_grouped_in_bf16_on_cuda():
    module = MoE(MoEConfig(), d_model=D)
    assert module.describe_impl("cpu") == "loop (cpu)"
    if GROUPED_MM is not None:  # the choice needs no GPU: it reads the device type and the compute dtype
        assert module.describe_impl("cuda") == "grouped_mm (bf16; the loop in other dtypes)"
        assert module._resolve(torch.device("cuda"), torch.bfloat16) == (True, "grouped_mm")
        assert module._resolve(torch.device("cuda"), torch.float32)[0] is False
    assert MoE(MoEConfig(hidden=36), d_model=D).describe_impl("cuda").startswith("loop (grouped_mm needs")


# ---------------------------------------------------------------------------------------- dropless

@pytest.mark.parametrize("impl", ["torch", pytest.param("kernels", marks=needs_cpu_grouped_mm)])
def test_dropless_when_every_token_routes_to_one_expert(impl):
    """However unbalanced, every token gets exactly its k experts' contributions: no capacity, no drops."""
    torch.manual_seed(0)
    module = MoE(MoEConfig(n_experts=4, top_k=2, hidden=32, shared_experts=1, impl=impl, aux_loss_coeff=0.01),
                 d_model=D).train()
    with torch.no_grad():
        module.router_bias.copy_(torch.tensor([0.0, 0.0, 0.0, 100.0]))  # expert 3 is every token's first choice
    x = torch.randn(2, 21, D)
    y = module(x)
    _, _, gates, experts = module.route(x.reshape(-1, D))
    assert (experts[:, 0] == 3).all() and (experts[:, 1] != 3).all()  # k distinct experts, the bias picked the first
    assert torch.allclose(gates.sum(dim=-1), torch.ones(42))  # renormalised over the k
    torch.testing.assert_close(y, _per_token(module, x), rtol=1e-5, atol=1e-6)
    load = module.aux_stats
    assert load[3] == pytest.approx(0.5) and load.sum() == pytest.approx(1.0)  # 42 of the 84 assignments


@pytest.mark.parametrize("settings", SETTINGS)
def test_every_token_reaches_exactly_k_experts(settings):
    module = MoE(MoEConfig(**settings), d_model=D)
    x = torch.randn(3, 11, D)
    _, _, gates, experts = module.route(x.reshape(-1, D))
    k = module.cfg.top_k
    assert experts.shape == (33, k) and all(len(set(row.tolist())) == k for row in experts)
    torch.testing.assert_close(module(x), _per_token(module, x), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------- balancing

def _balance(module: MoE, x: torch.Tensor) -> float:
    module.train()
    module(x)
    return module.aux_loss.item() / module.cfg.aux_loss_coeff


def test_balancing_loss_by_hand():
    """E = 2, top 1, router = identity: tokens with probabilities (.75, .25) x3 and (.25, .75) x1.
    f = (3/4, 1/4), P = (.625, .375): E · Σ f·P = 2 · (.46875 + .09375) = 1.125."""
    module = MoE(MoEConfig(n_experts=2, top_k=1, hidden=4, aux_loss_coeff=0.01), d_model=2)
    with torch.no_grad():
        module.router.weight.copy_(torch.eye(2))
    a = math.log(3)
    x = torch.tensor([[[a, 0.0], [a, 0.0], [0.0, a], [a, 0.0]]])
    assert _balance(module, x) == pytest.approx(1.125)
    assert module.aux_loss.item() == pytest.approx(0.01125)
    assert module.aux_stats.tolist() == pytest.approx([0.75, 0.25])


def test_balancing_loss_is_one_when_uniform_and_e_when_collapsed():
    module = MoE(MoEConfig(n_experts=4, top_k=2, hidden=16), d_model=D)
    x = torch.randn(2, 16, D)
    with torch.no_grad():
        module.router.weight.zero_()  # uniform probabilities: Σ f·P = 1/E whatever the choice
    assert _balance(module, x) == pytest.approx(1.0)
    with torch.no_grad():
        module.router.weight[0] = 1.0  # logit ≈ 32 for expert 0, 0 for the others: it takes every token, p ≈ 1
    x = 1 + 0.1 * x
    top1 = MoE(MoEConfig(n_experts=4, top_k=1, hidden=16), d_model=D)
    top1.load_state_dict(module.state_dict())
    assert _balance(top1, x) == pytest.approx(4.0, rel=1e-3)  # the maximum: E


def test_balancing_loss_gradient_spreads_the_load():
    torch.manual_seed(0)
    module = MoE(MoEConfig(n_experts=4, top_k=1, hidden=16, aux_loss_coeff=1.0), d_model=D)
    x = torch.randn(4, 32, D) + 0.5
    with torch.no_grad():
        module.router.weight[0] += 0.5  # a skewed router: expert 0 takes most tokens
    start_loss, start_max = _balance(module, x), module.aux_stats.max().item()
    opt = torch.optim.SGD([module.router.weight], lr=0.5)
    for _ in range(60):
        opt.zero_grad()
        module(x)
        module.aux_loss.backward()
        opt.step()
    assert start_max > 0.6 and start_loss > 1.5
    assert _balance(module, x) < 1.1 and module.aux_stats.max().item() < 0.4


def test_bias_balancing_moves_the_load_towards_uniform():
    """DeepSeek-V3's loss-free balancing: only the routing bias moves (by ±rate per step), no gradient."""
    torch.manual_seed(0)
    module = MoE(MoEConfig(n_experts=4, top_k=2, hidden=16, aux_loss_coeff=0.0, bias_update_rate=0.01),
                 d_model=D).train()
    x = torch.randn(4, 32, D) + 0.5
    with torch.no_grad():
        module.router.weight[0] += 0.05  # expert 0 is in every token's top 2
    router = module.router.weight.detach().clone()
    loads = []
    for _ in range(40):
        module(x)
        assert module.aux_loss is None  # no loss term at coefficient 0
        loads.append(module.aux_stats.max().item() * 4)  # max load relative to balanced
        module.after_step(module.aux_stats)
    assert loads[0] == 2.0 and sum(loads[-10:]) / 10 < 1.35  # sign updates hover around the balance
    assert torch.equal(module.router.weight, router)
    assert module.router_bias[0] < 0 and "router_bias" in module.state_dict()  # checkpointed with the weights


def test_eval_forward_leaves_no_terms():
    module = MoE(MoEConfig(), d_model=D).eval()
    module(torch.randn(1, 5, D))
    assert module.aux_loss is None and module.aux_stats is None


# ---------------------------------------------------------------------------------------- training

def _train(tmp_path, name, pattern="*E*E", moe=None, **trainer):
    cfg = TrainerConfig(**{"max_tokens": 24 * 16 * 32, "batch_size": 16, "lr": 3e-3, "device": "cpu",
                           "log_every": 4, "ckpt_every": 0, "progress": False, **trainer})
    task_cfg = task_config_from_mapping("in_context_recall", {"length": 32, "n_train": 512, "n_test": 64})
    x, y = TASKS["in_context_recall"].generate(task_cfg, n_examples=512, seed=0)
    model = build_model(model_config_from_mapping(
        {"pattern": pattern, "vocab_size": 16, "d_model": 32, "attention": {"n_heads": 2},
         "moe": {"n_experts": 4, "top_k": 2, **(moe or {})}}, where="model"), seed=0)
    summary = train(model, train_batches=ArrayBatches(x, y, batch_size=16, seed=0), eval_batches=[(x[:64], y[:64])],
                    seq_len=32, cfg=cfg, run_dir=tmp_path / name, signature={"name": name})
    records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return summary, [r for r in records if "train/loss" in r], model


def test_training_logs_expert_load_and_learns(tmp_path):
    summary, records, model = _train(tmp_path, "moe", moe={"bias_update_rate": 0.001})
    assert len(records) == 6 and records[-1]["train/loss"] < records[0]["train/loss"] - 0.2
    for r in records:
        assert r["train/aux_loss"] >= 0.01 * 0.99  # coefficient 0.01 times a balance of at least ~1
        for layer in (1, 3):  # the E layers of *E*E
            assert r[f"train/layer{layer}.expert_load_max"] >= 1.0 >= r[f"train/layer{layer}.expert_load_min"] >= 0
    assert "train/layer0.expert_load_max" not in records[0]
    assert any(layer.mixer.router_bias.abs().sum() > 0 for layer in model.layers if layer.letter == "E")
    assert model.impl_report()["E"] == "loop (cpu)" and summary["status"] == "completed"


def test_activation_checkpointing_and_accumulation_keep_the_aux_loss(tmp_path):
    """The balancing loss backpropagates through checkpointed layers (the recomputed forward rewrites
    the module's attributes only after the trainer took them) and over micro-batches."""
    _, plain, plain_model = _train(tmp_path, "plain", max_tokens=8 * 16 * 32)
    _, ckpt, ckpt_model = _train(tmp_path, "ckpt", max_tokens=8 * 16 * 32, activation_checkpointing=True)
    assert [r["train/loss"] for r in ckpt] == pytest.approx([r["train/loss"] for r in plain], rel=1e-5)
    assert [r["train/aux_loss"] for r in ckpt] == pytest.approx([r["train/aux_loss"] for r in plain], rel=1e-5)
    for a, b in zip(plain_model.parameters(), ckpt_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    _, accum, _ = _train(tmp_path, "accum", grad_accum=2, max_tokens=8 * 16 * 32)
    assert len(accum) == 2 and all(r["train/aux_loss"] > 0 and r["train/layer3.expert_load_max"] >= 1 for r in accum)


def test_a_dense_model_logs_no_aux_terms(tmp_path):
    _, records, _ = _train(tmp_path, "dense", pattern="*-*-", max_tokens=4 * 16 * 32)
    assert not any(k.startswith("train/layer") or k == "train/aux_loss" for k in records[0])


# -------------------------------------------------------------------------------------- accounting

def test_accounting_counts_total_and_active():
    cfg = ModelConfig(pattern="*E-E", vocab_size=64, d_model=D, primitives={"moe": MoEConfig(n_experts=8, top_k=2)})
    moe = cfg.primitive_config("E")
    params = count_parameters(cfg)
    assert params["n_params"] - params["n_active_params"] == 2 * (moe.n_params(D) - moe.n_active_params(D))
    acc = account(cfg, seq_len=64)
    assert acc.n_active_params == params["n_active_params"] < acc.n_params == params["n_params"]
    assert acc.train_flops_by_primitive["E"] == 3 * 2 * 2 * moe.n_active_params(D)  # two layers, active weights
    dense = ModelConfig(pattern="*-*-", vocab_size=64, d_model=D)
    assert count_parameters(dense)["n_active_params"] == count_parameters(dense)["n_params"]
    with torch.device("meta"):
        model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == params["n_params"]


def test_presets_hold_olmoe_style_experts():
    """At 1B an `E` layer is OLMoE-1B-7B's: 64 experts of hidden 1024, top 8 — a token's active weights
    are the dense MLP's plus the router."""
    d = 2048
    moe = preset_model_config("1b", "E").primitive_config("E")
    assert (moe.n_experts, moe.top_k, moe.hidden) == (64, 8, 1024)
    assert moe.n_active_params(d) == 3 * d * 8192 + d * 64
    for target in ("350m", "1b", "3b", "8b"):
        p = preset_model_config(target, "E")
        assert p.primitive_config("E").top_k * p.primitive_config("E").hidden == p.primitive_config("-").hidden


def test_extrapolation_matches_active_parameters():
    """`*E` grows to the Llama reference's compute: the same 32 layers at 1B as `*-`, ~5.5x the parameters."""
    dense, sparse = extrapolate("*-", target="1b", method="stack"), extrapolate("*E", target="1b", method="stack")
    assert sparse.n_layers == dense.n_layers == 32
    assert dense.n_active_params == dense.n_params
    assert sparse.n_active_params == pytest.approx(dense.n_params, rel=0.01)
    assert 5 < sparse.n_params / sparse.n_active_params < 6
    assert abs(sparse.deviation) < 0.01


def test_extrapolate_command_and_leaderboard_show_active_parameters(tmp_path, capsys):
    from composer.apps.extrapolate import extrapolate_from_config
    from search.leaderboard import formats, records as rec

    record = extrapolate_from_config({"pattern": "M*E", "target": "1b", "method": "stack", "seq_len": 2048,
                                      "tokens": None, "tokens_per_param": 20.0, "format": "text"}, tmp_path)
    assert record["n_active_params"] < record["n_params"]
    assert f"{record['n_active_params']:,} active" in capsys.readouterr().out

    def arch(pattern):
        return rec.architecture_record(pattern, search="s", strategy="random", role="candidate", aggregator=None,
                                       task_scores={"recall": [0.5]}, seeds=[0], proxy_d_model=32,
                                       proxy_vocab_size=16, seq_len=32, evaluator="mad")

    sparse, dense = arch("*E*-"), arch("*-*-")
    assert sparse["targets"]["1b"]["n_active_params"] < sparse["targets"]["1b"]["n_params"]
    assert sparse["proxy"]["n_active_params"] < sparse["proxy"]["n_params"]
    assert "1B active" in formats.to_text(formats.rows([sparse, dense]))
    assert "1B active" in formats.to_markdown(formats.rows([sparse, dense]))
    assert "1B active" not in formats.to_text(formats.rows([dense]))
