"""The primitive registry: one letter per layer kind. The letters are the pattern's alphabet.

A primitive file defines a frozen config dataclass (with `n_params(d_model)`, the analytic
parameter count of its mixer) and an `nn.Module` built as `module_cls(cfg, d_model=...)`, then
calls `register(...)`. Every file in `primitives/` is imported by the package, so adding a
primitive touches no other file; tests loop over `REGISTRY`.

The module contract (every mixer maps (B, T, D) -> (B, T, D)):
  forward(x, state=None)           state: what allocate_state returned, updated in place
  allocate_state(*, batch_size, max_len, device, dtype) -> object | None
  init_weights(*, std, out_std)    out_std is the depth-scaled std for the output projection
  describe_impl(device) -> str     which implementation runs there, reported in the run folder
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Primitive:
    letter: str  # the pattern character (Megatron-LM's alphabet where it has one)
    name: str  # config key of its settings, e.g. `model.attention`
    config_cls: type  # frozen, keyword-only dataclass with n_params(d_model)
    module_cls: type  # nn.Module: module_cls(cfg, d_model=...)
    mixes_sequence: bool  # True for token mixers (attention, SSMs), False for channel mixers


REGISTRY: dict[str, Primitive] = {}


def register(*, letter: str, name: str, config_cls: type, module_cls: type, mixes_sequence: bool) -> None:
    if len(letter) != 1 or letter.isspace():
        raise ValueError(f"a primitive letter is one non-space character, got {letter!r}")
    for other in REGISTRY.values():
        if other.letter == letter and other.name != name:
            raise ValueError(f"letter {letter!r} is already taken by primitive {other.name!r}")
        if other.name == name and other.letter != letter:
            raise ValueError(f"primitive name {name!r} is already registered as {other.letter!r}")
    REGISTRY[letter] = Primitive(
        letter=letter, name=name, config_cls=config_cls, module_cls=module_cls, mixes_sequence=mixes_sequence
    )


def describe_alphabet() -> str:
    """`'*' (attention), '-' (mlp), 'M' (mamba2)`: for error messages and help text."""
    return ", ".join(f"{p.letter!r} ({p.name})" for p in REGISTRY.values())


def by_name(name: str) -> Primitive:
    for p in REGISTRY.values():
        if p.name == name:
            return p
    raise KeyError(f"no primitive named {name!r}; registered: {', '.join(p.name for p in REGISTRY.values())}")
