"""Sliding-window attention `W`: its own letter and settings, a KV ring bounded by the window,
decoding equal to the full forward, and the accounting's state bounded the same way."""

import pytest
import torch

from composer.config import ModelConfig
from composer.errors import PatternError
from composer.model import Layer
from composer.pattern import parse_pattern
from primitives import REGISTRY
from primitives.swa import SlidingWindowConfig

D_MODEL = 32


def _layer(**settings) -> Layer:
    torch.manual_seed(0)
    cfg = ModelConfig(pattern="W", vocab_size=8, d_model=D_MODEL,
                      primitives={"swa": SlidingWindowConfig(n_heads=4, n_kv_heads=2, **settings)})
    return Layer("W", cfg).eval()


def test_w_is_sliding_window_attention_with_a_window_it_cannot_drop():
    assert REGISTRY["W"].name == "swa" and REGISTRY["W"].mixes_sequence
    assert SlidingWindowConfig().window == 1024
    with pytest.raises(ValueError, match="swa.window must be set"):
        SlidingWindowConfig(window=None)
    with pytest.raises(ValueError, match="window must be positive"):
        SlidingWindowConfig(window=0)
    assert parse_pattern("W*W-") == "W*W-"


def test_a_pattern_mixes_local_and_global_attention_each_with_its_own_settings():
    from composer.model import ComposedModel

    cfg = ModelConfig(pattern="W-*-", vocab_size=8, d_model=D_MODEL,
                      primitives={"swa": SlidingWindowConfig(window=3, n_heads=2)})
    model = ComposedModel(cfg).eval()
    assert model.layers[0].mixer.cfg.window == 3 and model.layers[2].mixer.cfg.window is None
    tokens = torch.randint(0, 8, (1, 12))
    changed = tokens.clone()
    changed[0, 0] = (tokens[0, 0] + 1) % 8
    # the global layer carries token 0 to the last position; a model of local layers alone would not
    assert not torch.allclose(model(tokens)[0, -1], model(changed)[0, -1])


@pytest.mark.parametrize("window", [1, 3, 5, 8])
@pytest.mark.parametrize("chunks", [[1] * 17, [4, 1, 1, 7, 1, 3], [9, 8], [17]])
def test_decoding_through_the_ring_equals_the_full_forward(window, chunks):
    layer = _layer(window=window)
    x = torch.randn(2, 17, D_MODEL)
    full = layer(x)
    state = layer.mixer.allocate_state(batch_size=2, max_len=64, device=x.device, dtype=x.dtype)
    assert state.ring and state.k.shape[1] == window  # bounded by the window, not by max_len
    pieces, t = [], 0
    for n in chunks:
        pieces.append(layer(x[:, t : t + n], state))
        t += n
    assert state.length == 17 and state.k.shape[1] == window
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


def test_a_window_wider_than_the_context_keeps_the_plain_cache():
    layer = _layer(window=64)
    state = layer.mixer.allocate_state(batch_size=1, max_len=16, device=torch.device("cpu"), dtype=torch.float32)
    assert not state.ring and state.k.shape[1] == 16


def test_state_bytes_stop_growing_at_the_window_and_equal_the_ring():
    cfg = SlidingWindowConfig(window=256, n_heads=4, n_kv_heads=2)
    per = cfg.state_bytes(D_MODEL, context=256, dtype_bytes=2)
    assert cfg.state_bytes(D_MODEL, context=32_768, dtype_bytes=2) == per
    assert cfg.state_bytes(D_MODEL, context=100, dtype_bytes=2) < per
    layer = Layer("W", ModelConfig(pattern="W", vocab_size=8, d_model=D_MODEL, primitives={"swa": cfg}))
    ring = layer.mixer.allocate_state(batch_size=1, max_len=32_768, device=torch.device("cpu"), dtype=torch.bfloat16)
    assert ring.k.numel() * 2 + ring.v.numel() * 2 == per


def test_an_unknown_letter_still_names_its_position():
    with pytest.raises(PatternError, match="position 2"):
        parse_pattern("W*Q")
