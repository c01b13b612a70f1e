"""Kernel paths against the reference paths, on CUDA only (collected only where a GPU is present).

Tolerances: relative max error, max|fast - ref| / max|ref|, with the reference computed in fp32
(fp64 for attention), TF32 off:
  fp32: 5e-3 (mamba-ssm's Triton scan sums the A_log and dt_bias gradients, each over B·T·P terms,
        in another order: 1.5e-3 seen on H100; outputs and other gradients agree to ~1e-4)
  bf16: 2e-2 (bf16 has 8 bits of mantissa: 2^-8 = 0.4% per rounding, several roundings deep)
"""

import pytest
import torch

from composer.config import ModelConfig
from composer.errors import KernelUnavailableError
from composer.model import build_model
from primitives.attention import AttentionConfig
from primitives.mamba2 import Mamba2Config
from primitives.nn.attention import Attention
from primitives.nn.mamba2 import Mamba2
from tests.gpu.parity import no_tf32, rel_err  # noqa: F401  (no_tf32: an autouse fixture)

DEVICE = torch.device("cuda")
TOL = {torch.float32: 5e-3, torch.bfloat16: 2e-2}


def _forward_backward(module, x):
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    (y.float() * torch.linspace(-1, 1, y.shape[-1], device=y.device)).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters()}
    return y.detach(), x.grad.detach(), grads


def _compare(fast_module, ref_module, x, dtype, ref_dtype):
    y, gx, gp = _forward_backward(fast_module.to(dtype), x.to(dtype))
    y_ref, gx_ref, gp_ref = _forward_backward(ref_module.to(ref_dtype), x.to(ref_dtype))
    errors = {"out": rel_err(y, y_ref), "grad_x": rel_err(gx, gx_ref)}
    errors.update({f"grad_{n}": rel_err(gp[n], gp_ref[n]) for n in gp})
    print({k: f"{v:.2e}" for k, v in errors.items()})  # quoted in the device run's log
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL[dtype], f"{worst}: {errors[worst]:.3e} > {TOL[dtype]:.0e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("settings", [{}, {"n_groups": 2, "d_state": 128, "head_dim": 64, "chunk_size": 128}])
def test_mamba_ssm_kernels_match_the_torch_scan(dtype, settings):
    torch.manual_seed(0)
    ref = Mamba2(Mamba2Config(impl="torch", **settings), d_model=256).to(DEVICE)
    fast = Mamba2(Mamba2Config(impl="kernels", **settings), d_model=256).to(DEVICE)
    fast.load_state_dict(ref.state_dict())
    assert fast.describe_impl(DEVICE).startswith("mamba-ssm")
    x = torch.randn(2, 300, 256, device=DEVICE)  # 300: not a multiple of the chunk size
    _compare(fast, ref, x, dtype, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_stateful_prefill_with_the_kernels_matches_the_torch_path(dtype):
    # composer-bench's prefill: chunks of a prompt into a state (the second starts from the first's conv inputs
    # and scan state), then decoding steps (the torch recurrence on both sides)
    torch.manual_seed(0)
    ref = Mamba2(Mamba2Config(impl="torch"), d_model=256).to(DEVICE)
    fast = Mamba2(Mamba2Config(impl="kernels"), d_model=256).to(DEVICE, dtype)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 260, 256, device=DEVICE)
    outs, states = [], []
    for module, inp in ((fast, x.to(dtype)), (ref, x)):
        state = module.allocate_state(batch_size=2, max_len=260, device=DEVICE, dtype=inp.dtype)
        with torch.no_grad():
            pieces = [module(inp[:, :100], state), module(inp[:, 100:250], state)]
            pieces += [module(inp[:, t : t + 1], state) for t in range(250, 260)]
        outs.append(torch.cat(pieces, dim=1).float())
        states.append(state)
    with torch.no_grad():
        full = ref(x)  # the reference without a state: the whole sequence at once
    errors = {"out": rel_err(outs[0], outs[1]), "out_vs_full": rel_err(outs[0], full),
              "ssm": rel_err(states[0].ssm, states[1].ssm), "conv": rel_err(states[0].conv.float(), states[1].conv)}
    print({k: f"{v:.2e}" for k, v in errors.items()})
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL[dtype], f"{worst}: {errors[worst]:.3e} > {TOL[dtype]:.0e}"


@pytest.mark.parametrize("backend", ["math", "flash", "efficient", "cudnn"])
@pytest.mark.parametrize("settings", [{"n_heads": 8}, {"n_heads": 8, "n_kv_heads": 2}])
def test_sdpa_backends_match_the_reference(backend, settings):
    torch.manual_seed(0)
    ref = Attention(AttentionConfig(backend="math", **settings), d_model=512).to(DEVICE)
    fast = Attention(AttentionConfig(backend=backend, **settings), d_model=512).to(DEVICE)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 256, 512, device=DEVICE)
    _compare(fast, ref, x, torch.bfloat16, torch.float64)
    if backend in ("math", "efficient"):  # the backends that take fp32
        _compare(fast, ref, x, torch.float32, torch.float64)


@pytest.mark.parametrize("backend", ["math", "efficient"])
def test_sliding_window_on_cuda(backend):
    torch.manual_seed(0)
    ref = Attention(AttentionConfig(backend="math", n_heads=4, window=32), d_model=256).to(DEVICE)
    fast = Attention(AttentionConfig(backend=backend, n_heads=4, window=32), d_model=256).to(DEVICE)
    fast.load_state_dict(ref.state_dict())
    _compare(fast, ref, torch.randn(2, 200, 256, device=DEVICE), torch.float32, torch.float64)


def _hybrid(impl: str):
    cfg = ModelConfig(pattern="*-M-M*-M", vocab_size=100, d_model=256,
                      primitives={"mamba2": Mamba2Config(impl=impl), "attention": AttentionConfig(backend="cudnn")})
    return build_model(cfg, seed=0).to(DEVICE)


def test_hybrid_model_with_kernels_matches_torch_path():
    fast, ref = _hybrid("kernels"), _hybrid("torch")
    tokens = torch.randint(0, 100, (2, 200), device=DEVICE)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        err = rel_err(fast(tokens).float(), ref(tokens).float())
    print(f"hybrid logits, bf16 autocast, kernels vs torch: {err:.2e}")
    assert err <= TOL[torch.bfloat16]


def test_generation_on_cuda_matches_the_full_forward():
    """Decoding with state (KV cache, conv and SSM state) under bf16 autocast with cuDNN attention."""
    model = _hybrid("torch").eval()
    prompt = torch.randint(0, 100, (2, 20), device=DEVICE)
    with torch.autocast("cuda", dtype=torch.bfloat16):  # cuDNN attention takes bf16 only
        tokens, step_logits = model.generate(prompt, max_new_tokens=10)
        full = model(tokens)[:, :-1]
    err = rel_err(step_logits.float(), full.float())
    print(f"generation step logits vs full forward, bf16 autocast: {err:.2e}")
    assert tokens.shape == (2, 30) and err <= TOL[torch.bfloat16]


def test_flash_and_cudnn_backends_refuse_fp32_with_a_clear_error():
    module = Attention(AttentionConfig(backend="cudnn"), d_model=256).to(DEVICE)
    with pytest.raises(KernelUnavailableError, match="takes bf16 or fp16"):
        module(torch.randn(1, 8, 256, device=DEVICE))
