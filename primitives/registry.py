"""The primitive registry: one letter per layer kind. The letters are the pattern's alphabet.

A primitive is a spec file `primitives/<name>.py` (its frozen config dataclass with the analytic
counts, e.g. `n_params(d_model)`; no torch import, so accounting and search constraints run
without torch) that calls `register(...)`, and its module in `primitives/nn/<name>.py`, an
`nn.Module` built as `module_cls(cfg, d_model=...)` and imported only when a model is built.
Every spec file in `primitives/` is imported by the package; tests loop over `REGISTRY`.

The module contract (every mixer maps (B, T, D) -> (B, T, D)):
  forward(x, state=None)           state: what allocate_state returned, updated in place
  allocate_state(*, batch_size, max_len, device, dtype) -> object | None
  init_weights(*, std, out_std)    out_std is the depth-scaled std for the output projection
  describe_impl(device) -> str     which implementation runs there, reported in the run folder

Optional, for a mixer with training-time terms (the MoE's load balancing; composer/engine/auxiliary.py
collects them): after each training forward, `aux_loss` (a scalar tensor the trainer adds to the
loss, coefficients applied, or None) and `aux_stats` (a detached 1-D tensor); `after_step(stats)`
(device work, no autograd) with the step's mean stats; `describe_stats(stats) -> dict[str, float]`,
what metrics.jsonl records.

Optional, for a state that keeps a changing Python number (the KV cache's length): a method
`use_device_position()` on the state object that moves it to the device, after which the layer
decodes one token per call with no host value involved, so that a captured CUDA graph of the
decode step replays correctly (composer/evals/bench.py). States of tensors only need nothing.

Optional, for float8 training (composer/engine/float8.py converts a mixer's nn.Linear layers):
`keep_precision`, a dict of submodule name -> why it stays in high precision (the MoE's router).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Primitive:
    letter: str  # the pattern character (Megatron-LM's alphabet where it has one)
    name: str  # config key of its settings, e.g. `model.attention`
    config_cls: type  # frozen, keyword-only dataclass with n_params(d_model)
    module: str  # "package.module:Class" of its nn.Module, imported on first use
    mixes_sequence: bool  # True for token mixers (attention, SSMs), False for channel mixers

    @property
    def module_cls(self) -> type:
        """The nn.Module class: module_cls(cfg, d_model=...). Importing it imports torch."""
        path, _, name = self.module.partition(":")
        return getattr(importlib.import_module(path), name)


REGISTRY: dict[str, Primitive] = {}


def register(*, letter: str, name: str, config_cls: type, module: str, mixes_sequence: bool) -> None:
    if len(letter) != 1 or letter.isspace():
        raise ValueError(f"a primitive letter is one non-space character, got {letter!r}")
    for other in REGISTRY.values():
        if other.letter == letter and other.name != name:
            raise ValueError(f"letter {letter!r} is already taken by primitive {other.name!r}")
        if other.name == name and other.letter != letter:
            raise ValueError(f"primitive name {name!r} is already registered as {other.letter!r}")
    REGISTRY[letter] = Primitive(
        letter=letter, name=name, config_cls=config_cls, module=module, mixes_sequence=mixes_sequence
    )


def describe_alphabet() -> str:
    """`'*' (attention), 'M' (mamba2), '-' (mlp)` (registration order: spec files by name)."""
    return ", ".join(f"{p.letter!r} ({p.name})" for p in REGISTRY.values())


def by_name(name: str) -> Primitive:
    for p in REGISTRY.values():
        if p.name == name:
            return p
    raise KeyError(f"no primitive named {name!r}; registered: {', '.join(p.name for p in REGISTRY.values())}")
