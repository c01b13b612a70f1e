"""Attention against a naive softmax implementation written here from the definitions."""

import math

import pytest
import torch

from composer.errors import KernelUnavailableError
from primitives.attention import AttentionConfig
from primitives.nn.attention import Attention, causal_mask, rope

D_MODEL = 48


def naive_attention(module: Attention, x: torch.Tensor) -> torch.Tensor:
    cfg, hd = module.cfg, module.hd
    B, T, _ = x.shape
    q, k, v = module.qkv(x).split([cfg.n_heads * hd, cfg.kv_heads * hd, cfg.kv_heads * hd], dim=-1)
    q, k, v = q.view(B, T, cfg.n_heads, hd), k.view(B, T, cfg.kv_heads, hd), v.view(B, T, cfg.kv_heads, hd)
    if cfg.qk_norm:
        q, k = module.q_norm(q), module.k_norm(k)
    if cfg.rope_theta is not None:
        q, k = naive_rope(q, cfg.rope_theta), naive_rope(k, cfg.rope_theta)
    group = cfg.n_heads // cfg.kv_heads
    out = torch.zeros(B, T, cfg.n_heads, hd)
    for h in range(cfg.n_heads):
        kv = h // group  # query head h reads key/value head h // group
        scores = q[:, :, h] @ k[:, :, kv].transpose(1, 2) / math.sqrt(hd)  # (B, T, T)
        for i in range(T):
            for j in range(T):
                if j > i or (cfg.window is not None and j <= i - cfg.window):
                    scores[:, i, j] = float("-inf")
        out[:, :, h] = torch.softmax(scores, dim=-1) @ v[:, :, kv]
    return module.out_proj(out.reshape(B, T, -1))


def naive_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate each pair (i, i + hd/2) by angle pos * theta^(-2i/hd), one position at a time."""
    out = x.clone()
    half = x.shape[-1] // 2
    for pos in range(x.shape[1]):
        for i in range(half):
            angle = pos * theta ** (-2 * i / x.shape[-1])
            a, b = x[:, pos, :, i], x[:, pos, :, i + half]
            out[:, pos, :, i] = a * math.cos(angle) - b * math.sin(angle)
            out[:, pos, :, i + half] = a * math.sin(angle) + b * math.cos(angle)
    return out


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"n_heads": 6, "n_kv_heads": 2},  # GQA
        {"n_heads": 6, "n_kv_heads": 1, "window": 4},  # MQA + sliding window
        {"rope_theta": None},  # NoPE
        {"n_heads": 4, "n_kv_heads": 2, "window": 1, "qk_norm": True, "rope_theta": 500_000.0},
        {"n_heads": 3, "head_dim": 8, "backend": "math"},
    ],
)
def test_matches_naive_softmax(settings):
    torch.manual_seed(0)
    module = Attention(AttentionConfig(**settings), d_model=D_MODEL)
    x = torch.randn(2, 13, D_MODEL)
    torch.testing.assert_close(module(x), naive_attention(module, x), rtol=1e-5, atol=1e-5)


def test_rope_matches_pairwise_rotation():
    x = torch.randn(2, 9, 3, 16)
    torch.testing.assert_close(rope(x, start=0, theta=10_000.0), naive_rope(x, 10_000.0), rtol=1e-5, atol=1e-5)


def test_rope_is_relative():
    """q·k depends only on the distance between positions."""
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    dots = [(rope(q, start=s + 5, theta=1e4) * rope(k, start=s, theta=1e4)).sum() for s in (0, 7, 100)]
    torch.testing.assert_close(dots[0], dots[1])
    torch.testing.assert_close(dots[0], dots[2])


def test_sliding_window_forgets_far_tokens():
    torch.manual_seed(0)
    module = Attention(AttentionConfig(window=3, rope_theta=None), d_model=D_MODEL)
    x = torch.randn(1, 10, D_MODEL)
    x2 = x.clone()
    x2[:, 0] += 5.0  # position 0 is outside the window of positions >= 3
    torch.testing.assert_close(module(x)[:, 3:], module(x2)[:, 3:])
    assert not torch.allclose(module(x)[:, 2], module(x2)[:, 2])


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="n_kv_heads"):
        AttentionConfig(n_heads=6, n_kv_heads=4)
    with pytest.raises(ValueError, match="backend"):
        AttentionConfig(backend="fastest")
    with pytest.raises(ValueError, match="n_heads"):
        AttentionConfig(n_heads=5).head_size(48)


def test_gpu_only_backends_fail_clearly_on_cpu():
    module = Attention(AttentionConfig(backend="cudnn"), d_model=D_MODEL)
    with pytest.raises(KernelUnavailableError, match="needs CUDA"):
        module(torch.randn(1, 4, D_MODEL))


def test_flash_attn_backend_without_the_package_says_how_to_install():
    # flash-attn is a CUDA-only extra, never installed on CPU machines
    with pytest.raises(KernelUnavailableError, match="pip install"):
        Attention(AttentionConfig(backend="flash_attn"), d_model=D_MODEL)


@pytest.mark.parametrize("T, window, kv", [(8, 4, 6), (13, 4, 2), (40, 7, 1), (64, 16, 3)])
def test_a_long_sequence_under_a_window_is_attended_in_blocks_as_the_dense_mask_does(T, window, kv):
    # From 2 · window tokens on, the window runs block by block (O(T · window)); the dense T x T mask it
    # replaces is the reference, for values and gradients, at lengths that are no multiple of the window.
    torch.manual_seed(0)
    module = Attention(AttentionConfig(n_heads=6, n_kv_heads=kv, window=window), d_model=D_MODEL).double()
    q, k, v = (torch.randn(2, T, h, module.hd, dtype=torch.float64, requires_grad=True) for h in (6, kv, kv))
    blocked = module._attend(q, k, v, q_offset=0)
    dense = module._sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal_mask(
        T, T, q_offset=0, window=window, device=q.device)).transpose(1, 2)
    torch.testing.assert_close(blocked, dense, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(blocked)
    torch.testing.assert_close(torch.autograd.grad(blocked, (q, k, v), grad),
                               torch.autograd.grad(dense, (q, k, v), grad), rtol=1e-12, atol=1e-12)
