"""The pattern (genome): one character per layer, the only description of a model's layout.

The alphabet is Megatron-LM's where Megatron has a letter (`*` attention, `-` MLP, `M` Mamba-2,
`G` Gated DeltaNet, `E` MoE) and grows with the primitive registry. A pattern of those letters is
also Megatron's `--hybrid-override-pattern`, and one without `G` Hugging Face's
`hybrid_override_pattern` (nemotron_h configs), so `n_layers = len(pattern)` everywhere; letters a
format lacks are refused by its converter, by name and position. Patterns of (`G` or `*`) each
followed by (`-` or `E`) are also Hugging Face `qwen3_next` layouts (`to_qwen3_next_config`).
"""

from __future__ import annotations

from collections import Counter

from composer.errors import PatternError
from primitives import REGISTRY, describe_alphabet

# Megatron-LM separators that carry no layer: pipeline-stage split and multi-token prediction.
_MEGATRON_PIPELINE_SPLIT = "|"
_MEGATRON_MTP_SPLIT = "/"
# Megatron-LM's hybrid layer Symbols (megatron/core/models/hybrid/layers/utils.py) that build the
# same layer as ours. Its 'W' is DeepSeek-V4's sliding-window attention (MLA inside), not our GQA one.
MEGATRON_LETTERS = "M*-GE"
NEMOTRON_H_LETTERS = "M*-E"  # Hugging Face nemotron_h: Mamba-2, attention, MLP, MoE
_NOT_THE_SAME = {("Megatron-LM", "W"): "Megatron's 'W' is DeepSeek-V4's sliding-window MLA, another layer"}


def _only(pattern: str, letters: str, where: str) -> str:
    pattern = parse_pattern(pattern)
    for position, char in enumerate(pattern):
        if char not in letters:
            why = _NOT_THE_SAME.get((where, char), f"it takes {', '.join(letters)}")
            raise PatternError(f"{REGISTRY[char].name} {char!r} at position {position} of {pattern!r} has no letter in "
                               f"{where}'s hybrid patterns ({why})")
    return pattern


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
    """Megatron-LM arguments that describe the same layout (its letters only)."""
    pattern = _only(pattern, MEGATRON_LETTERS, "Megatron-LM")
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
    """The fields of a Hugging Face `nemotron_h` config that describe the layout (its letters only)."""
    pattern = _only(pattern, NEMOTRON_H_LETTERS, "nemotron_h")
    return {"hybrid_override_pattern": pattern, "num_hidden_layers": len(pattern)}


# transformers >= 5 keeps a nemotron_h layout as `layers_block_type` (its `hybrid_override_pattern` argument is
# converted and dropped): "linear_attention" is Mamba-2 there; "mamba" and "attention" are the older names
_NEMOTRON_H_BLOCKS = {"linear_attention": "M", "mamba": "M", "full_attention": "*", "attention": "*", "mlp": "-",
                      "moe": "E"}


def from_hf_config(config: dict[str, object]) -> str:
    """Read the layout from a Hugging Face config dict: a `qwen3_next` one (`from_qwen3_next_config`), or a
    `nemotron_h` one by its `hybrid_override_pattern` (NVIDIA's released configs) or `layers_block_type` (what
    transformers >= 5 writes)."""
    if config.get("model_type") == "qwen3_next":
        return from_qwen3_next_config(config)
    if "hybrid_override_pattern" in config:
        pattern = from_megatron(str(config["hybrid_override_pattern"]))
    elif isinstance(blocks := config.get("layers_block_type"), list) and blocks:  # not `layer_types`: qwen3_next's too
        unknown = [(i, b) for i, b in enumerate(blocks) if b not in _NEMOTRON_H_BLOCKS]
        if unknown:
            raise PatternError(f"layers_block_type[{unknown[0][0]}] is {unknown[0][1]!r}; nemotron_h layers are "
                               f"{', '.join(map(repr, _NEMOTRON_H_BLOCKS))}")
        return "".join(_NEMOTRON_H_BLOCKS[b] for b in blocks)  # its num_hidden_layers is ignored where this is given
    else:
        raise PatternError("the Hugging Face config has no layout: no 'hybrid_override_pattern', no "
                           "'layers_block_type' and model_type is not qwen3_next")
    n_layers = config.get("num_hidden_layers")
    if n_layers is not None and n_layers != len(pattern):
        raise PatternError(f"num_hidden_layers is {n_layers} but the pattern {pattern!r} has {len(pattern)} layers")
    return pattern


_QWEN3_NEXT_MIXERS = {"G": "linear_attention", "*": "full_attention"}


def to_qwen3_next_config(pattern: str) -> dict[str, object]:
    """The layout fields of a Hugging Face `qwen3_next` config. A Qwen3-Next decoder layer is a token
    mixer (Gated DeltaNet, "linear_attention", or gated attention, "full_attention") then a sparse
    MoE, or a dense MLP where the layer is in `mlp_only_layers`: so the pattern must be pairs of
    (`G` or `*`, `E` or `-`). Only the layout: widths and the attention's output gate are the
    model's (composer's `*` has no output gate)."""
    pattern = parse_pattern(pattern)
    if len(pattern) % 2:
        raise PatternError(f"a qwen3_next layout pairs a token mixer with a channel mixer: {pattern!r} has "
                           f"{len(pattern)} layers, an odd number")
    for position, char in enumerate(pattern):
        allowed = "G*" if position % 2 == 0 else "E-"
        if char not in allowed:
            raise PatternError(f"{REGISTRY[char].name} {char!r} at position {position} of {pattern!r}: a qwen3_next "
                               f"layer is (G or *) then (E or -), so position {position} takes {' or '.join(allowed)}")
    pairs = [pattern[i : i + 2] for i in range(0, len(pattern), 2)]
    return {"model_type": "qwen3_next", "num_hidden_layers": len(pairs),
            "layer_types": [_QWEN3_NEXT_MIXERS[p[0]] for p in pairs],
            "mlp_only_layers": [i for i, p in enumerate(pairs) if p[1] == "-"], "decoder_sparse_step": 1}


def from_qwen3_next_config(config: dict[str, object]) -> str:
    """The pattern of a Hugging Face `qwen3_next` config's layout (`layer_types`, `mlp_only_layers`,
    `decoder_sparse_step`: a layer is sparse when (i + 1) % step == 0 and it is not MLP-only)."""
    types = config.get("layer_types")
    if not isinstance(types, list) or not types:
        raise PatternError("the qwen3_next config has no 'layer_types' list")
    mixers = {v: k for k, v in _QWEN3_NEXT_MIXERS.items()}
    unknown = [(i, t) for i, t in enumerate(types) if t not in mixers]
    if unknown:
        raise PatternError(f"layer_types[{unknown[0][0]}] is {unknown[0][1]!r}; qwen3_next layers are "
                           f"{' or '.join(map(repr, mixers))}")
    step = int(config.get("decoder_sparse_step", 1) or 1)
    dense = set(config.get("mlp_only_layers") or [])
    if config.get("num_experts", 1) == 0:
        dense = set(range(len(types)))
    return "".join(mixers[t] + ("E" if i not in dense and (i + 1) % step == 0 else "-") for i, t in enumerate(types))
