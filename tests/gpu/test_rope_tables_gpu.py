"""Attention's rotary tables made once (`Attention.reach`) against computed per call, on a GPU, compiled as the
search presets train: inductor fused the tables into the rotation and computed cos and sin per element of every head
(7.5% of a compiled `mad_fast` proxy's kernel time on an H100, benchmarks/RESULTS.md). Made once, they come from
torch's eager cos and sin instead of inductor's, so a compiled layer's output may differ in its last bits: bf16
outputs and gradients within 1e-2 (norm-relative) of the per-call tables', and the generated kernels compute no
cosine."""

import torch
from torch._inductor.utils import run_and_get_code

from composer.config import ModelConfig
from composer.model import build_model
from primitives.nn.attention import Attention
from tests.gpu.parity import norm_err

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # collected only with a GPU


def _compiled_step(monkeypatch, made: bool):
    torch._dynamo.reset()
    model = build_model(ModelConfig(pattern="*-*-", vocab_size=64, d_model=128), seed=0).to(DEVICE)
    for layer in model.layers:
        layer.compile()
    tokens = torch.randint(0, 64, (8, 256), device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(0))
    with monkeypatch.context() as m:
        if not made:  # every call computes its own tables, inside the compiled layers
            m.setattr(Attention, "reach", lambda *args: None)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            logits, code = run_and_get_code(model, tokens)
        logits.float().square().mean().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    return logits, grads, sum(c.count("cos") for c in code)


def test_compiled_layers_read_the_tables_and_train_as_before(monkeypatch):
    per_call, per_call_grads, per_call_cosines = _compiled_step(monkeypatch, made=False)
    once, once_grads, once_cosines = _compiled_step(monkeypatch, made=True)
    out_err = norm_err(once, per_call)
    grad_err = norm_err(once_grads, per_call_grads)
    print(f"rope tables made once against per call, compiled bf16: logits {out_err:.2e}, gradients {grad_err:.2e}; "
          f"cosines in the generated code {per_call_cosines} -> {once_cosines}")
    assert per_call_cosines > 0 and once_cosines == 0
    assert out_err < 1e-2 and grad_err < 1e-2
