"""primitives.nn.conv: the short causal conv of Mamba-2 and Gated DeltaNet (pure-PyTorch paths) as shifted sums,
against torch's depthwise conv1d; chunked calls through its state against one call; compiled, one fused graph."""

import re

import pytest
import torch
import torch.nn.functional as F

from primitives.nn.conv import causal_conv_silu


def reference(x, weight, bias):
    """silu(depthwise conv1d) over time, zeros before the start: x (B, T, C) -> (B, T, C), in float64."""
    k = weight.shape[-1]
    xt = F.pad(x.double().transpose(1, 2), (k - 1, 0))  # (B, C, K - 1 + T)
    y = F.conv1d(xt, weight.double(), None if bias is None else bias.double(), groups=x.shape[-1])
    return F.silu(y).transpose(1, 2)


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("with_bias", [True, False])
def test_equals_a_depthwise_conv1d(k, with_bias):
    torch.manual_seed(k)
    x, weight = torch.randn(3, 17, 24), torch.randn(24, 1, k)
    bias = torch.randn(24) if with_bias else None
    y = causal_conv_silu(x, weight, bias)
    assert y.shape == x.shape and y.dtype == x.dtype
    torch.testing.assert_close(y.double(), reference(x, weight, bias), rtol=1e-5, atol=1e-6)
    # causal: the first 9 outputs do not see what comes after them
    x2 = x.clone()
    x2[:, 9:] = torch.randn_like(x2[:, 9:])
    assert torch.equal(causal_conv_silu(x2, weight, bias)[:, :9], y[:, :9])


def test_gradients_equal_the_conv1d_s():
    torch.manual_seed(0)
    x, weight, bias = (torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in ((2, 11, 8), (8, 1, 4), (8,)))
    g = torch.randn(2, 11, 8, dtype=torch.float64)
    ours = torch.autograd.grad((causal_conv_silu(x, weight, bias) * g).sum(), (x, weight, bias))
    theirs = torch.autograd.grad((reference(x, weight, bias) * g).sum(), (x, weight, bias))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_calls_through_the_state_equal_one_call():
    """Three chunks (one shorter than the kernel) and single steps, the state carried, as decoding does: the outputs
    of one call over the whole, and the state ends holding the last K - 1 inputs, channel-first."""
    torch.manual_seed(1)
    x, weight, bias = torch.randn(2, 12, 6), torch.randn(6, 1, 4), torch.randn(6)
    whole = causal_conv_silu(x, weight, bias)
    state = torch.zeros(2, 6, 3)
    parts = [causal_conv_silu(x[:, a:b], weight, bias, state) for a, b in ((0, 5), (5, 7), (7, 10), (10, 11), (11, 12))]
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, rtol=1e-6, atol=1e-7)  # the same sums, other vector lanes
    assert torch.equal(state, x[:, -3:].transpose(1, 2))


def test_half_precision_input_sums_in_float32_and_returns_its_dtype():
    torch.manual_seed(2)
    x, weight, bias = torch.randn(2, 9, 16, dtype=torch.bfloat16), torch.randn(16, 1, 4), torch.randn(16)
    y = causal_conv_silu(x, weight, bias)
    assert y.dtype == torch.bfloat16
    exact = reference(x, weight, bias)  # of x's bf16 values
    # within one rounding to bf16 of the exact result (a bf16 sum would be off by several)
    torch.testing.assert_close(y.double(), exact, rtol=2**-8, atol=1e-6)


def test_compiled_it_is_one_graph_with_no_convolution():
    """What it is for: under torch.compile no library convolution is left, and the output equals eager."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(3)
    x, weight, bias = torch.randn(2, 16, 32), torch.randn(32, 1, 4), torch.randn(32)
    torch._dynamo.reset()
    compiled = torch.compile(causal_conv_silu, fullgraph=True)
    y, codes = run_and_get_code(compiled, x, weight, bias)
    torch.testing.assert_close(y, causal_conv_silu(x, weight, bias), rtol=1e-5, atol=1e-6)
    calls = [line for code in codes for line in code.splitlines() if re.search(r"^\s+\w+ = extern_kernels\.", line)]
    assert not [c for c in calls if "convolution" in c], calls
    # a conv1d compiled the same way is a library call: what this replaces
    torch._dynamo.reset()
    _, conv_codes = run_and_get_code(torch.compile(lambda a: F.conv1d(a, weight, bias, groups=32)), x.transpose(1, 2))
    assert any("extern_kernels.convolution" in code for code in conv_codes)
