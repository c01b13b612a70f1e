"""Sliding-window attention `W`: causal grouped-query attention over the last `window` tokens only.

Its own letter, so that a pattern can place local and global attention (`*`) by layer, as Gemma 2/3,
Samba and Hymba do. The module is attention's (primitives/nn/attention.py) with a window that must
be set; its KV cache is a ring of `window` entries, so its state is constant in the context length
like an SSM's. `W` is Megatron-LM's letter for sliding-window attention (its Symbols.WINDOW, where
the layer is DeepSeek-V4's MLA variant; ours is grouped-query attention, so the converters to
Megatron refuse it).
"""

from __future__ import annotations

from dataclasses import dataclass

from primitives.attention import AttentionConfig
from primitives.registry import register


@dataclass(frozen=True, kw_only=True)
class SlidingWindowConfig(AttentionConfig):
    window: int | None = 1024  # a query sees itself and window-1 earlier tokens (Gemma 3's local layers: 1024)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window is None:
            raise ValueError("swa.window must be set (a positive number of tokens); for full attention use '*'")


register(letter="W", name="swa", config_cls=SlidingWindowConfig, module="primitives.nn.attention:Attention",
         mixes_sequence=True)
