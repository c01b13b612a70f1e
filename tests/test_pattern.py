import pytest

from composer.errors import PatternError
from composer.pattern import (count_primitives, from_hf_config, from_megatron, from_qwen3_next_config, parse_pattern,
                              runs, to_hf_config, to_megatron_args, to_qwen3_next_config)
from primitives import REGISTRY

NEMOTRON_H_8B = "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-"


def test_counts_and_length_come_from_the_string():
    counts = count_primitives(NEMOTRON_H_8B)
    assert len(NEMOTRON_H_8B) == 52
    assert {k: n for k, n in counts.items() if n} == {"*": 4, "M": 24, "-": 24} and set(counts) == set(REGISTRY)


@pytest.mark.parametrize(
    "bad, position, char",
    [("*-x-", 2, "x"), ("A", 0, "A"), ("MM M", 2, " "), ("**-Q", 3, "Q"), ("*|-", 1, "|")],
)
def test_bad_letter_names_character_position_and_alphabet(bad, position, char):
    with pytest.raises(PatternError) as info:
        parse_pattern(bad)
    message = str(info.value)
    assert f"{char!r} at position {position}" in message
    for letter in ("'*' (attention)", "'-' (mlp)", "'M' (mamba2)"):
        assert letter in message
    assert "\n" not in message


def test_empty_and_non_string_patterns_are_rejected():
    with pytest.raises(PatternError, match="empty pattern"):
        parse_pattern("")
    with pytest.raises(PatternError, match="string"):
        parse_pattern(["*", "-"])


def test_runs_split_on_primitive_changes():
    assert runs("**--M*") == [("*", 2), ("-", 2), ("M", 1), ("*", 1)]


def test_megatron_round_trip():
    args = to_megatron_args(NEMOTRON_H_8B)
    assert args == ["--hybrid-override-pattern", NEMOTRON_H_8B, "--num-layers", "52"]
    assert from_megatron(args[1]) == NEMOTRON_H_8B
    assert from_megatron("M-M-|M*-M-") == "M-M-M*-M-"  # pipeline splits carry no layer
    with pytest.raises(PatternError, match="multi-token"):
        from_megatron("M-M-/*-")


def test_letters_a_format_lacks_are_refused_by_its_converter_in_one_line():
    for convert, where in ((to_megatron_args, "Megatron-LM"), (to_hf_config, "nemotron_h")):
        with pytest.raises(PatternError, match=rf"swa 'W' at position 2 of '\*-W-' has no letter in {where}"):
            convert("*-W-")
    assert to_megatron_args("G-G-*E")[1] == "G-G-*E"  # Megatron has Gated DeltaNet ('G') and MoE ('E')
    with pytest.raises(PatternError, match="gdn 'G' at position 0 .* nemotron_h"):
        to_hf_config("G-*-")


QWEN3_NEXT_48 = "GEGEGE*E" * 12  # Qwen3-Next-80B-A3B: 48 layers, three Gated DeltaNet to one gated attention, MoE in each


def test_qwen3_next_round_trip():
    hf = to_qwen3_next_config(QWEN3_NEXT_48)
    assert hf["num_hidden_layers"] == 48 and hf["mlp_only_layers"] == [] and hf["model_type"] == "qwen3_next"
    assert hf["layer_types"][:4] == ["linear_attention"] * 3 + ["full_attention"]
    assert from_qwen3_next_config(hf) == QWEN3_NEXT_48
    dense = to_qwen3_next_config("G-*E")
    assert dense["mlp_only_layers"] == [0] and from_qwen3_next_config(dense) == "G-*E"
    # Hugging Face's own sparsity rule: every decoder_sparse_step-th layer is sparse
    assert from_qwen3_next_config({"layer_types": ["linear_attention"] * 4, "decoder_sparse_step": 2}) == "G-GEG-GE"


@pytest.mark.parametrize("bad, message", [
    ("G-*", "odd number"), ("GE-E", r"mlp '-' at position 2 of 'GE-E'.*takes G or \*"),
    ("GEGM", r"mamba2 'M' at position 3.*takes E or -")])
def test_a_pattern_qwen3_next_cannot_hold_is_refused_in_one_line(bad, message):
    with pytest.raises(PatternError, match=message):
        to_qwen3_next_config(bad)
    with pytest.raises(PatternError, match=r"layer_types\[1\] is 'mamba'"):
        from_qwen3_next_config({"layer_types": ["linear_attention", "mamba"]})


def test_hugging_face_round_trip():
    hf = to_hf_config("*-M-*-M-")
    assert hf == {"hybrid_override_pattern": "*-M-*-M-", "num_hidden_layers": 8}
    assert from_hf_config(hf) == "*-M-*-M-"
    with pytest.raises(PatternError, match="num_hidden_layers is 9"):
        from_hf_config({"hybrid_override_pattern": "*-M-*-M-", "num_hidden_layers": 9})
    with pytest.raises(PatternError, match="no layout: no 'hybrid_override_pattern', no 'layers_block_type'"):
        from_hf_config({})


def test_layouts_round_trip_through_hugging_face_s_own_config_classes():
    """transformers' NemotronHConfig and Qwen3NextConfig, built from what composer writes and saved as a user's
    config.json would be. transformers >= 5 turns `hybrid_override_pattern` into `layers_block_type` and drops
    it (found 2026-12-05: composer read only the former, so it could not read a config transformers 5 wrote)."""
    from transformers import NemotronHConfig, Qwen3NextConfig

    for pattern in (NEMOTRON_H_8B, "M-M*-E-E-", "*-*-"):
        saved = NemotronHConfig(**to_hf_config(pattern)).to_dict()
        assert from_hf_config(saved) == pattern
        assert NemotronHConfig(**{k: v for k, v in saved.items() if k != "model_type"}).to_dict() == saved
    assert from_hf_config({"layers_block_type": ["mamba", "mlp", "attention", "moe"]}) == "M-*E"  # older names
    with pytest.raises(PatternError, match=r"layers_block_type\[1\] is 'gdn'; nemotron_h layers are"):
        from_hf_config({"layers_block_type": ["mlp", "gdn"]})
    for pattern in (QWEN3_NEXT_48, "G-*E", "*-*-"):
        fields = to_qwen3_next_config(pattern)
        saved = Qwen3NextConfig(**{k: v for k, v in fields.items() if k != "model_type"}).to_dict()
        assert saved["model_type"] == "qwen3_next" and from_hf_config(saved) == pattern
