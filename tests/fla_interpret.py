"""composer's calls of fla's Gated DeltaNet kernels, run on the CPU through Triton's interpreter.

    TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES= python3 -m tests.fla_interpret   # prints one JSON object

tests/test_gdn_fla_interpreter.py runs it in a subprocess (the variable must be set before Triton is
imported). It checks what the GPU parity tests check, on a CPU: `GatedDeltaNet._forward_kernels`
(fla's causal_conv1d, chunked and recurrent kernels, called as composer calls them: raw gates, beta's
sigmoid and q/k's norms inside the kernel, the state value-major) against `_forward_torch`, in fp32:
the output, every parameter's gradient and the input's, and a prefill then single decoding steps with
the state carried. Triton's interpreter runs each kernel program in NumPy, so what it checks is the
call convention and fla's Triton code, not GPU numerics (TF32, bf16) and not fla's tilelang backward,
which the H200 runs (tests/gpu/test_gdn_parity.py covers those). bf16 cannot be checked here at all: the
interpreter's bf16 arithmetic is wrong (fla's chunked kernel called directly, bf16 against fp32: a relative
error of 1.6e10 under triton 3.9.0, 2026-12-05).

Two adjustments the interpreter needs for fla 0.6's kernels, made here and nowhere else (checked with
triton 3.6.0, torch 2.11's, and 3.9.0):
- loop indices: fla casts them (`i_t.to(tl.int64)`); compiled Triton makes a loop index a tensor, the
  interpreter leaves it a Python int, so `range` in fla's modules yields ints that have `.to`; and a loop bound
  that is a one-value tensor becomes an int (triton 3.6's interpreter fails at it under NumPy 2, 3.9's does not);
- autotuning: Triton's autotuner times every configuration with a GPU driver; here each config times
  the same, so the first is taken.
"""

from __future__ import annotations

import json
import os
import sys

import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    sys.exit("tests/fla_interpret.py: run it with TRITON_INTERPRET=1 (Triton reads it when a kernel is defined)")

import triton.language as tl  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.interpreter import _LangPatchScope  # noqa: E402

from primitives.gdn import GatedDeltaNetConfig  # noqa: E402
from primitives.nn.gdn import GatedDeltaNet, _load_kernels  # noqa: E402

# (settings, batch, length, d_model): lengths that are not multiples of fla's chunk (64), and Qwen3-Next's
# value-head layout (v_head_ratio 1, expand_v 2) beside the default grouped one, as tests/gpu/test_gdn_parity.py.
CASES = [
    ({"head_dim": 16}, 2, 150, 64),
    ({"head_dim": 16, "v_head_ratio": 1, "expand_v": 2}, 1, 70, 32),
]
DECODE_STEPS = 3


class _Index(int):
    """A loop index with the `.to` of the tensor compiled Triton would make it."""

    def to(self, dtype, **kwargs):
        return tl.cast(int(self), dtype)


def _index_range(*args):
    return [_Index(i) for i in range(*args)]


def _one_value_index(self) -> int:
    """`tensor.__index__` for a one-value tensor kept 1-d (triton 3.6's own `int(data)` fails under NumPy 2)."""
    return int(self.handle.data.reshape(-1)[0])


def _adjust_interpreter() -> None:
    Autotuner.do_bench = property(lambda self: lambda fn, quantiles=None, **kwargs: [1.0, 1.0, 1.0])
    set_attr = _LangPatchScope.set_attr  # what the interpreter patches into triton.language for each kernel call

    def patch(scope, obj, name, value):
        set_attr(scope, obj, name, _one_value_index if name == "__index__" else value)

    _LangPatchScope.set_attr = patch
    for name, module in list(sys.modules.items()):
        if name.startswith("fla.") and module is not None:
            module.range = _index_range  # shadows the builtin in fla's modules only


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over max |b|: the error relative to the reference's scale."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _check(settings: dict, batch: int, length: int, d_model: int) -> dict:
    torch.manual_seed(0)
    module = GatedDeltaNet(GatedDeltaNetConfig(**settings), d_model=d_model)
    with torch.no_grad():  # away from the init's narrow ranges, so every gate matters
        module.A_log.uniform_(-1, 1)
        module.dt_bias.uniform_(-1, 1)
        module.norm_weight.uniform_(0.5, 1.5)
    x = torch.randn(batch, length, d_model, requires_grad=True)
    names = ["input", *(name for name, _ in module.named_parameters())]
    inputs = [x, *module.parameters()]
    ref = module._forward_torch(x, None)
    ref_grads = torch.autograd.grad(ref.square().sum(), inputs)
    out = module._forward_kernels(x, None)
    grads = torch.autograd.grad(out.square().sum(), inputs)
    result = {
        "settings": settings, "shape": [batch, length, d_model],
        "forward": _rel(out, ref),
        "gradients": {name: _rel(g, r) for name, g, r in zip(names, grads, ref_grads)},
    }
    # decoding: a prefill through the chunked kernel, then single steps through the recurrent one
    prefill = length - DECODE_STEPS
    states = [module.allocate_state(batch_size=batch, max_len=length, device=x.device, dtype=x.dtype) for _ in range(2)]
    with torch.no_grad():
        torch_pre, fla_pre = module._forward_torch(x[:, :prefill], states[0]), module._forward_kernels(x[:, :prefill], states[1])
        result["prefill"] = _rel(fla_pre, torch_pre)
        result["prefill_state"] = _rel(states[1].recurrent, states[0].recurrent)
        steps = [module._forward_kernels(x[:, i : i + 1], states[1]) for i in range(prefill, length)]
        result["decode_vs_full_forward"] = _rel(torch.cat(steps, dim=1), ref[:, prefill:])
    return result


def main() -> None:
    kernels = _load_kernels()
    if isinstance(kernels, str):
        sys.exit(f"tests/fla_interpret.py: {kernels}")
    _adjust_interpreter()
    print(json.dumps([_check(*case) for case in CASES]))


if __name__ == "__main__":
    main()
