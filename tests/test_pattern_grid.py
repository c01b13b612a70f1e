"""IsoFLOP grids realised for one pattern: sizes between presets, each point spending its budget."""

import math

import pytest

from composer.errors import ConfigError
from composer.pattern import count_primitives
from scaling.accounting import count_parameters
from scaling.laws import plan_isoflop_grid, plan_pattern_isoflop_grid
from scaling.presets import preset_model_config, reference_pattern, sized_preset


@pytest.mark.parametrize("size", [120e6, 700e6, 2.5e9, 6e9])
def test_sized_preset_lands_within_one_block(size):
    p = sized_preset(size)
    got = count_parameters(preset_model_config(p, reference_pattern(p)))["n_non_embedding_params"]
    one_block = count_parameters(preset_model_config(p, "*-"))["n_non_embedding_params"]
    assert abs(got - size) <= one_block / 2 + p.d_model


def test_pattern_grid_spends_each_budget_and_keeps_the_pattern():
    budgets = [2e19, 1e20, 4e20]
    points = plan_pattern_isoflop_grid("M-*-M-", budgets=budgets, n_sizes=5, spread=4.0)
    planned = plan_isoflop_grid(budgets=budgets, n_sizes=5, spread=4.0)
    assert len(points) == len(planned) == 15
    for point, plan in zip(points, planned):
        assert math.isclose(6 * point.n_non_embedding_params * point.tokens, point.compute, rel_tol=1e-12)
        assert 0.5 < point.n_non_embedding_params / plan.n_params < 2  # depth grows in whole runs: coarse when small
        counts = count_primitives(point.pattern)
        assert counts["*"] >= 1 and counts["M"] >= counts["*"] and counts["-"] >= counts["M"]
    for budget in budgets:  # within a budget, larger models see fewer tokens
        sizes = [(p.n_non_embedding_params, p.tokens) for p in points if p.compute == budget]
        assert sorted(sizes) == sorted(sizes, key=lambda s: -s[1])


def test_bad_sizes_are_config_errors():
    with pytest.raises(ConfigError, match="positive"):
        sized_preset(0)
