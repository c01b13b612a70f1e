import pytest

from composer.errors import PatternError
from composer.pattern import (count_primitives, from_hf_config, from_megatron, parse_pattern, runs,
                              to_hf_config, to_megatron_args)

NEMOTRON_H_8B = "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-"


def test_counts_and_length_come_from_the_string():
    counts = count_primitives(NEMOTRON_H_8B)
    assert len(NEMOTRON_H_8B) == 52
    assert counts == {"*": 4, "M": 24, "-": 24}


@pytest.mark.parametrize(
    "bad, position, char",
    [("*-x-", 2, "x"), ("A", 0, "A"), ("MM M", 2, " "), ("**-E", 3, "E"), ("*|-", 1, "|")],
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


def test_hugging_face_round_trip():
    hf = to_hf_config("*-M-*-M-")
    assert hf == {"hybrid_override_pattern": "*-M-*-M-", "num_hidden_layers": 8}
    assert from_hf_config(hf) == "*-M-*-M-"
    with pytest.raises(PatternError, match="num_hidden_layers is 9"):
        from_hf_config({"hybrid_override_pattern": "*-M-*-M-", "num_hidden_layers": 9})
    with pytest.raises(PatternError, match="no 'hybrid_override_pattern'"):
        from_hf_config({})
