"""MAD task generators: contract tests loop over the registry; semantics are checked by scanning
sequences in plain Python, independently of the vectorised generators."""

import dataclasses

import pytest
import torch

from composer.errors import ConfigError
from composer.engine.batches import IGNORE
from composer.tasks.mad import TASKS, task_config_from_mapping
from composer.engine.objective import loss_and_correct


def accuracy_and_count(logits, targets):
    _, correct, counted = loss_and_correct(logits, targets)
    return int(correct), int(counted)

N = 64  # examples per contract test: enough to hit every branch, fast


def _data(name: str, n: int = N, seed: int = 0, **overrides):
    cfg = task_config_from_mapping(name, overrides)
    return cfg, *TASKS[name].generate(cfg, n_examples=n, seed=seed)


def _t_out(name: str, cfg) -> int:
    return cfg.length if TASKS[name].build_head is not None else cfg.seq_len


# -- contract, for every registered task ------------------------------------------------------


@pytest.mark.parametrize("name", TASKS)
def test_shapes_dtypes_and_ranges(name):
    cfg, x, y = _data(name)
    assert x.dtype == y.dtype == torch.int64
    assert x.shape == (N, cfg.seq_len)
    assert y.shape == (N, _t_out(name, cfg))
    assert 0 <= x.min() and x.max() < cfg.vocab_size
    scored = y != IGNORE
    assert ((y[scored] >= 0) & (y[scored] < cfg.vocab_size)).all()
    assert scored.sum(1).min() >= 1, "every example has at least one target"


@pytest.mark.parametrize("name", TASKS)
def test_config_is_frozen_with_sizes(name):
    cfg = TASKS[name].config_cls()
    assert cfg.n_train >= 1 and cfg.n_test == 1_280
    assert task_config_from_mapping(name, None) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_train = 1


@pytest.mark.parametrize("name", TASKS)
def test_deterministic_per_seed(name):
    _, x1, y1 = _data(name, seed=3)
    _, x2, y2 = _data(name, seed=3)
    _, x3, _ = _data(name, seed=4)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)


@pytest.mark.parametrize("name", TASKS)
def test_oracle_scores_one(name):
    cfg, _, y = _data(name)
    logits = torch.nn.functional.one_hot(y.clamp(min=0), cfg.vocab_size).float()  # (N, T_out, V)
    correct, counted = accuracy_and_count(logits, y)
    assert counted == int((y != IGNORE).sum()) > 0
    assert correct == counted


@pytest.mark.parametrize("name", TASKS)
def test_random_guess_over_answers_scores_chance(name):
    # A model that knows which tokens can be answers but nothing else sits at chance_accuracy.
    cfg, _, y = _data(name, n=512)
    answers = torch.unique(y[y != IGNORE])
    logits = torch.full((*y.shape, cfg.vocab_size), float("-inf"))
    logits[..., answers] = torch.randn(*y.shape, len(answers), generator=torch.Generator().manual_seed(0))
    correct, counted = accuracy_and_count(logits, y)
    assert abs(correct / counted - cfg.chance_accuracy) < 0.015


def test_accuracy_and_count_ignores_unscored_positions():
    logits = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])  # argmax: 1, 0, 1
    targets = torch.tensor([[1, 1, IGNORE]])
    assert accuracy_and_count(logits, targets) == (1, 2)


# -- task semantics ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["in_context_recall", "noisy_in_context_recall"])
def test_recall_targets_are_values_of_keys_seen_before(name):
    cfg, x, y = _data(name, n=16)
    half = cfg.vocab // 2
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        seen: dict[int, int] = {}
        expect_key = True
        for t, tok in enumerate(row_x):
            if tok >= cfg.vocab:  # noise: between pairs only, never scored
                assert expect_key and row_y[t] == IGNORE
                continue
            if expect_key:
                assert tok < half and row_x[t + 1] >= half, "a key is followed directly by its value"
                value = row_x[t + 1]
                if tok in seen:
                    assert seen[tok] == value == row_y[t], "a query's target is the value seen before"
                else:
                    assert row_y[t] == IGNORE, "the first occurrence of a key is never a target"
                    seen[tok] = value
            else:
                assert tok >= half and row_y[t] == IGNORE
            expect_key = not expect_key
        assert expect_key, "sequences hold whole pairs"


def test_noisy_recall_noise_share_and_never_a_target():
    for frac in (0.2, 0.6):
        cfg, x, y = _data("noisy_in_context_recall", n=256, noise_frac=frac)
        noise = x >= cfg.vocab
        assert abs(noise.float().mean().item() - frac) < 0.01
        assert (y[noise] == IGNORE).all()
        assert (y[y != IGNORE] < cfg.vocab).all()
        assert len(torch.unique(x[noise])) == cfg.n_noise_tokens


def _runs(row: list[int], half: int) -> list[tuple[int, list[int]]]:
    """(start, tokens) of maximal runs of key tokens (< half) or value tokens (>= half)."""
    out: list[tuple[int, list[int]]] = []
    for t, tok in enumerate(row):
        if out and (out[-1][1][0] < half) == (tok < half):
            out[-1][1].append(tok)
        else:
            out.append((t, [tok]))
    return out


def test_fuzzy_recall_targets_only_values_of_repeated_key_motifs():
    cfg, x, y = _data("fuzzy_in_context_recall", n=32)
    half = cfg.vocab // 2
    key_lengths, value_lengths = set(), set()
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        runs = _runs(row_x, half)
        assert runs[0][1][0] < half, "a sequence starts with a key motif"
        seen: dict[tuple[int, ...], list[int]] = {}
        expected = [IGNORE] * len(row_x)
        for (_, key), (start, value) in zip(runs[0::2], runs[1::2]):
            key_lengths.add(len(key))
            value_lengths.add(len(value))
            assert len(key) <= cfg.k_motif_size and len(value) <= cfg.v_motif_size
            if tuple(key) in seen:
                known = seen[tuple(key)]
                assert value == known[: len(value)], "a key motif keeps its value motif (the last may be cut)"
                for j in range(start, start + len(value)):
                    expected[j - 1] = row_x[j]  # each value token is predicted from the token before it
            else:
                seen[tuple(key)] = value
        assert row_y == expected
        assert len(seen) <= cfg.n_keys
    assert key_lengths == set(range(1, cfg.k_motif_size + 1))
    assert value_lengths >= {2, cfg.v_motif_size}


def test_selective_copying_targets_are_context_tokens_in_order():
    cfg, x, y = _data("selective_copying", n=32)
    blank, signal = cfg.vocab, cfg.vocab + 1
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        assert row_x.count(signal) == 1
        at = row_x.index(signal)
        content = [tok for tok in row_x[:at] if tok != blank]
        assert len(content) == cfg.n_copy
        assert [tok for tok in row_y if tok != IGNORE] == content
        assert all(tok == IGNORE for tok in row_y[:at]), "nothing is scored before the copy signal"


def test_memorization_mapping_is_fixed_across_examples_and_seeds():
    mapping: dict[int, int] = {}
    for seed in (0, 1, 2):
        cfg, x, y = _data("memorization", n=128, seed=seed)
        keys, values = x[:, 0::2], x[:, 1::2]
        assert torch.equal(y[:, 0::2], values) and (y[:, 1::2] == IGNORE).all()
        for row in keys:
            assert len(set(row.tolist())) == len(row), "keys are distinct within a sequence: no in-context lookup"
        for k, v in zip(keys.flatten().tolist(), values.flatten().tolist()):
            assert mapping.setdefault(k, v) == v
    assert len(mapping) == cfg.vocab // 2
    _, x_other, _ = _data("memorization", n=128, mapping_seed=1)
    assert any(mapping[k] != v for k, v in zip(x_other[:, 0::2].flatten().tolist(), x_other[:, 1::2].flatten().tolist()))


def test_compression_targets_and_head():
    cfg, x, y = _data("compression")
    assert torch.equal(y, x[:, :-1]) and (x[:, -1] == cfg.vocab).all()
    head = TASKS["compression"].build_head(cfg, 24)
    hidden = torch.randn(5, cfg.seq_len, 24, requires_grad=True)
    logits = head(hidden)
    assert logits.shape == (5, cfg.length, cfg.vocab_size)
    logits.sum().backward()
    assert hidden.grad[:, :-1].abs().sum() == 0, "only the last position reaches the decoder"
    assert hidden.grad[:, -1].abs().sum() > 0


# -- configuration errors ---------------------------------------------------------------------


def test_unknown_task_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown task 'recall'") as info:
        task_config_from_mapping("recall", None)
    assert all(name in str(info.value) for name in TASKS)


def test_unknown_key_is_named_with_valid_keys():
    with pytest.raises(ConfigError, match="vocab_sise") as info:
        task_config_from_mapping("in_context_recall", {"vocab_sise": 32})
    assert "n_train" in str(info.value) and "length" in str(info.value)


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("in_context_recall", {"vocab": 7}),
        ("in_context_recall", {"length": "128"}),
        ("in_context_recall", {"n_train": 0}),
        ("noisy_in_context_recall", {"noise_frac": 1.0}),
        ("selective_copying", {"n_copy": 200}),
        ("memorization", {"length": 512}),
        ("fuzzy_in_context_recall", {"n_keys": 1000}),
    ],
)
def test_bad_values_raise_one_line_config_errors(name, overrides):
    with pytest.raises(ConfigError) as info:
        task_config_from_mapping(name, overrides)
    assert "\n" not in str(info.value) and next(iter(overrides)) in str(info.value)


def test_overrides_change_the_setting():
    cfg = task_config_from_mapping("in_context_recall", {"vocab": 32, "length": 256, "n_train": 800})
    assert (cfg.vocab_size, cfg.seq_len, cfg.n_train, cfg.chance_accuracy) == (32, 256, 800, 1 / 16)
    cfg = task_config_from_mapping("noisy_in_context_recall", {"noise_frac": 0})  # an int where a float is asked
    assert cfg.noise_frac == 0
