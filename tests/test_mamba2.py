"""Mamba-2 mixer: the chunked SSD scan against the step-by-step oracle, parameter counts, stateful
decoding against the full forward, gradients, and the explicit choice of implementation."""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch

from composer.errors import KernelUnavailableError
from primitives.mamba2 import Mamba2Config
from primitives.nn.mamba2 import Mamba2, Mamba2State, ssd_chunked, ssd_sequential
from primitives.registry import REGISTRY

HAS_MAMBA_SSM = importlib.util.find_spec("mamba_ssm") is not None
SMALL = dict(d_state=8, head_dim=8, chunk_size=8, impl="torch")


def _scan_inputs(*, b=2, t=37, h=4, p=3, g=1, n=5, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, h, p, generator=gen, dtype=dtype)
    dt = torch.nn.functional.softplus(torch.randn(b, t, h, generator=gen, dtype=dtype) - 1.0)  # ~0.05..2
    A = -torch.empty(h, dtype=dtype).uniform_(0.5, 4.0, generator=gen)
    B = torch.randn(b, t, g, n, generator=gen, dtype=dtype) * 0.5
    C = torch.randn(b, t, g, n, generator=gen, dtype=dtype) * 0.5
    state0 = torch.randn(b, h, p, n, generator=gen, dtype=dtype)
    return x, dt, A, B, C, state0


@pytest.mark.parametrize("chunk_size", [1, 4, 16, 64])
@pytest.mark.parametrize("t", [37, 50, 64])
@pytest.mark.parametrize("n_groups", [1, 2])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_scan_matches_sequential(chunk_size, t, n_groups, with_state):
    x, dt, A, B, C, state0 = _scan_inputs(t=t, g=n_groups, seed=chunk_size + t)
    initial = state0 if with_state else None
    y_ref, final_ref = ssd_sequential(x, dt, A, B, C, initial_state=initial)
    y, final = ssd_chunked(x, dt, A, B, C, chunk_size=chunk_size, initial_state=initial)
    assert y.shape == x.shape and final.shape == final_ref.shape
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final, final_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("t", [32, 29])  # a whole chunk, and one padded to it
def test_one_chunk_from_no_state_is_the_general_path_bit_for_bit(t):
    """With one chunk and no initial state the scan skips the across-chunk steps (nothing enters the chunk): its
    output and final state equal the general path's from a zero state exactly, its gradients within rounding (the
    general path sums a gradient's terms in another order)."""
    x, dt, A, B, C, _ = _scan_inputs(t=t, g=2, seed=t)
    leaves = [v.clone().requires_grad_() for v in (x, dt, B, C)]
    outs = {}
    for name, initial in (("short", None), ("general", torch.zeros(2, 4, 3, 5))):
        inputs = [v.detach().clone().requires_grad_() for v in leaves]
        y, final = ssd_chunked(inputs[0], inputs[1], A, inputs[2], inputs[3], chunk_size=32, initial_state=initial)
        (y.square().sum() + final.sum()).backward()
        outs[name] = [y, final, *(v.grad for v in inputs)]
    assert torch.equal(outs["short"][0], outs["general"][0]) and torch.equal(outs["short"][1], outs["general"][1])
    for a, b in zip(outs["short"][2:], outs["general"][2:]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_scan_groups_share_b_and_c_per_contiguous_heads():
    # With 2 groups of 2 heads, heads 0-1 read group 0: zeroing group 1's B leaves them unchanged.
    x, dt, A, B, C, _ = _scan_inputs(h=4, g=2)
    y, _ = ssd_chunked(x, dt, A, B, C, chunk_size=8)
    B2 = B.clone()
    B2[:, :, 1] = 0
    y2, _ = ssd_chunked(x, dt, A, B2, C, chunk_size=8)
    torch.testing.assert_close(y2[:, :, :2], y[:, :, :2])
    assert y2[:, :, 2:].abs().max() == 0


def test_scan_is_stable_for_long_strongly_decaying_chunks():
    # Big log-decays inside one chunk: a cumsum-difference or exp-ratio formulation overflows here.
    x, dt, A, B, C, _ = _scan_inputs(t=256, h=2)
    dt = dt * 20
    y_ref, final_ref = ssd_sequential(x, dt, A, B, C)
    y, final = ssd_chunked(x, dt, A, B, C, chunk_size=256)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final, final_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("cfg", "d_model"),
    [
        (Mamba2Config(), 64),
        (Mamba2Config(d_state=16, head_dim=16, expand=3, d_conv=3, n_groups=2), 64),
    ],
)
def test_analytic_param_count(cfg, d_model):
    module = Mamba2(cfg, d_model=d_model)
    assert cfg.n_params(d_model) == sum(p.numel() for p in module.parameters())


def test_registered_as_token_mixer_M():
    prim = REGISTRY["M"]
    assert prim.name == "mamba2" and prim.module_cls is Mamba2 and prim.config_cls is Mamba2Config
    assert prim.mixes_sequence


@pytest.mark.parametrize("n_groups", [1, 2])
def test_stateful_decoding_matches_full_forward(n_groups):
    torch.manual_seed(0)
    cfg = Mamba2Config(**SMALL, n_groups=n_groups)
    module = Mamba2(cfg, d_model=32).eval()
    x = torch.randn(2, 30, 32)
    with torch.no_grad():
        full = module(x)
        state = module.allocate_state(batch_size=2, max_len=30, device=x.device, dtype=x.dtype)
        assert isinstance(state, Mamba2State) and state.ssm.dtype == torch.float32
        assert state.conv.shape == (2, cfg.conv_dim(32), cfg.d_conv - 1)
        pieces, start = [], 0
        for size in (5, 1, 1, 1, 2, 20):  # a prefill, single steps, then chunks crossing chunk_size
            pieces.append(module(x[:, start : start + size], state=state))
            start += size
    assert start == 30
    stepped = torch.cat(pieces, dim=1)
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=1e-5)
    assert state.ssm.abs().max() > 0  # the state was updated in place


def test_forward_backward_shapes_and_finite_grads():
    torch.manual_seed(0)
    module = Mamba2(Mamba2Config(**SMALL), d_model=32)
    module.init_weights(std=0.02, out_std=0.01)
    x = torch.randn(3, 21, 32, requires_grad=True)
    y = module(x)
    assert y.shape == x.shape
    (y**2).mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_output_is_causal():
    torch.manual_seed(0)
    module = Mamba2(Mamba2Config(**SMALL), d_model=32)
    x = torch.randn(1, 20, 32)
    x2 = x.clone()
    x2[:, 12:] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(module(x)[:, :12], module(x2)[:, :12])
        assert not torch.allclose(module(x)[:, 12:], module(x2)[:, 12:])


def test_float64():
    torch.manual_seed(0)
    module = Mamba2(Mamba2Config(**SMALL), d_model=32).double()
    x = torch.randn(2, 13, 32, dtype=torch.float64, requires_grad=True)
    y = module(x)
    assert y.dtype == torch.float64
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())


def test_init_weights_ranges():
    cfg = Mamba2Config(d_state=8, head_dim=4, impl="torch")
    torch.manual_seed(0)
    module = Mamba2(cfg, d_model=64)  # 32 heads
    module.init_weights(std=0.02, out_std=0.005)
    A = -torch.exp(module.A_log)
    assert ((-A >= cfg.a_init_min) & (-A <= cfg.a_init_max)).all()
    dt = torch.nn.functional.softplus(module.dt_bias)
    assert (dt >= cfg.dt_min * (1 - 1e-5)).all() and (dt <= cfg.dt_max * (1 + 1e-5)).all()
    assert torch.equal(module.D, torch.ones_like(module.D))
    assert torch.equal(module.norm_weight, torch.ones_like(module.norm_weight))
    assert abs(module.out_proj.weight.std().item() - 0.005) < 0.001
    assert abs(module.in_proj.weight.std().item() - 0.02) < 0.002
    for p in (module.A_log, module.dt_bias, module.D):
        assert getattr(p, "_no_weight_decay", False)


def test_init_follows_the_torch_seed():
    cfg = Mamba2Config(**SMALL)
    torch.manual_seed(0)
    first = Mamba2(cfg, d_model=32)
    torch.manual_seed(0)
    again = Mamba2(cfg, d_model=32)
    other = Mamba2(cfg, d_model=32)  # the RNG has moved on
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters()))
    assert not torch.equal(first.A_log, other.A_log) and not torch.equal(first.dt_bias, other.dt_bias)


@pytest.mark.skipif(HAS_MAMBA_SSM, reason="mamba-ssm is installed here")
def test_kernels_requested_but_missing_fails_loudly():
    with pytest.raises(KernelUnavailableError, match="pip install"):
        Mamba2(Mamba2Config(impl="kernels"), d_model=64)


def test_auto_on_cpu_runs_torch_and_says_so(caplog, monkeypatch):
    import primitives.nn.once

    monkeypatch.setattr(primitives.nn.once, "_RESULTS", {})  # nothing logged yet in this process
    module = Mamba2(Mamba2Config(**{**SMALL, "impl": "auto"}), d_model=32)
    other = Mamba2(Mamba2Config(**{**SMALL, "impl": "auto"}), d_model=32)
    assert module.describe_impl("cpu").startswith("torch")
    assert module.describe_impl(torch.device("cpu")).startswith("torch")
    assert module.describe_impl("cpu") == "torch (cpu)"
    with caplog.at_level(logging.INFO, logger="primitives.nn.mamba2"):
        module(torch.randn(1, 4, 32))
        module(torch.randn(1, 4, 32))
        other(torch.randn(1, 4, 32))
    messages = [r.getMessage() for r in caplog.records if r.name == "primitives.nn.mamba2"]
    assert messages == ["mamba2 mixer runs torch (cpu)"]  # once, not per call or per layer


def test_torch_impl_is_reported():
    module = Mamba2(Mamba2Config(**SMALL), d_model=32)
    assert module.describe_impl("cpu").startswith("torch")
    assert module.describe_impl("cuda") == "torch (impl='torch')"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"impl": "triton"}, "impl"),
        ({"d_state": 0}, "d_state"),
        ({"head_dim": -4}, "head_dim"),
        ({"chunk_size": 2.5}, "chunk_size"),
        ({"dt_min": 0.5, "dt_max": 0.1}, "dt_min"),
        ({"a_init_min": 0.0}, "a_init_min"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Mamba2Config(**kwargs)


def test_width_not_divisible_by_head_dim():
    cfg = Mamba2Config(head_dim=32)  # d_inner = 2 * 40 = 80
    with pytest.raises(ValueError, match=r"head_dim = 32") as info:
        Mamba2(cfg, d_model=40)
    assert "80" in str(info.value)
    with pytest.raises(ValueError, match="head_dim"):
        cfg.n_params(40)
    with pytest.raises(ValueError, match="n_groups"):
        Mamba2Config(head_dim=16, n_groups=3).n_heads(32)  # 4 heads into 3 groups


def _conv_like_causal_conv1d(x, weight, bias, activation):  # causal_conv1d_fn's contract: (B, C, T) -> (B, C, T)
    y = torch.nn.functional.conv1d(torch.nn.functional.pad(x, (weight.shape[-1] - 1, 0)), weight[:, None], bias,
                                   groups=x.shape[1])
    return torch.nn.functional.silu(y) if activation == "silu" else y


def _scan_like_mamba_ssm(x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus, initial_states, return_final_states):
    # mamba_chunk_scan_combined's contract (raw dt, softplus inside, D skip added), from the reference scan
    f = torch.promote_types(x.dtype, torch.float32)  # as the kernel: float32 at least (float64 here)
    dt = torch.nn.functional.softplus(dt.to(f) + dt_bias.to(f))
    y, final = ssd_chunked(x.to(f), dt, A.to(f), B.to(f), C.to(f), chunk_size=chunk_size,
                           initial_state=None if initial_states is None else initial_states.to(f))
    y = (y + D.to(f)[:, None] * x.to(f)).to(x.dtype)
    return (y, final) if return_final_states else y


def test_the_kernel_path_s_prefill_carries_the_state_like_the_torch_path(monkeypatch):
    # The wiring of a stateful prefill through the kernels (the conv over the state's last inputs, the scan from
    # its state, both written back), with the kernels' contracts played by reference functions: on a GPU,
    # tests/gpu/test_kernel_parity.py checks the kernels themselves
    monkeypatch.setattr("primitives.nn.mamba2._load_kernels", lambda: (_conv_like_causal_conv1d, _scan_like_mamba_ssm))
    torch.manual_seed(0)
    module = Mamba2(Mamba2Config(impl="torch", d_state=8, head_dim=8, chunk_size=8), d_model=32).double()
    x = torch.randn(2, 37, 32, dtype=torch.float64)
    full = module(x)
    for split in (1, 2, 20):  # shorter than the conv's history (d_conv - 1 = 3), and longer
        state = module.allocate_state(batch_size=2, max_len=37, device="cpu", dtype=torch.float64)
        ref = module.allocate_state(batch_size=2, max_len=37, device="cpu", dtype=torch.float64)
        with torch.no_grad():
            pieces = [module._forward_kernels(x[:, :split], state), module._forward_kernels(x[:, split:30], state)]
            torch_pieces = [module(x[:, :split], ref), module(x[:, split:30], ref)]
        torch.testing.assert_close(torch.cat(pieces, 1), full[:, :30], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(torch.cat(torch_pieces, 1), full[:, :30], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(state.ssm, ref.ssm, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(state.conv, ref.conv, rtol=0, atol=0)
        with torch.no_grad():  # decoding goes on from the state the kernels left
            steps = torch.cat([module(x[:, t : t + 1], state) for t in range(30, 37)], 1)
        torch.testing.assert_close(steps, full[:, 30:], rtol=1e-9, atol=1e-9)
