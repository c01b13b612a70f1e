import math

import numpy as np
import pytest

from composer.errors import ConfigError
from scaling.rules import (DEFAULT_RULES, PUBLISHED_BATCH_TOKENS, PUBLISHED_LR_ANCHORS, Rules,
                           StepPlan, TrainingPlan, batch_tokens_for, fit_power_law, peak_lr_for,
                           plan_steps, plan_training, sequences_per_step, tokens_for)


def test_tokens_for_is_chinchilla_20_per_param():
    assert tokens_for(1e9) == 20_000_000_000
    assert tokens_for(350e6) == 7_000_000_000
    assert tokens_for(3e9, tokens_per_param=10.0) == 30_000_000_000


@pytest.mark.parametrize("n_params, lr", [(100e6, 6e-3), (350e6, 3e-3), (1e9, 6e-4), (3e9, 3e-4)])
def test_published_anchors_are_reproduced_exactly(n_params, lr):
    assert peak_lr_for(n_params) == lr
    assert (n_params, lr) in PUBLISHED_LR_ANCHORS


def test_interpolation_is_monotone_and_stays_between_neighbouring_anchors():
    for (n0, lr0), (n1, lr1) in zip(PUBLISHED_LR_ANCHORS, PUBLISHED_LR_ANCHORS[1:]):
        sizes = np.geomspace(n0, n1, 50)
        lrs = [peak_lr_for(float(n)) for n in sizes]
        assert all(a > b for a, b in zip(lrs, lrs[1:]))
        assert all(lr1 <= lr <= lr0 for lr in lrs)
    # The rule is continuous at every anchor.
    for n, lr in PUBLISHED_LR_ANCHORS:
        assert peak_lr_for(n * (1 + 1e-9)) == pytest.approx(lr, rel=1e-6)
        assert peak_lr_for(n * (1 - 1e-9)) == pytest.approx(lr, rel=1e-6)


def test_extrapolation_uses_the_least_squares_exponent_over_all_anchors():
    a, b = fit_power_law(PUBLISHED_LR_ANCHORS)
    assert -1.2 < b < -0.7  # a clear decrease, roughly 1/N over 100M-3B
    # Least squares in log space: the residuals sum to zero.
    residuals = [math.log(lr) - math.log(a * n**b) for n, lr in PUBLISHED_LR_ANCHORS]
    assert sum(residuals) == pytest.approx(0.0, abs=1e-9)
    assert peak_lr_for(7e9) == pytest.approx(3e-4 * (7e9 / 3e9) ** b)
    assert peak_lr_for(50e6) == pytest.approx(6e-3 * (50e6 / 100e6) ** b)
    assert peak_lr_for(7e9) < 3e-4 < 6e-3 < peak_lr_for(50e6)


def test_power_law_fit_recovers_an_exact_power_law():
    points = tuple((n, 2.5 * n**-0.4) for n in (1e6, 1e7, 1e8))
    a, b = fit_power_law(points)
    assert (a, b) == (pytest.approx(2.5), pytest.approx(-0.4))


def test_lr_override_replaces_the_anchor_table():
    rules = Rules(lr_anchors=((1e9, 1e-3), (1e8, 1e-2)))  # order does not matter
    assert rules.lr_anchors == ((1e8, 1e-2), (1e9, 1e-3))
    assert peak_lr_for(1e8, rules=rules) == 1e-2
    assert peak_lr_for(10 ** 8.5, rules=rules) == pytest.approx(10 ** -2.5)
    assert peak_lr_for(1e10, rules=rules) == pytest.approx(1e-4)  # slope -1 continued
    assert peak_lr_for(350e6, rules=rules) != peak_lr_for(350e6)


def test_batch_is_2m_tokens_and_configurable():
    assert PUBLISHED_BATCH_TOKENS == 2**21
    assert batch_tokens_for(1e9) == 2**21
    assert batch_tokens_for(1e9, rules=Rules(batch_tokens=2**20)) == 2**20
    assert sequences_per_step(2**21, seq_len=8192) == 256
    assert sequences_per_step(2**21, seq_len=2048) == 1024
    assert sequences_per_step(2_000_000, seq_len=3000) == 667  # nearest whole sequence
    assert sequences_per_step(100, seq_len=8192) == 1


def test_step_plan_for_the_1b_recipe():
    # Rounding rule: total = ceil(tokens / batch) (never under-train), so 37.5B / 2**21 = 17,881.4 -> 17,882.
    plan = plan_steps(37.5e9, batch_tokens=2**21)
    assert plan.total == 17_882
    assert plan.warmup == 4_471  # 0.25 * 17,882 = 4,470.5, rounded half up
    assert plan.decay == 3_576  # 0.2 * 17,882 = 3,576.4
    assert plan.warmup + plan.stable + plan.decay == plan.total
    assert plan.total * 2**21 >= 37.5e9 > (plan.total - 1) * 2**21


@pytest.mark.parametrize("tokens", [1, 2**21 - 1, 2**21, 2**21 + 1, 7e9, 37.5e9, 60e9])
@pytest.mark.parametrize("warmup_frac, decay_frac", [(0.25, 0.2), (0.0, 0.0), (0.5, 0.5), (1.0, 0.0), (0.15, 0.85)])
def test_step_plan_arithmetic(tokens, warmup_frac, decay_frac):
    plan = plan_steps(tokens, batch_tokens=2**21, warmup_frac=warmup_frac, decay_frac=decay_frac)
    assert plan.warmup + plan.stable + plan.decay == plan.total == math.ceil(tokens / 2**21)
    assert min(plan.warmup, plan.stable, plan.decay) >= 0
    assert abs(plan.warmup - warmup_frac * plan.total) <= 0.5
    assert abs(plan.decay - decay_frac * plan.total) <= 1.0


def test_plan_training_defaults_to_chinchilla_and_published_rules():
    plan = plan_training(350e6, seq_len=8192)
    assert isinstance(plan, TrainingPlan)
    assert plan.tokens == 7_000_000_000
    assert (plan.batch_tokens, plan.batch_sequences, plan.seq_len) == (2**21, 256, 8192)
    assert plan.peak_lr == 3e-3
    assert plan.schedule == "wsd"
    steps = plan_steps(7e9, batch_tokens=2**21)
    assert (plan.steps, plan.warmup_steps, plan.decay_steps, plan.stable_steps) == (
        steps.total, steps.warmup, steps.decay, steps.stable)


def test_plan_training_with_explicit_tokens_and_overrides():
    plan = plan_training(1e9, seq_len=8192, tokens=37.5e9)
    assert (plan.tokens, plan.steps, plan.peak_lr) == (37_500_000_000, 17_882, 6e-4)
    rules = Rules(tokens_per_param=40.0, batch_tokens=2**20, warmup_frac=0.1, decay_frac=0.1)
    plan = plan_training(1e9, seq_len=4096, rules=rules)
    assert plan.tokens == 40_000_000_000
    assert (plan.batch_tokens, plan.batch_sequences) == (2**20, 256)
    assert plan.steps == math.ceil(40e9 / 2**20)
    assert plan.warmup_steps == round(0.1 * plan.steps)


def test_plan_reports_the_batch_actually_trained():
    plan = plan_training(1e9, seq_len=3000, rules=Rules(batch_tokens=2_000_000))
    assert plan.batch_sequences == 667
    assert plan.batch_tokens == 667 * 3000


def test_dataclasses_are_frozen_and_keyword_only():
    with pytest.raises(AttributeError):
        DEFAULT_RULES.batch_tokens = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        Rules(20.0)  # type: ignore[misc]
    with pytest.raises(TypeError):
        StepPlan(1, 0, 1, 0)  # type: ignore[misc]


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda: tokens_for(0), "n_params"),
        (lambda: tokens_for(-1e9), "n_params"),
        (lambda: tokens_for(1e9, tokens_per_param=0), "tokens_per_param"),
        (lambda: peak_lr_for(float("nan")), "n_params"),
        (lambda: batch_tokens_for(0), "n_params"),
        (lambda: sequences_per_step(2**21, seq_len=0), "seq_len"),
        (lambda: sequences_per_step(0, seq_len=8192), "batch_tokens"),
        (lambda: plan_steps(0, batch_tokens=2**21), "tokens"),
        (lambda: plan_steps(1e9, batch_tokens=-1), "batch_tokens"),
        (lambda: plan_steps(1e9, batch_tokens=2**21, warmup_frac=1.5), "warmup_frac"),
        (lambda: plan_steps(1e9, batch_tokens=2**21, decay_frac=-0.1), "decay_frac"),
        (lambda: plan_steps(1e9, batch_tokens=2**21, warmup_frac=0.6, decay_frac=0.5), "warmup_frac + decay_frac"),
        (lambda: Rules(warmup_frac=0.9), "warmup_frac + decay_frac"),
        (lambda: Rules(batch_tokens=0), "batch_tokens"),
        (lambda: Rules(batch_tokens=2.5e6), "batch_tokens"),
        (lambda: Rules(tokens_per_param=-20), "tokens_per_param"),
        (lambda: Rules(lr_anchors=((1e9, 1e-3),)), "lr_anchors"),
        (lambda: Rules(lr_anchors=((1e9, 1e-3), (1e9, 2e-3))), "lr_anchors"),
        (lambda: Rules(lr_anchors=((1e9, 1e-3), (1e8, 0.0))), "lr_anchors[0].lr"),
        (lambda: plan_training(0, seq_len=8192), "n_params"),
        (lambda: plan_training(1e9, seq_len=8192, tokens=0), "tokens"),
    ],
)
def test_bad_input_raises_one_line_config_error_naming_the_field(call, field):
    with pytest.raises(ConfigError) as info:
        call()
    message = str(info.value)
    assert message.startswith(field)
    assert "\n" not in message
