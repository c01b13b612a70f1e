import math

import pytest
import torch

from composer.config import ModelConfig, model_config_from_mapping
from composer.errors import ConfigError, PatternError
from composer.model import build_model
from scaling.accounting import count_parameters

MIXED = "*-M-*M--M*"


def _cfg(pattern: str = MIXED, **kw) -> ModelConfig:
    return ModelConfig(pattern=pattern, vocab_size=40, d_model=64, **kw)


def test_layers_follow_the_pattern():
    model = build_model(_cfg())
    assert "".join(layer.letter for layer in model.layers) == MIXED
    assert [type(layer.mixer).__name__ for layer in model.layers[:3]] == ["Attention", "MLP", "Mamba2"]


@pytest.mark.parametrize("tied", [True, False])
def test_analytic_counts_equal_the_module(tied):
    cfg = _cfg(tie_embeddings=tied)
    model = build_model(cfg)
    counts = count_parameters(cfg)
    assert counts["n_params"] == sum(p.numel() for p in model.parameters())
    embedding = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("embed", "head")))
    assert counts["n_non_embedding_params"] == counts["n_params"] - embedding
    assert (model.head is None) == tied


def test_deterministic_for_a_seed():
    a, b, c = build_model(_cfg(), seed=3), build_model(_cfg(), seed=3), build_model(_cfg(), seed=4)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n
    assert not torch.equal(a.embed.weight, c.embed.weight)
    x = torch.randint(0, 40, (2, 16))
    assert torch.equal(a(x), b(x))


def test_build_does_not_disturb_the_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    build_model(_cfg(), seed=123)
    assert torch.equal(torch.rand(3), expected)


def test_output_projections_are_depth_scaled():
    cfg = _cfg(pattern="-" * 16)
    model = build_model(cfg)
    out_std = torch.cat([layer.mixer.out_proj.weight.flatten() for layer in model.layers]).std().item()
    assert math.isclose(out_std, 64**-0.5 / math.sqrt(16), rel_tol=0.05)


def test_generation_with_state_matches_full_forward():
    """KV cache, conv and SSM state: stepping token by token gives the full pass's logits."""
    model = build_model(_cfg(primitives={}), seed=1).eval()
    prompt = torch.randint(0, 40, (3, 11))
    tokens, step_logits = model.generate(prompt, max_new_tokens=20, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (3, 31) and step_logits.shape == (3, 30, 40)
    assert torch.equal(tokens[:, :11], prompt)
    full = model(tokens)[:, :-1]  # (3, 30, V): logits predicting tokens 1..30
    torch.testing.assert_close(step_logits, full, rtol=1e-4, atol=1e-4)


def test_the_rotary_tables_are_made_once_and_change_no_output(monkeypatch):
    """The model makes attention's cos and sin tables once, before its layers (`reach`): every forward then reads
    them, with the same values as computed per call, and a longer call computes its own (the tables are never
    replaced, as a captured CUDA graph may read them)."""
    from primitives.nn.attention import Attention

    model = build_model(_cfg(), seed=3)
    attention = [layer.mixer for layer in model.layers if layer.letter == "*"]
    short, longer = torch.randint(0, 40, (2, 12)), torch.randint(0, 40, (2, 20))
    with monkeypatch.context() as m:  # every call computing its own tables, as before the cache
        m.setattr(Attention, "reach", lambda *args: None)
        expected = [model(short), model(longer)]
        assert all(a.rope_cache is None for a in attention)
    assert torch.equal(model(short), expected[0])
    made = attention[0].rope_cache[0]
    assert made.shape[1] == 12 and all(a.rope_cache[0] is made for a in attention)  # one table for the model
    assert torch.equal(model(longer), expected[1])  # 20 positions: computed for this call
    assert attention[0].rope_cache[0] is made  # kept, not replaced


def test_a_compiled_attention_layer_reads_the_tables_instead_of_computing_cosines():
    """Compiled, the rotation computed cos and sin per element of every head (7.5% of a compiled proxy's kernel time
    on an H100); with the tables made by `reach` the layer's generated code has no cosine, and is one graph."""
    from torch._dynamo.utils import counters
    from torch._inductor.utils import run_and_get_code

    x = torch.randn(2, 16, 64)
    cosines = {}
    for made in (False, True):
        torch._dynamo.reset()
        counters.clear()
        model = build_model(_cfg("*-"), seed=4)
        if made:
            model.reach(16, x.device)
        layer = model.layers[0]
        eager = layer(x)
        layer.compile()
        out, code = run_and_get_code(layer, x)
        torch.testing.assert_close(out, eager)
        assert not counters["graph_break"] and counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
        cosines[made] = sum(c.count("cos") for c in code)
    assert cosines[False] > 0 and cosines[True] == 0, cosines


def test_greedy_generation_is_argmax_of_the_full_pass():
    model = build_model(_cfg(), seed=2).eval()
    tokens, _ = model.generate(torch.randint(0, 40, (2, 5)), max_new_tokens=8)
    logits = model(tokens)
    assert torch.equal(tokens[:, 5:], logits[:, 4:-1].argmax(-1))


def test_config_from_mapping_rejects_unknown_keys_and_bad_values():
    good = model_config_from_mapping({"pattern": "*-", "vocab_size": 10, "attention": {"n_heads": 2}})
    assert good.primitives["attention"].n_heads == 2 and good.primitives["mlp"].hidden is None
    with pytest.raises(ConfigError, match="unknown key model.widht"):
        model_config_from_mapping({"pattern": "*-", "vocab_size": 10, "widht": 3})
    with pytest.raises(ConfigError, match="unknown key model.attention.heads"):
        model_config_from_mapping({"pattern": "*-", "vocab_size": 10, "attention": {"heads": 2}})
    with pytest.raises(ConfigError, match="model.d_model must be int"):
        model_config_from_mapping({"pattern": "*-", "vocab_size": 10, "d_model": "big"})
    with pytest.raises(PatternError, match="position 1"):
        model_config_from_mapping({"pattern": "*?", "vocab_size": 10})
    with pytest.raises(ConfigError, match="model.attention: d_model \\(64\\) is not divisible by n_heads \\(5\\)"):
        model_config_from_mapping({"pattern": "*-", "vocab_size": 10, "d_model": 64, "attention": {"n_heads": 5}})
    # rotary embeddings turn channel pairs: an odd head size failed inside the first forward (found 2026-12-05)
    with pytest.raises(ConfigError, match=r"model.attention: head size 25 \(d_model 100 / 4 heads\) must be even"):
        model_config_from_mapping({"pattern": "*-", "vocab_size": 10, "d_model": 100})
    with pytest.raises(ConfigError, match=r"model.swa: head_dim 9 must be even .*rope_theta: null"):
        model_config_from_mapping({"pattern": "W-", "vocab_size": 10, "swa": {"head_dim": 9}})
    model = build_model(model_config_from_mapping(
        {"pattern": "*-", "vocab_size": 10, "d_model": 100, "attention": {"rope_theta": None}}))  # NoPE: any size
    assert model(torch.zeros(1, 3, dtype=torch.long)).shape == (1, 3, 10)
