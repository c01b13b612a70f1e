"""Gated DeltaNet mixer: the chunked form against the step-by-step oracle, the delta rule and its
decay gate, parameter counts, stateful decoding against the full forward, gradients, and the
explicit (and safe) choice of implementation.

Tolerances: float64, chunked vs sequential 1e-10 (the same sums in another order); float32 1e-5
(outputs of unit size, chunks of up to 64 steps)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import primitives.nn.gdn as gdn_nn
import primitives.nn.mamba2 as mamba2_nn
import primitives.nn.once as once
from composer.errors import ConfigError, KernelUnavailableError
from primitives.gdn import GatedDeltaNetConfig
from primitives.mamba2 import Mamba2Config
from primitives.nn.gdn import (
    GatedDeltaNet,
    GatedDeltaNetState,
    gated_delta_rule_chunked,
    gated_delta_rule_sequential,
    gdn_kernels_unsafe,
)
from primitives.nn.mamba2 import Mamba2
from primitives.registry import REGISTRY

SMALL = dict(head_dim=8, chunk_size=8, impl="torch")  # at d_model 32: 4 query/key heads, 8 value heads
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _rule_inputs(*, b=2, t=37, h=3, dk=5, dv=4, seed=0, dtype=torch.float64, decay=1.0):
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, t, h, dk, generator=gen, dtype=dtype), dim=-1) * dk**-0.5
    k = F.normalize(torch.randn(b, t, h, dk, generator=gen, dtype=dtype), dim=-1)
    v = torch.randn(b, t, h, dv, generator=gen, dtype=dtype)
    g = -torch.rand(b, t, h, generator=gen, dtype=dtype) * decay  # log-decay, <= 0
    beta = torch.rand(b, t, h, generator=gen, dtype=dtype)
    state0 = torch.randn(b, h, dk, dv, generator=gen, dtype=dtype)
    return q, k, v, g, beta, state0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk_size", [1, 4, 16, 64])
@pytest.mark.parametrize("t", [37, 50, 64])  # 37 and 50: ragged, not a multiple of the chunk
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_matches_sequential(dtype, chunk_size, t, with_state):
    q, k, v, g, beta, state0 = _rule_inputs(t=t, seed=chunk_size + t, dtype=dtype)
    initial = state0 if with_state else None
    o_ref, final_ref = gated_delta_rule_sequential(q, k, v, g, beta, initial_state=initial)
    o, final = gated_delta_rule_chunked(q, k, v, g, beta, chunk_size=chunk_size, initial_state=initial)
    assert o.shape == v.shape and final.shape == final_ref.shape
    torch.testing.assert_close(o, o_ref, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(final, final_ref, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("chunk_size", [8, 64])  # several chunks, and one
def test_no_initial_state_is_a_zero_state_bit_for_bit(chunk_size):
    """Without an initial state the first chunk leaves out the entering state's terms: the same output and final
    state as from a zero state, exactly."""
    q, k, v, g, beta, state0 = _rule_inputs(t=37, dtype=torch.float32)
    skipped = gated_delta_rule_chunked(q, k, v, g, beta, chunk_size=chunk_size)
    zero = gated_delta_rule_chunked(q, k, v, g, beta, chunk_size=chunk_size, initial_state=torch.zeros_like(state0))
    assert torch.equal(skipped[0], zero[0]) and torch.equal(skipped[1], zero[1])


def test_chunked_gradients_match_sequential():
    inputs = [x.requires_grad_() for x in _rule_inputs(t=21, dtype=torch.float64)]
    weights = torch.randn(2, 21, 3, 4, dtype=torch.float64)
    grads = []
    for fn in (gated_delta_rule_sequential, lambda *a, **kw: gated_delta_rule_chunked(*a, chunk_size=8, **kw)):
        o, final = fn(*inputs[:5], initial_state=inputs[5])
        grads.append(torch.autograd.grad((o * weights).sum() + final.sum(), inputs))
    for name, a, b in zip("q k v g beta state0".split(), *grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=name)


def test_chunked_is_stable_for_long_strongly_decaying_chunks():
    # Log-decays summing to about -3800 inside one chunk: an exp-ratio form overflows here.
    q, k, v, g, beta, _ = _rule_inputs(t=256, dtype=torch.float32, decay=30.0)
    o_ref, final_ref = gated_delta_rule_sequential(q, k, v, g, beta)
    o, final = gated_delta_rule_chunked(q, k, v, g, beta, chunk_size=256)
    assert torch.isfinite(o).all() and torch.isfinite(final).all()
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final, final_ref, atol=1e-5, rtol=1e-5)


def test_delta_rule_overwrites_the_value_at_a_key():
    # No decay (g = 0) and full write strength (beta = 1): after writing v at the unit key k, the
    # state returns exactly v for k, whatever was stored there before (a plain linear attention
    # would return the old value plus v).
    q, k, v, _, _, state0 = _rule_inputs(t=1, dtype=torch.float64)
    zeros, ones = torch.zeros(2, 1, 3, dtype=torch.float64), torch.ones(2, 1, 3, dtype=torch.float64)
    _, state = gated_delta_rule_sequential(q, k, v, zeros, ones, initial_state=state0)
    read = torch.einsum("bhkv,bhk->bhv", state, k[:, 0])
    torch.testing.assert_close(read, v[:, 0])
    # beta = 0 writes nothing, g = 0 forgets nothing: the state passes through unchanged
    _, kept = gated_delta_rule_sequential(q, k, v, zeros, zeros, initial_state=state0)
    torch.testing.assert_close(kept, state0)


def test_decay_gate_forgets():
    q, k, v, g, beta, state0 = _rule_inputs(t=12, dtype=torch.float64)
    # alpha -> 0 (g -> -inf): the state holds only the current token's write, beta k vᵀ
    o, final = gated_delta_rule_chunked(q, k, v, torch.full_like(g, -1e4), beta, chunk_size=4, initial_state=state0)
    torch.testing.assert_close(final, beta[:, -1, :, None, None] * k[:, -1, :, :, None] * v[:, -1, :, None, :])
    expected = beta[..., None] * (q * k).sum(-1, keepdim=True) * v  # o_t = beta_t (k_t · q_t) v_t
    torch.testing.assert_close(o, expected)
    # a moderate decay shrinks the initial state's contribution geometrically
    _, final_small = gated_delta_rule_sequential(q * 0, k * 0, v * 0, torch.full_like(g, -0.5), beta, initial_state=state0)
    torch.testing.assert_close(final_small, state0 * torch.exp(torch.tensor(-0.5 * 12, dtype=torch.float64)))


def test_module_forgets_when_the_decay_is_strong():
    torch.manual_seed(0)
    module = GatedDeltaNet(GatedDeltaNetConfig(**SMALL), d_model=32).double()
    x = torch.randn(1, 16, 32, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 0] += 1.0  # token 0 reaches positions 0..d_conv-1 through the conv, later ones only through the state
    with torch.no_grad():
        assert not torch.allclose(module(x)[:, 8:], module(x2)[:, 8:])  # the default decay remembers
        module.A_log.fill_(30.0)  # A = -e^30: alpha = exp(A · dt) = 0
        torch.testing.assert_close(module(x)[:, 4:], module(x2)[:, 4:])


@pytest.mark.parametrize(
    ("cfg", "d_model"),
    [
        (GatedDeltaNetConfig(), 64),
        (GatedDeltaNetConfig(head_dim=16, n_heads=3, v_head_ratio=1, expand_v=2, d_conv=3), 64),
        (GatedDeltaNetConfig(head_dim=8, v_head_ratio=4), 40),
    ],
)
def test_analytic_param_count(cfg, d_model):
    module = GatedDeltaNet(cfg, d_model=d_model)
    assert cfg.n_params(d_model) == sum(p.numel() for p in module.parameters())


def test_registered_as_token_mixer_G():
    prim = REGISTRY["G"]
    assert prim.name == "gdn" and prim.module_cls is GatedDeltaNet and prim.config_cls is GatedDeltaNetConfig
    assert prim.mixes_sequence


@pytest.mark.parametrize("v_head_ratio", [1, 2])
def test_stateful_decoding_matches_full_forward(v_head_ratio):
    torch.manual_seed(0)
    cfg = GatedDeltaNetConfig(**SMALL, v_head_ratio=v_head_ratio)
    module = GatedDeltaNet(cfg, d_model=32).eval()
    x = torch.randn(2, 30, 32)
    with torch.no_grad():
        full = module(x)
        state = module.allocate_state(batch_size=2, max_len=30, device=x.device, dtype=x.dtype)
        assert isinstance(state, GatedDeltaNetState) and state.recurrent.dtype == torch.float32
        assert state.conv.shape == (2, cfg.conv_dim(32), cfg.d_conv - 1)
        assert state.recurrent.shape == (2, cfg.n_v_heads(32), cfg.head_dim, cfg.head_v_dim)
        pieces, start = [], 0
        for size in (5, 1, 1, 1, 2, 20):  # a prefill, single steps, then a chunk crossing chunk_size
            pieces.append(module(x[:, start : start + size], state=state))
            start += size
    assert start == 30
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    assert state.recurrent.abs().max() > 0  # the state was updated in place


def test_forward_backward_shapes_and_finite_grads():
    torch.manual_seed(0)
    module = GatedDeltaNet(GatedDeltaNetConfig(**SMALL), d_model=32)
    module.init_weights(std=0.02, out_std=0.01)
    x = torch.randn(3, 21, 32, requires_grad=True)
    y = module(x)
    assert y.shape == x.shape
    (y**2).mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_module_gradients_match_the_oracle_path(monkeypatch):
    """The whole module through the chunked form and through the step-by-step oracle: same gradients."""
    torch.manual_seed(0)
    module = GatedDeltaNet(GatedDeltaNetConfig(**SMALL), d_model=32).double()
    x = torch.randn(2, 19, 32, dtype=torch.float64)

    def grads():
        module.zero_grad()
        module(x).square().sum().backward()
        return {n: p.grad.clone() for n, p in module.named_parameters()}

    chunked = grads()
    monkeypatch.setattr(gdn_nn, "gated_delta_rule_chunked", lambda *a, chunk_size, **kw: gated_delta_rule_sequential(*a, **kw))
    sequential = grads()
    for name in chunked:
        torch.testing.assert_close(chunked[name], sequential[name], atol=1e-9, rtol=1e-9, msg=name)


def test_output_is_causal():
    torch.manual_seed(0)
    module = GatedDeltaNet(GatedDeltaNetConfig(**SMALL), d_model=32)
    x = torch.randn(1, 20, 32)
    x2 = x.clone()
    x2[:, 12:] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(module(x)[:, :12], module(x2)[:, :12])
        assert not torch.allclose(module(x)[:, 12:], module(x2)[:, 12:])


def test_float64():
    torch.manual_seed(0)
    module = GatedDeltaNet(GatedDeltaNetConfig(**SMALL), d_model=32).double()
    x = torch.randn(2, 13, 32, dtype=torch.float64, requires_grad=True)
    y = module(x)
    assert y.dtype == torch.float64
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())


def test_init_weights_ranges():
    cfg = GatedDeltaNetConfig(head_dim=4, impl="torch")
    torch.manual_seed(0)
    module = GatedDeltaNet(cfg, d_model=64)  # 16 query/key heads, 32 value heads
    module.init_weights(std=0.02, out_std=0.005)
    A = -torch.exp(module.A_log)
    assert ((-A >= cfg.a_init_min) & (-A <= cfg.a_init_max * (1 + 1e-6))).all()
    dt = F.softplus(module.dt_bias)
    assert (dt >= cfg.dt_min * (1 - 1e-5)).all() and (dt <= cfg.dt_max * (1 + 1e-5)).all()
    assert torch.equal(module.norm_weight, torch.ones_like(module.norm_weight))
    assert abs(module.out_proj.weight.std().item() - 0.005) < 0.001
    assert abs(module.in_proj.weight.std().item() - 0.02) < 0.002
    for p in (module.A_log, module.dt_bias):
        assert getattr(p, "_no_weight_decay", False)


def test_init_follows_the_torch_seed():
    cfg = GatedDeltaNetConfig(**SMALL)
    torch.manual_seed(0)
    first = GatedDeltaNet(cfg, d_model=32)
    torch.manual_seed(0)
    again = GatedDeltaNet(cfg, d_model=32)
    other = GatedDeltaNet(cfg, d_model=32)  # the RNG has moved on
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters()))
    assert not torch.equal(first.A_log, other.A_log) and not torch.equal(first.dt_bias, other.dt_bias)


# The implementation choice. fla is not installed on the CPU machines; the fakes below stand in for it.


def _fake_kernels(monkeypatch, *, unsafe: str | None = None):
    monkeypatch.setattr(gdn_nn, "_load_kernels", lambda: (object(), object(), object()))
    monkeypatch.setattr(gdn_nn, "_kernels_unsafe_on", lambda index: unsafe)


@pytest.mark.parametrize(
    ("capability", "triton", "tilelang", "unsafe"),
    [
        ((9, 0), "3.6.0", False, True),  # the H200 machine: torch 2.11's triton on Hopper
        ((9, 0), "3.4.0", False, True),
        ((9, 0), "3.7.0+git1a2b3c", False, True),
        ((9, 0), "3.6.0", True, False),  # fla's tilelang backend computes the backward
        ((9, 0), "3.7.1", False, False),
        ((9, 0), "3.9.0", False, False),
        ((9, 0), "3.3.1", False, False),  # before the regression
        ((8, 0), "3.6.0", False, False),  # Ampere
        ((10, 0), "3.6.0", False, False),  # Blackwell
    ],
)
def test_kernels_unsafe_only_on_hopper_with_the_bad_triton(capability, triton, tilelang, unsafe):
    reason = gdn_kernels_unsafe(capability, triton, tilelang)
    assert (reason is not None) == unsafe
    if unsafe:
        assert "#640" in reason and triton in reason and "tilelang" in reason and "\n" not in reason


def test_auto_falls_back_to_torch_where_the_kernels_are_unsafe(monkeypatch):
    reason = gdn_kernels_unsafe((9, 0), "3.6.0", False)
    _fake_kernels(monkeypatch, unsafe=reason)
    module = GatedDeltaNet(GatedDeltaNetConfig(**{**SMALL, "impl": "auto"}), d_model=32)
    assert module._resolve(torch.device("cuda"), grad=True) == (False, f"torch ({reason})")
    # fla's forward is right there: without autograd (evaluation, prefill, decoding) auto takes it
    assert module._resolve(torch.device("cuda"), grad=False) == (True, "fla (without autograd; training runs torch)")
    assert module.describe_impl("cuda") == f"torch ({reason}); without autograd: fla"
    assert module.describe_impl("cpu") == "torch (cpu)"


def test_forward_resolves_with_its_grad_mode(monkeypatch):
    module = GatedDeltaNet(GatedDeltaNetConfig(**{**SMALL, "impl": "auto"}), d_model=32)
    seen = []
    monkeypatch.setattr(module, "_resolve", lambda device, *, grad: seen.append(grad) or (False, "torch (test)"))
    x = torch.randn(1, 4, 32)
    module(x)
    with torch.no_grad():
        module(x)
    with torch.inference_mode():
        module(x)
    assert seen == [True, False, False]


def test_auto_picks_fla_where_safe_and_kernels_refuses_where_unsafe(monkeypatch):
    _fake_kernels(monkeypatch, unsafe=None)
    assert GatedDeltaNet(GatedDeltaNetConfig(**{**SMALL, "impl": "auto"}), d_model=32).describe_impl("cuda") == "fla"
    module = GatedDeltaNet(GatedDeltaNetConfig(**{**SMALL, "impl": "kernels"}), d_model=32)
    assert module.describe_impl("cuda") == "fla"
    _fake_kernels(monkeypatch, unsafe=gdn_kernels_unsafe((9, 0), "3.6.0", False))
    with pytest.raises(KernelUnavailableError, match=r"refused: fla's backward gives wrong gradients") as info:
        module.describe_impl("cuda")
    assert "\n" not in str(info.value)


def test_kernels_on_cpu_refused_in_one_line(monkeypatch):
    _fake_kernels(monkeypatch)
    module = GatedDeltaNet(GatedDeltaNetConfig(**{**SMALL, "impl": "kernels"}), d_model=32)
    with pytest.raises(KernelUnavailableError, match="runs on CUDA only") as info:
        module(torch.randn(1, 4, 32))
    assert "\n" not in str(info.value)


def test_an_fla_older_than_its_call_convention_is_refused_by_name(monkeypatch):
    """fla before 0.6 takes the raw gates composer passes into **kwargs or not at all (it would read them as
    decays): `kernels` is refused naming the version, `auto` trains on the torch path and says why."""
    import sys
    import types

    monkeypatch.setitem(sys.modules, "fla", types.SimpleNamespace(__version__="0.5.2"))
    monkeypatch.setattr(once, "_RESULTS", {})
    with pytest.raises(KernelUnavailableError, match=r"fla 0\.5\.2 is older than 0\.6\.0.*pip install") as info:
        GatedDeltaNet(GatedDeltaNetConfig(**{**SMALL, "impl": "kernels"}), d_model=32)
    assert "\n" not in str(info.value)
    auto = GatedDeltaNet(GatedDeltaNetConfig(**{**SMALL, "impl": "auto"}), d_model=32)
    assert auto.describe_impl("cuda").startswith("torch (fla 0.5.2 is older than 0.6.0")


# Both mixers' kernel imports (Mamba-2's too), stored in primitives.nn.once: a broken package on CUDA, as fla
# with tilelang missing libz3 on the H200, must give the torch path under torch.compile, not a Dynamo error.


class _BrokenPackages:
    """A meta path finder for which importing the given packages raises `error`: by default the OSError fla
    raised on the H200; ModuleNotFoundError stands for a package that is not installed (the tests' own
    machines have fla-core, for tests/test_gdn_fla_interpreter.py)."""

    def __init__(self, roots: set[str], error: Exception) -> None:
        self.roots, self.error, self.calls = roots, error, 0

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.roots:
            self.calls += 1
            raise self.error
        return None


_MIXERS = pytest.mark.parametrize(
    ("nn_module", "make", "roots"),
    [
        (gdn_nn, lambda: GatedDeltaNet(GatedDeltaNetConfig(**{**SMALL, "impl": "auto"}), d_model=32), {"fla"}),
        (mamba2_nn, lambda: Mamba2(Mamba2Config(d_state=8, head_dim=8), d_model=32), {"causal_conv1d", "mamba_ssm"}),
    ],
    ids=["gdn", "mamba2"],
)


def _break(monkeypatch, roots: set[str], error: Exception | None = None) -> _BrokenPackages:
    """Importing `roots` raises `error` (OSError by default) from now on, and no import result is stored yet."""
    broken = _BrokenPackages(roots, error or OSError("libz3.so.4.15: cannot open shared object file"))
    monkeypatch.setattr(sys, "meta_path", [broken, *sys.meta_path])
    for name in [name for name in sys.modules if name.partition(".")[0] in roots]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(once, "_RESULTS", {})
    return broken


@_MIXERS
def test_broken_kernel_package_falls_back_under_compile(monkeypatch, nn_module, make, roots):
    broken = _break(monkeypatch, roots)
    assert nn_module._load_kernels().endswith("not installed: libz3.so.4.15: cannot open shared object file")

    def step(x):  # Dynamo traced through functools.cache: it re-ran the import and raised InternalTorchDynamoError
        return x + 1 if isinstance(nn_module._load_kernels(), str) else x - 1

    assert torch.equal(torch.compile(step, fullgraph=True, backend="eager")(torch.zeros(3)), torch.ones(3))
    assert broken.calls == 1


@_MIXERS
def test_kernel_package_imported_at_construction_with_cuda_only(monkeypatch, nn_module, make, roots):
    broken = _break(monkeypatch, roots)
    for cuda in (False, True):
        with monkeypatch.context() as patch:
            patch.setattr(torch.cuda, "is_available", lambda: cuda)
            module = make()
        assert broken.calls == int(cuda)  # with CUDA, the import runs here, outside compiled code
    assert module.describe_impl("cuda") == f"torch ({nn_module._load_kernels()})"
    assert broken.calls == 1


def test_kernels_requested_but_missing_fails_loudly(monkeypatch):
    _break(monkeypatch, {"fla"}, ModuleNotFoundError("No module named 'fla'"))
    with pytest.raises(KernelUnavailableError, match=r"fla not installed: No module named 'fla'; install with pip") as info:
        GatedDeltaNet(GatedDeltaNetConfig(impl="kernels"), d_model=64)
    assert "\n" not in str(info.value)
    assert GatedDeltaNet(GatedDeltaNetConfig(), d_model=64).describe_impl("cuda").startswith("torch (fla not installed")


def test_auto_on_cpu_runs_torch_and_says_so(caplog, monkeypatch):
    monkeypatch.setattr(once, "_RESULTS", {})  # nothing logged yet in this process
    module = GatedDeltaNet(GatedDeltaNetConfig(**{**SMALL, "impl": "auto"}), d_model=32)
    other = GatedDeltaNet(GatedDeltaNetConfig(**{**SMALL, "impl": "auto"}), d_model=32)
    assert module.describe_impl(torch.device("cpu")) == "torch (cpu)"
    with caplog.at_level(logging.INFO, logger="primitives.nn.gdn"):
        module(torch.randn(1, 4, 32))
        module(torch.randn(1, 4, 32))
        other(torch.randn(1, 4, 32))
    messages = [r.getMessage() for r in caplog.records if r.name == "primitives.nn.gdn"]
    assert messages == ["gdn mixer runs torch (cpu)"]  # once, not per call or per layer


def test_torch_impl_is_reported():
    module = GatedDeltaNet(GatedDeltaNetConfig(**SMALL), d_model=32)
    assert module.describe_impl("cuda") == "torch (impl='torch')"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"impl": "triton"}, "impl"),
        ({"head_dim": 0}, "head_dim"),
        ({"n_heads": 0}, "n_heads"),
        ({"v_head_ratio": 1.5}, "v_head_ratio"),
        ({"expand_v": -1}, "expand_v"),
        ({"chunk_size": 2.5}, "chunk_size"),
        ({"dt_min": 0.5, "dt_max": 0.1}, "dt_min"),
        ({"a_init_min": 0.0}, "a_init_min"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GatedDeltaNetConfig(**kwargs)


def test_width_not_divisible_by_head_dim():
    cfg = GatedDeltaNetConfig(head_dim=32)
    with pytest.raises(ConfigError, match=r"d_model = 40 is not divisible by head_dim = 32"):
        GatedDeltaNet(cfg, d_model=40)
    assert GatedDeltaNetConfig(head_dim=32, n_heads=1).n_params(40) > 0  # explicit heads: any width


def test_spec_imports_no_torch():
    code = ("import sys; from primitives.gdn import GatedDeltaNetConfig as C; c = C(); "
            "c.n_params(128); c.forward_flops_per_token(128, seq_len=100); c.inference_flops_per_token(128, context=9); "
            "c.state_bytes(128, context=9, dtype_bytes=2); assert 'torch' not in sys.modules, 'torch was imported'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def test_the_bf16_probe_without_a_gpu_says_so_in_one_line():
    """benchmarks/gdn_probe.py (issue 16's hang or long tuning) needs CUDA and fla: elsewhere one line, exit 2."""
    import subprocess
    import sys
    from pathlib import Path

    probe = Path(__file__).parents[1] / "benchmarks" / "gdn_probe.py"
    proc = subprocess.run([sys.executable, str(probe), "--head-dims", "64"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("gdn_probe.py: needs CUDA and flash-linear-attention (")
