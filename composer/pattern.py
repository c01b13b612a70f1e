"""The pattern (genome): one character per layer, the only description of a model's layout.

The alphabet is Megatron-LM's (`*` attention, `-` MLP, `M` Mamba-2) and grows with the primitive
registry. The same string is Megatron's `--hybrid-override-pattern` and Hugging Face's
`hybrid_override_pattern` (nemotron_h configs), so `n_layers = len(pattern)` everywhere.
"""

from __future__ import annotations

from collections import Counter

from composer.errors import PatternError
from primitives import REGISTRY, describe_alphabet

# Megatron-LM separators that carry no layer: pipeline-stage split and multi-token prediction.
_MEGATRON_PIPELINE_SPLIT = "|"
_MEGATRON_MTP_SPLIT = "/"


def parse_pattern(text: str) -> str:
    """Validate a pattern and return it. Errors name the offending character and its position."""
    if not isinstance(text, str):
        raise PatternError(f"a pattern is a string of layer letters, got {type(text).__name__} {text!r}")
    if not text:
        raise PatternError(f"empty pattern: give one letter per layer from {describe_alphabet()}")
    for position, char in enumerate(text):
        if char not in REGISTRY:
            raise PatternError(
                f"unknown primitive {char!r} at position {position} of pattern {text!r}; "
                f"valid letters: {describe_alphabet()}"
            )
    return text


def count_primitives(pattern: str) -> dict[str, int]:
    """Layers per primitive letter, every registered letter present (zero where absent)."""
    counts = Counter(parse_pattern(pattern))
    return {letter: counts.get(letter, 0) for letter in REGISTRY}


def runs(pattern: str) -> list[tuple[str, int]]:
    """Maximal runs of one primitive: `'**--M'` -> `[('*', 2), ('-', 2), ('M', 1)]`."""
    out: list[tuple[str, int]] = []
    for char in parse_pattern(pattern):
        if out and out[-1][0] == char:
            out[-1] = (char, out[-1][1] + 1)
        else:
            out.append((char, 1))
    return out


def to_megatron_args(pattern: str) -> list[str]:
    """Megatron-LM arguments that describe the same layout."""
    pattern = parse_pattern(pattern)
    return ["--hybrid-override-pattern", pattern, "--num-layers", str(len(pattern))]


def from_megatron(text: str) -> str:
    """Read Megatron's `--hybrid-override-pattern`; pipeline splits (`|`) carry no layer and are dropped."""
    if _MEGATRON_MTP_SPLIT in text:
        raise PatternError(
            f"multi-token-prediction patterns ({_MEGATRON_MTP_SPLIT!r} at position "
            f"{text.index(_MEGATRON_MTP_SPLIT)} of {text!r}) are not supported"
        )
    return parse_pattern(text.replace(_MEGATRON_PIPELINE_SPLIT, ""))


def to_hf_config(pattern: str) -> dict[str, object]:
    """The fields of a Hugging Face `nemotron_h` config that describe the layout."""
    pattern = parse_pattern(pattern)
    return {"hybrid_override_pattern": pattern, "num_hidden_layers": len(pattern)}


def from_hf_config(config: dict[str, object]) -> str:
    """Read the layout from a Hugging Face config dict (`hybrid_override_pattern`)."""
    if "hybrid_override_pattern" not in config:
        raise PatternError("the Hugging Face config has no 'hybrid_override_pattern' key")
    pattern = from_megatron(str(config["hybrid_override_pattern"]))
    n_layers = config.get("num_hidden_layers")
    if n_layers is not None and n_layers != len(pattern):
        raise PatternError(f"num_hidden_layers is {n_layers} but the pattern {pattern!r} has {len(pattern)} layers")
    return pattern
