"""Registry-driven: every registered primitive is tested here the moment it is registered."""

import math

import pytest
import torch

from composer.config import ModelConfig
from composer.model import Layer
from primitives import REGISTRY

D_MODEL = 64
LETTERS = list(REGISTRY)


def _layer(letter: str, **settings) -> Layer:
    name = REGISTRY[letter].name
    primitives = {name: REGISTRY[letter].config_cls(**settings)} if settings else {}
    torch.manual_seed(0)
    return Layer(letter, ModelConfig(pattern=letter, vocab_size=8, d_model=D_MODEL, primitives=primitives))


def test_alphabet_is_megatrons():
    assert {"*": "attention", "-": "mlp", "M": "mamba2", "G": "gdn", "E": "moe"}.items() <= {k: p.name for k, p in REGISTRY.items()}.items()


@pytest.mark.parametrize("letter", LETTERS)
def test_shape_and_backward(letter):
    layer = _layer(letter)
    x = torch.randn(2, 37, D_MODEL, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in layer.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("letter", LETTERS)
def test_analytic_parameter_count_equals_module(letter):
    layer = _layer(letter)
    cfg = REGISTRY[letter].config_cls()
    real_mixer = sum(p.numel() for p in layer.mixer.parameters())
    assert cfg.n_params(D_MODEL) == real_mixer
    assert sum(p.numel() for p in layer.parameters()) == real_mixer + D_MODEL  # + the pre-norm


@pytest.mark.parametrize(
    "letter, settings",
    [("*", {"n_heads": 8, "n_kv_heads": 2, "qk_norm": True}), ("*", {"n_heads": 2, "head_dim": 48}),
     ("-", {"hidden": 100}), ("M", {"d_state": 16, "head_dim": 16, "n_groups": 2, "expand": 1}),
     ("W", {"n_heads": 2, "n_kv_heads": 1, "window": 4}),
     ("G", {"head_dim": 16, "n_heads": 3, "v_head_ratio": 1, "expand_v": 2, "d_conv": 3}),
     ("E", {"n_experts": 4, "top_k": 1, "hidden": 40, "shared_experts": 2, "score": "sigmoid"})],
)
def test_analytic_count_for_non_default_settings(letter, settings):
    layer = _layer(letter, **settings)
    assert REGISTRY[letter].config_cls(**settings).n_params(D_MODEL) == sum(p.numel() for p in layer.mixer.parameters())


@pytest.mark.parametrize("letter", LETTERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtypes(letter, dtype):
    layer = _layer(letter).to(dtype)
    x = torch.randn(2, 19, D_MODEL, dtype=dtype)
    y = layer(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    if dtype == torch.bfloat16:  # bf16 stays close to the fp32 computation
        ref = _layer(letter)(x.float())
        assert (y.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


@pytest.mark.parametrize("letter", LETTERS)
def test_causal(letter):
    """Changing a later token never changes an earlier output."""
    layer = _layer(letter).eval()
    x = torch.randn(1, 24, D_MODEL)
    x2 = x.clone()
    x2[:, 15:] = torch.randn(1, 9, D_MODEL)
    torch.testing.assert_close(layer(x)[:, :15], layer(x2)[:, :15], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("letter", LETTERS)
def test_stateful_forward_equals_full_forward(letter):
    layer = _layer(letter).eval()
    x = torch.randn(2, 21, D_MODEL)
    full = layer(x)
    state = layer.mixer.allocate_state(batch_size=2, max_len=21, device=x.device, dtype=x.dtype)
    pieces = [layer(x[:, :6], state)] + [layer(x[:, t : t + 1], state) for t in range(6, 9)] + [layer(x[:, 9:], state)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("letter", LETTERS)
def test_init_weights_uses_the_output_std(letter):
    layer = _layer(letter)
    layer.mixer.init_weights(std=0.02, out_std=0.002)
    out = layer.mixer.out_proj.weight
    assert math.isclose(out.std().item(), 0.002, rel_tol=0.1)


@pytest.mark.parametrize("letter", LETTERS)
def test_a_compiled_layer_is_one_graph_compiled_once_per_shape(letter, monkeypatch):
    """The trainer compiles each layer (`layer.compile()`; the GPU search presets' default): a layer's forward must be
    one graph, compiled once for a shape and reused. A first-call log in the mixers' forward broke Mamba-2's graph,
    and the flag it set recompiled the layer: every shape compiled twice (found on the CPU, 2026-12-06)."""
    import primitives.nn.once
    from torch._dynamo.utils import counters

    monkeypatch.setattr(primitives.nn.once, "_RESULTS", {})  # the layer's choice not logged yet, as in a new process
    torch._dynamo.reset()
    counters.clear()
    layer = _layer(letter)
    layer.compile()
    layer(torch.randn(2, 32, D_MODEL)).square().mean().backward()  # a training step
    graphs = counters["stats"]["unique_graphs"]
    layer(torch.randn(2, 32, D_MODEL)).square().mean().backward()
    assert counters["stats"]["unique_graphs"] == graphs, "the second step recompiled"
    breaks = dict(counters["graph_break"])
    if letter == "E":  # the CPU's loop over experts gathers each one's tokens with nonzero (data-dependent shapes);
        breaks = {k: n for k, n in breaks.items() if "nonzero" not in k}  # the GPU's grouped GEMMs are static
    assert not breaks, breaks
    assert graphs == 1 or letter == "E", dict(counters["stats"])


def test_specs_import_no_torch():
    """Patterns, configs and analytic counts work without torch: a search can reject before it builds."""
    import subprocess
    import sys

    code = ("import sys, primitives, composer.config, composer.pattern; "
            "cfg = composer.config.ModelConfig(pattern='*-M', vocab_size=10); "
            "[cfg.primitive_config(c).n_params(cfg.d_model) for c in cfg.pattern]; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
