"""The search space: constraints, enumeration, sampling, encoding, trial keys; torch-free."""

import collections
import itertools
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from composer.config import ModelConfig
from composer.errors import ConfigError, PatternError
from primitives.attention import AttentionConfig
from scaling.accounting import count_parameters, train_flops_per_token
from search.space import MAX_ENUMERATE, SearchSpace, canonical, pattern_hash

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_papers_six_layer_three_letter_space():
    space = SearchSpace()
    assert (space.alphabet, space.length, space.size()) == ("*-M", 6, 729)
    assert space.is_feasible("**----") and space.violations("**----") == []
    assert sum(1 for _ in space.enumerate()) == 729 - 1  # all but the all-MLP stack


def test_each_violation_names_its_constraint():
    space = SearchSpace(alphabet="*-", length=4, min_share={"-": 0.5}, max_share={"*": 0.5})
    assert space.violations("**--") == []
    [length] = space.violations("**---")
    assert length.startswith("length:") and "5" in length
    [alphabet] = space.violations("*M--")
    assert alphabet.startswith("alphabet:") and "'M' at position 1" in alphabet
    [low] = space.violations("***-")[:1]
    assert low.startswith("min_share:") and "'-'" in low
    assert [v.split(":")[0] for v in space.violations("***-")] == ["min_share", "max_share"]
    [mixer] = space.violations("----")
    assert mixer.startswith("require_sequence_mixer:")
    with pytest.raises(PatternError, match="position 2"):  # not a primitive at all: an error, not a violation
        space.violations("**x-")


def test_sequence_mixer_rule():
    assert not SearchSpace(alphabet="*-M").is_feasible("------")
    assert SearchSpace(alphabet="*-M").is_feasible("M-----")
    assert SearchSpace(alphabet="*-M", require_sequence_mixer=False).is_feasible("------")
    with pytest.raises(ConfigError, match="no sequence mixer"):
        SearchSpace(alphabet="-")


def test_share_bounds_are_fractions_of_the_layers():
    space = SearchSpace(alphabet="*-", length=6, min_share={"*": 1 / 3}, max_share={"*": 1 / 3})
    assert space.is_feasible("**----")  # exactly 1/3, despite rounding
    assert not space.is_feasible("*-----") and not space.is_feasible("***---")
    assert {p.count("*") for p in space.enumerate()} == {2}


def test_bad_space_settings_are_one_line_config_errors():
    cases = [
        (dict(alphabet="*-X"), "'X' at position 2"),
        (dict(alphabet="*-*"), "twice"),
        (dict(alphabet=""), "non-empty"),
        (dict(length=0), "length"),
        (dict(alphabet="*-", min_share={"M": 0.1}), "'M' is not in the alphabet"),
        (dict(max_share={"*": 1.5}), r"max_share\['\*'\]"),
        (dict(min_share={"*": 0.6}, max_share={"*": 0.5}), "exceeds"),
        (dict(min_share={"*": 0.6, "-": 0.6}), "sums to"),
        (dict(max_params=0), "max_params"),
        (dict(primitives={"attention": {"n_heds": 2}}), "unknown key space.primitives.attention.n_heds"),
        (dict(primitives={"attention": {"n_heads": 3}}), "not divisible"),  # d_model 128
        (dict(primitives={"conv": {}}), "no primitive named 'conv'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            SearchSpace(**kwargs)
        assert "\n" not in str(info.value)


def _proxy(pattern, **kwargs):
    return ModelConfig(pattern=pattern, **kwargs)


def test_param_budget_rejects_a_bigger_pattern_and_accepts_a_smaller_one():
    proxy = dict(vocab_size=16, d_model=64, primitives={"attention": AttentionConfig(n_heads=2)})
    small, big = "***-", "*---"  # an MLP (12 d²) outweighs an attention layer (4 d²)
    n_small = count_parameters(_proxy(small, **proxy))["n_non_embedding_params"]
    n_big = count_parameters(_proxy(big, **proxy))["n_non_embedding_params"]
    assert n_small < n_big
    space = SearchSpace(alphabet="*-", length=4, max_params=n_small, d_model=64, vocab_size=16,
                        primitives={"attention": {"n_heads": 2}})
    assert space.is_feasible(small)
    [reason] = space.violations(big)
    assert reason.startswith("max_params:") and f"{n_big:,}" in reason
    assert space.cost(big)["n_non_embedding_params"] == n_big
    # The budget is on non-embedding parameters: a large vocabulary changes nothing.
    assert SearchSpace(alphabet="*-", length=4, max_params=n_small, d_model=64, vocab_size=50_000,
                       primitives={"attention": {"n_heads": 2}}).is_feasible(small)


def test_flop_budget_rejects_a_bigger_pattern_and_accepts_a_smaller_one():
    proxy = dict(vocab_size=32, d_model=64)
    small, big = "*---", "MMM-"  # at d_model 64 a Mamba-2 layer costs more than an MLP
    f_small = train_flops_per_token(_proxy(small, **proxy), seq_len=256)
    f_big = train_flops_per_token(_proxy(big, **proxy), seq_len=256)
    assert f_small < f_big
    space = SearchSpace(alphabet="*-M", length=4, max_train_flops_per_token=(f_small + f_big) // 2,
                        d_model=64, vocab_size=32, seq_len=256)
    assert space.is_feasible(small)
    [reason] = space.violations(big)
    assert reason.startswith("max_train_flops_per_token:") and f"{f_big:,}" in reason
    assert space.cost("-M-M")["train_flops_per_token"] == train_flops_per_token(_proxy("-M-M", **proxy), seq_len=256)


def test_enumerate_small_spaces_and_refuse_large_ones():
    space = SearchSpace(alphabet="*-", length=4)
    patterns = list(space.enumerate())
    assert len(patterns) == 16 - 1  # all but ----
    assert patterns[0] == "****" and patterns == sorted(patterns)  # '*' < '-': alphabet order here
    capped = SearchSpace(alphabet="*-", length=4, max_share={"*": 0.5})
    assert len(list(capped.enumerate())) == 16 - 1 - 5  # also drop the 5 with 3 or 4 attention layers
    big = SearchSpace(alphabet="*-M", length=16)
    assert big.size() == 3**16 > MAX_ENUMERATE
    with pytest.raises(ConfigError, match="use sample"):
        big.enumerate()  # refused at the call, not at the first next()


def test_sample_is_seeded_feasible_and_uniform():
    space = SearchSpace(alphabet="*-M", length=16, max_share={"*": 0.5}, min_share={"-": 0.25})
    draws = [space.sample(random.Random(7)) for _ in range(3)]
    assert len(set(draws)) == 1
    rng_a, rng_b = random.Random(1), random.Random(1)
    assert [space.sample(rng_a) for _ in range(20)] == [space.sample(rng_b) for _ in range(20)]
    gen = [space.sample(np.random.default_rng(3)) for _ in range(2)]
    assert gen[0] == gen[1]
    rng = random.Random(0)
    assert all(space.is_feasible(space.sample(rng)) for _ in range(200))
    # Uniform over the 7 feasible patterns of a tiny space (expected 400 each of 2800).
    tiny = SearchSpace(alphabet="*-", length=3)
    counts = collections.Counter(tiny.sample(rng) for _ in range(2800))
    assert set(counts) == set(tiny.enumerate())
    assert all(300 < n < 500 for n in counts.values()), counts


def test_sample_gives_up_on_an_infeasible_space():
    space = SearchSpace(alphabet="*-", length=4, max_params=1)
    with pytest.raises(ConfigError, match="no feasible pattern in 50 .*max_params"):
        space.sample(random.Random(0), max_tries=50)
    with pytest.raises(ConfigError, match="rng must be"):
        SearchSpace().sample(0)


def test_encode_decode_round_trip():
    space = SearchSpace(alphabet="*-M", length=3)
    for letters in itertools.product("*-M", repeat=3):
        pattern = "".join(letters)
        assert space.decode(space.encode(pattern)) == pattern
    assert space.encode("-*M") == [1, 0, 2]
    assert space.decode(np.array([2, 1, 0])) == "M-*"
    with pytest.raises(ConfigError, match="position 1"):
        SearchSpace(alphabet="*-", length=3).encode("*M-")
    with pytest.raises(ConfigError, match="2 layers, the space has 3"):
        space.encode("*-")
    with pytest.raises(ConfigError, match="index 3 at position 2"):
        space.decode([0, 1, 3])


def test_canonical_and_pattern_hash():
    assert canonical("**--") == "**--"
    with pytest.raises(PatternError):
        canonical("**x")
    key = pattern_hash("**----", task="in_context_recall", seed=0, steps=2000)
    assert key == pattern_hash("**----", steps=2000, seed=0, task="in_context_recall")  # keyword order
    assert len(key) == 16 and int(key, 16) >= 0
    assert key != pattern_hash("**----", task="in_context_recall", seed=1, steps=2000)
    assert key != pattern_hash("**---*", task="in_context_recall", seed=0, steps=2000)
    assert pattern_hash("**----") != key
    assert pattern_hash("**----", proxy=AttentionConfig(n_heads=2)) != pattern_hash("**----", proxy=AttentionConfig())
    # Golden value: stored results are indexed by it, so the serialisation must not drift.
    assert pattern_hash("**----", seed=0) == _golden_hash()
    with pytest.raises(ConfigError, match="JSON"):
        pattern_hash("**", fn=object())


def _golden_hash():
    import hashlib

    return hashlib.sha256(b'{"pattern":"**----","settings":{"seed":0}}').hexdigest()[:16]


def test_search_modules_import_no_torch():
    code = (
        "import sys, search.space, search.aggregate; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
