"""scaling.accounting against the real modules: parameters on the meta device, FLOPs under
FlopCounterMode (exact: the analytic counts are matmul + conv FLOPs, what the counter counts, plus the short convs it
cannot see, added by hand), inference state against the tensors allocate_states returns."""

import math
import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from composer.config import ModelConfig
from composer.model import ComposedModel
from composer.pattern import count_primitives
from primitives import REGISTRY
from primitives.attention import AttentionConfig
from primitives.gdn import GatedDeltaNetConfig
from primitives.mamba2 import Mamba2Config
from primitives.mlp import MLPConfig
from primitives.moe import MoEConfig
from scaling.accounting import (
    account,
    count_parameters,
    forward_flops_per_token,
    inference_flops_per_token,
    state_bytes,
    state_bytes_per_token,
    train_flops_per_token,
)
from scaling.presets import PRESETS, preset_model_config, reference_pattern

PATTERNS = ["*-", "M", "M-M-*-", "**-----**---*---", "MM*-M-", "-*M", "GG*-G-", "*E-M"]
D = 64
VOCAB = 96


def _small(pattern: str, *, window: int | None = None, chunk_size: int = 16, tie: bool = True) -> ModelConfig:
    return ModelConfig(
        pattern=pattern, vocab_size=VOCAB, d_model=D, tie_embeddings=tie,
        primitives={
            "attention": AttentionConfig(n_heads=4, n_kv_heads=2, window=window),
            "mlp": MLPConfig(hidden=96),
            "mamba2": Mamba2Config(d_state=16, head_dim=16, chunk_size=chunk_size),
            "gdn": GatedDeltaNetConfig(head_dim=16, chunk_size=chunk_size),
            "moe": MoEConfig(n_experts=4, top_k=2, hidden=48, shared_experts=1),
        },
    )


def _solve_triangular_flops(a_shape, b_shape, *, out_shape=None, unitriangular=False, **_) -> int:
    """Forward substitution: L(L-1)/2 multiply-adds per right-hand column (+ L divisions unless unit)."""
    n = a_shape[-1]
    return math.prod(b_shape[:-2]) * b_shape[-1] * (n * (n - 1) + (0 if unitriangular else n))


# The counter knows matmuls and convs; Gated DeltaNet's chunked form also solves triangular systems.
COUNTED = {torch.ops.aten.linalg_solve_triangular: _solve_triangular_flops}


def _short_conv_flops(cfg: ModelConfig, tokens: int) -> int:
    """The short convs' 2 · conv_dim · d_conv per token (Mamba-2's and Gated DeltaNet's), which the counts keep but the
    counter cannot see: they run as elementwise shifted multiply-adds (primitives/nn/conv.py), not as a conv op."""
    convs = {"M": "mamba2", "G": "gdn"}
    return sum(2 * cfg.primitive_config(c).conv_dim(cfg.d_model) * cfg.primitive_config(c).d_conv * tokens
               for c in cfg.pattern if c in convs)


def _measured_forward_flops(cfg: ModelConfig, *, batch: int, seq_len: int) -> int:
    """What the counter sees of a forward, plus the short convs it cannot see."""
    torch.manual_seed(0)
    model = ComposedModel(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq_len))
    # On CPU, SDPA's fused kernel is invisible to the counter; the math path runs it as bmm.
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False, custom_mapping=COUNTED) as counter:
        model(tokens)
    return counter.get_total_flops() + _short_conv_flops(cfg, batch * seq_len)


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("pattern", PATTERNS + ["ref"])
def test_parameters_equal_the_model_on_meta(preset, pattern):
    pattern = reference_pattern(preset) if pattern == "ref" else pattern
    cfg = preset_model_config(preset, pattern)
    with torch.device("meta"):
        model = ComposedModel(cfg)
    real = sum(p.numel() for p in model.parameters())
    embedding = model.embed.weight.numel() + (0 if model.head is None else model.head.weight.numel())
    counted = count_parameters(cfg)
    assert counted["n_params"] == real
    assert counted["n_non_embedding_params"] == real - embedding
    assert counted["n_embedding_params"] == embedding


def test_preset_reference_sizes():
    # Llama 3.2 1B is 1.24B with its tied 128K embedding, Llama 3.1 8B is 8.03B untied.
    assert round(count_parameters(preset_model_config("1b", reference_pattern("1b")))["n_params"] / 1e9, 2) == 1.24
    assert round(count_parameters(preset_model_config("3b", reference_pattern("3b")))["n_params"] / 1e9, 2) == 3.21
    assert round(count_parameters(preset_model_config("8b", reference_pattern("8b")))["n_params"] / 1e9, 2) == 8.03


# MoE (`E`): the CPU runs the loop over experts, whose matmuls see each expert's routed tokens only,
# so the counter measures the active path (router, top-k and shared experts), what the count uses.
@pytest.mark.parametrize("pattern", ["*", "-", "M", "M-M-*-", "*M-", "G", "G-*M", "E", "*E-"])
@pytest.mark.parametrize("seq_len", [16, 32, 64])  # per-token Mamba-2 counts are whole here
@pytest.mark.parametrize("tie", [True, False])
def test_forward_flops_equal_flop_counter(pattern, seq_len, tie):
    cfg = _small(pattern, tie=tie)
    batch = 2
    expected = forward_flops_per_token(cfg, seq_len=seq_len) * batch * seq_len
    assert _measured_forward_flops(cfg, batch=batch, seq_len=seq_len) == expected  # exact
    assert train_flops_per_token(cfg, seq_len=seq_len) == 3 * forward_flops_per_token(cfg, seq_len=seq_len)


def test_mamba_chunk_terms_with_padding():
    # 40 tokens in chunks of 16: padded to 48, 3 chunks; the sequence total is exact.
    cfg = _small("M")
    m = cfg.primitive_config("M")
    head = 2 * D * VOCAB * 40
    assert _measured_forward_flops(cfg, batch=1, seq_len=40) == m.forward_flops_per_sequence(D, seq_len=40) + head
    # and the per-token figure is that total over the tokens, rounded
    assert m.forward_flops_per_token(D, seq_len=40) == round(m.forward_flops_per_sequence(D, seq_len=40) / 40)


def test_sliding_window_counts_the_window():
    cfg = _small("*", window=8)
    a = cfg.primitive_config("*")
    hd = D // 4
    # at or below the window the dense kernel does exactly the counted work
    assert _measured_forward_flops(cfg, batch=1, seq_len=8) == forward_flops_per_token(cfg, seq_len=8) * 8
    # beyond it the analytic count is what a windowed kernel does: 4 · H · hd · window per token; the
    # module attends in blocks of window queries against 2 · window keys (its own block and the one
    # before, the band masked), 4 · H · hd · window more per token, not the dense square's (T - window)
    measured = _measured_forward_flops(cfg, batch=1, seq_len=32)
    assert measured - forward_flops_per_token(cfg, seq_len=32) * 32 == 4 * 4 * hd * 8 * 32
    assert a.forward_flops_per_token(D, seq_len=32) == a.forward_flops_per_token(D, seq_len=8)


def test_attention_flops_formula_by_hand():
    a = AttentionConfig(n_heads=32, n_kv_heads=8, head_dim=64)
    d, L = 2048, 8192
    weights = d * (32 + 16) * 64 + 32 * 64 * d
    assert a.forward_flops_per_token(d, seq_len=L) == 2 * weights + 4 * 32 * 64 * L


@pytest.mark.parametrize("context", [1, 7, 24])
def test_decode_flops_equal_flop_counter(context):
    # one decoded token after context-1 cached tokens reads `context` keys; attention and MLP only:
    # Mamba-2 decodes through the chunked scan here, its analytic count is the recurrent step
    cfg = _small("*-*")
    torch.manual_seed(0)
    model = ComposedModel(cfg)
    states = model.allocate_states(batch_size=1, max_len=context)
    with torch.no_grad():
        if context > 1:
            model(torch.randint(0, VOCAB, (1, context - 1)), states)
        with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
            model(torch.randint(0, VOCAB, (1, 1)), states)
    assert counter.get_total_flops() == inference_flops_per_token(cfg, context=context)


def test_mamba_decode_is_constant_in_context():
    m = Mamba2Config(d_state=16, head_dim=16)
    h, p, n, conv = 2 * D // 16, 16, 16, 2 * D + 2 * 16
    step = 2 * D * (2 * D + conv + h) + 2 * 2 * D * D + 2 * conv * 4 + 4 * h * p * n
    assert m.inference_flops_per_token(D, context=1) == m.inference_flops_per_token(D, context=10**6) == step


def test_gdn_chunk_terms_with_padding():
    # 40 tokens in chunks of 16: padded to 48, 3 chunks; the sequence total is exact
    cfg = _small("G")
    g = cfg.primitive_config("G")
    head = 2 * D * VOCAB * 40
    assert _measured_forward_flops(cfg, batch=1, seq_len=40) == g.forward_flops_per_sequence(D, seq_len=40) + head
    assert g.forward_flops_per_token(D, seq_len=40) == round(g.forward_flops_per_sequence(D, seq_len=40) / 40)


@pytest.mark.parametrize("context", [1, 7, 24])
def test_gdn_decode_flops_equal_flop_counter(context):
    # Gated DeltaNet decodes a single token through the recurrent step: the analytic count is what runs
    cfg = _small("G-*")
    torch.manual_seed(0)
    model = ComposedModel(cfg)
    states = model.allocate_states(batch_size=1, max_len=context)
    with torch.no_grad():
        if context > 1:
            model(torch.randint(0, VOCAB, (1, context - 1)), states)
        with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False, custom_mapping=COUNTED) as counter:
            model(torch.randint(0, VOCAB, (1, 1)), states)
    assert counter.get_total_flops() + _short_conv_flops(cfg, 1) == inference_flops_per_token(cfg, context=context)


def test_gdn_decode_and_state_by_hand():
    g = GatedDeltaNetConfig(head_dim=16)  # at D = 64: 4 query/key heads, 8 value heads of 16 channels
    hv, dk, dv = 8, 16, 16
    conv = 2 * 4 * dk + hv * dv  # q, k and v
    step = 2 * D * (conv + hv * dv + 2 * hv) + 2 * hv * dv * D + 2 * conv * 4 + 6 * hv * dk * dv
    assert g.inference_flops_per_token(D, context=1) == g.inference_flops_per_token(D, context=10**6) == step
    state = conv * 3 * 2 + hv * dk * dv * 4  # conv tail at 2 bytes, the recurrent state in fp32
    assert g.state_bytes(D, context=100, dtype_bytes=2) == g.state_bytes(D, context=5, dtype_bytes=2) == state


def _tensor_bytes(obj) -> int:
    if obj is None:
        return 0
    return sum(t.numel() * t.element_size() for t in vars(obj).values() if isinstance(t, torch.Tensor))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("pattern", ["*-", "M", "M-M-*-", "**M", "G-*"])
@pytest.mark.parametrize("context", [5, 64])
def test_state_bytes_equal_allocated_states(dtype, pattern, context):
    cfg = _small(pattern)
    model = ComposedModel(cfg).to(dtype)
    states = model.allocate_states(batch_size=1, max_len=context)
    dtype_bytes = torch.empty((), dtype=dtype).element_size()
    assert state_bytes(cfg, context=context, dtype_bytes=dtype_bytes) == sum(_tensor_bytes(s) for s in states)
    batch = model.allocate_states(batch_size=3, max_len=context)  # per sequence: scales with the batch
    assert sum(_tensor_bytes(s) for s in batch) == 3 * state_bytes(cfg, context=context, dtype_bytes=dtype_bytes)


def test_state_bytes_window_and_per_token():
    cfg = _small("*-M", window=8)
    a, m = cfg.primitive_config("*"), cfg.primitive_config("M")
    assert a.state_bytes(D, context=100, dtype_bytes=2) == 2 * 2 * 16 * 8 * 2  # the window, not the context
    assert cfg.primitive_config("-").state_bytes(D, context=100, dtype_bytes=2) == 0
    mamba = (2 * D + 32) * 3 * 2 + (2 * D // 16) * 16 * 16 * 4  # conv tail at 2 bytes, SSM state in fp32
    assert m.state_bytes(D, context=100, dtype_bytes=2) == m.state_bytes(D, context=5, dtype_bytes=2) == mamba
    assert state_bytes_per_token(cfg, context=100) == state_bytes(cfg, context=100) / 100


def test_account_gathers_everything():
    cfg = preset_model_config("1b", "**-----**---*---")
    acc = account(cfg, seq_len=8192, contexts=(4096, 32768))
    assert acc.n_layers == 16 and acc.counts == count_primitives(cfg.pattern)
    assert acc.attention_share == 5 / 16
    assert acc.n_params == count_parameters(cfg)["n_params"]
    assert sum(acc.params_by_primitive.values()) + cfg.d_model == acc.n_non_embedding_params
    assert acc.train_flops_per_token == train_flops_per_token(cfg, seq_len=8192)
    assert sum(acc.train_flops_by_primitive.values()) + 3 * 2 * 2048 * 128256 == acc.train_flops_per_token
    assert acc.state_bytes[32768] == state_bytes(cfg, context=32768) == 5 * 2 * 8 * 64 * 32768 * 2
    assert acc.state_bytes_per_token[4096] == 5 * 2 * 8 * 64 * 2
    assert acc.inference_flops_per_token[4096] < acc.inference_flops_per_token[32768]


def test_hybrid_state_is_smaller_than_llama():
    llama = account(preset_model_config("1b", reference_pattern("1b")), seq_len=8192)
    hybrid = account(preset_model_config("1b", "M-M-*-" * 5), seq_len=8192)
    assert hybrid.state_bytes[32768] < llama.state_bytes[32768] / 2


def test_accounting_is_registry_driven():
    # every registered primitive supplies the three terms
    for p in REGISTRY.values():
        for method in ("n_params", "forward_flops_per_token", "inference_flops_per_token", "state_bytes"):
            assert callable(getattr(p.config_cls(), method, None)), f"{p.name} lacks {method}"


def test_scaling_imports_no_torch():
    code = (
        "import sys; import scaling.accounting, scaling.presets, scaling.extrapolate; "
        "from scaling.extrapolate import extrapolate; extrapolate('**----', target='1b', method='match'); "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
