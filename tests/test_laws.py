import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from composer.errors import ConfigError
from scaling.laws import (ChinchillaFit, GridPoint, Run, bootstrap_chinchilla, fit_chinchilla,
                          fit_isoflop, group_by_compute, plan_isoflop_grid, plot_chinchilla,
                          plot_isoflop, predict_with_uncertainty)

# The law the synthetic runs come from (Hoffmann et al. 2022 report E=1.69, A=406.4, B=410.7,
# alpha=0.34, beta=0.28).
TRUE = dict(e=1.7, a=400.0, alpha=0.34, b=410.0, beta=0.28)
TRUE_N_EXPONENT = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])  # 0.4516
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]


def true_loss(n, d):
    return TRUE["e"] + TRUE["a"] / n ** TRUE["alpha"] + TRUE["b"] / d ** TRUE["beta"]


def synthetic_runs(noise: float = 0.0, *, seed: int = 0, sizes: int = 7, token_counts: int = 7) -> list[Run]:
    """Runs on a grid of N (10M-3B) and D (100M-100B); loss times lognormal noise of std `noise`."""
    rng = np.random.default_rng(seed)
    return [
        Run(float(n), float(d), true_loss(n, d) * math.exp(rng.normal(0.0, noise)))
        for n in np.geomspace(1e7, 3e9, sizes)
        for d in np.geomspace(1e8, 1e11, token_counts)
    ]


HELD_OUT = [(7e9, 1.4e11), (2e8, 4e9), (5e7, 3e10)]  # beyond and between the grid


def test_noiseless_fit_recovers_the_law_tightly():
    fit = fit_chinchilla(synthetic_runs())
    assert isinstance(fit, ChinchillaFit)
    assert fit.n_runs == 49
    for name, value in TRUE.items():
        assert getattr(fit, name) == pytest.approx(value, rel=1e-4), name
    for n, d in HELD_OUT:
        assert fit.predict(n, d) == pytest.approx(true_loss(n, d), rel=1e-6)


def test_noisy_fit_recovers_the_law_within_tolerance():
    fit = fit_chinchilla(synthetic_runs(0.002, seed=1))
    assert fit.alpha == pytest.approx(TRUE["alpha"], abs=0.03)
    assert fit.beta == pytest.approx(TRUE["beta"], abs=0.03)
    assert fit.e == pytest.approx(TRUE["e"], abs=0.05)
    # A and alpha trade off along a ridge: log A is the loosely determined one.
    assert math.log(fit.a) == pytest.approx(math.log(TRUE["a"]), abs=0.4)
    assert math.log(fit.b) == pytest.approx(math.log(TRUE["b"]), abs=0.4)
    for n, d in HELD_OUT:
        assert fit.predict(n, d) == pytest.approx(true_loss(n, d), rel=0.01)


def test_predict_broadcasts_and_the_optimum_follows_the_exponent():
    fit = fit_chinchilla(synthetic_runs())
    losses = fit.predict(np.array([1e8, 1e9]), np.array([2e9, 2e10]))
    assert losses.shape == (2,)
    assert losses[1] < losses[0]
    assert fit.n_opt_exponent == pytest.approx(TRUE_N_EXPONENT, rel=1e-3)
    n_opt, d_opt = fit.optimal_allocation(1e21)
    assert 6 * n_opt * d_opt == pytest.approx(1e21)
    # The optimum is a minimum of the loss along the isoFLOP curve.
    for factor in (0.8, 1.25):
        n = n_opt * factor
        assert fit.predict(n, 1e21 / (6 * n)) > fit.predict(n_opt, d_opt)


def test_outliers_barely_move_the_huber_fit():
    runs = synthetic_runs()
    runs[10] = Run(runs[10].n_params, runs[10].tokens, runs[10].loss * 1.5)
    fit = fit_chinchilla(runs)
    assert fit.alpha == pytest.approx(TRUE["alpha"], abs=0.01)
    assert fit.beta == pytest.approx(TRUE["beta"], abs=0.01)


def test_bootstrap_uncertainty_shrinks_with_the_noise():
    n, d = HELD_OUT[0]
    noisy = predict_with_uncertainty(synthetic_runs(0.01, seed=2), n, d, n_boot=20, seed=0)
    quiet = predict_with_uncertainty(synthetic_runs(0.001, seed=2), n, d, n_boot=20, seed=0)
    assert 0 < quiet.std < noisy.std / 3
    assert quiet.low <= quiet.loss <= quiet.high
    assert abs(quiet.loss - true_loss(n, d)) < 4 * quiet.std + 1e-3


def test_bootstrap_is_seeded():
    runs = synthetic_runs(0.005, seed=3, sizes=5, token_counts=5)
    first = bootstrap_chinchilla(runs, n_boot=5, seed=7)
    again = bootstrap_chinchilla(runs, n_boot=5, seed=7)
    other = bootstrap_chinchilla(runs, n_boot=5, seed=8)
    assert len(first.samples) == 5
    assert first.predict(1e9, 2e10) == again.predict(1e9, 2e10)
    assert first.predict(1e9, 2e10) != other.predict(1e9, 2e10)


def test_isoflop_grid_points_spend_their_budget_and_bracket_the_optimum():
    budgets = [1e19, 1e18, 1e20]
    grid = plan_isoflop_grid(budgets=budgets, n_sizes=5, spread=4.0)
    assert len(grid) == 15
    assert all(isinstance(p, GridPoint) for p in grid)
    assert [p.compute for p in grid] == sorted(p.compute for p in grid)
    for c in sorted(budgets):
        points = [p for p in grid if p.compute == c]
        n_star = math.sqrt(c / 120.0)  # Chinchilla: D = 20 N, C = 6 N D
        sizes = [p.n_params for p in points]
        assert sizes == sorted(sizes)
        assert sizes[0] == pytest.approx(n_star / 4) and sizes[-1] == pytest.approx(n_star * 4)
        assert sizes[2] == pytest.approx(n_star)
        ratios = np.diff(np.log(sizes))
        assert np.allclose(ratios, ratios[0])  # log-uniform
        for p in points:
            assert 6 * p.n_params * p.tokens == pytest.approx(c, rel=1e-12)
    assert plan_isoflop_grid(budgets=budgets) == plan_isoflop_grid(budgets=budgets)  # deterministic


def isoflop_runs(noise: float = 0.0, *, seed: int = 0) -> list[Run]:
    grid = plan_isoflop_grid(budgets=[1e18, 1e19, 1e20, 1e21, 1e22], n_sizes=7, spread=8.0)
    rng = np.random.default_rng(seed)
    return [Run(p.n_params, p.tokens, true_loss(p.n_params, p.tokens) * math.exp(rng.normal(0.0, noise)))
            for p in grid]


def test_isoflop_recovers_the_optimal_exponent():
    result = fit_isoflop(isoflop_runs())
    assert len(result.budgets) == 5 and result.skipped == ()
    assert result.n_exponent == pytest.approx(TRUE_N_EXPONENT, abs=0.005)
    assert result.d_exponent == pytest.approx(1 - TRUE_N_EXPONENT, abs=0.005)
    for budget in result.budgets:
        assert budget.c2 > 0 and budget.n_runs == 7
        assert budget.n_min < budget.n_opt < budget.n_max
        assert 6 * budget.n_opt * budget.d_opt == pytest.approx(budget.compute)
        # The vertex sits near the law's exact optimum for that budget.
        n, d = budget.n_opt, budget.d_opt
        assert budget.loss_opt == pytest.approx(true_loss(n, d), rel=2e-3)
        assert result.n_opt(budget.compute) == pytest.approx(budget.n_opt, rel=0.05)


def test_isoflop_with_noise_recovers_the_exponent_loosely():
    result = fit_isoflop(isoflop_runs(0.002, seed=4))
    assert result.n_exponent == pytest.approx(TRUE_N_EXPONENT, abs=0.05)


def test_isoflop_groups_by_relative_compute_and_skips_thin_budgets():
    runs = isoflop_runs()
    # Jitter compute by under 1%: still one budget each.
    jittered = [Run(r.n_params, r.tokens * (1 + 0.002 * (i % 3)), r.loss) for i, r in enumerate(runs)]
    assert len(group_by_compute(jittered, rel_tol=0.01)) == 5
    stray = Run(1e8, 1e12 / 6e8, 3.0)  # a lone run at C = 1e12 FLOPs
    result = fit_isoflop(jittered + [stray], rel_tol=0.01)
    assert len(result.budgets) == 5
    assert result.skipped == (pytest.approx(1e12),)
    assert result.n_exponent == pytest.approx(TRUE_N_EXPONENT, abs=0.01)


def test_run_compute_defaults_to_6nd_and_can_be_given():
    assert Run(1e9, 2e10, 2.5).flops == 6 * 1e9 * 2e10
    assert Run(1e9, 2e10, 2.5, compute=1.5e20).flops == 1.5e20
    with pytest.raises(TypeError):
        Run(1e9, 2e10, 2.5, 1.5e20)  # type: ignore[misc]  # compute is keyword-only


def test_plots_write_png_files(tmp_path):
    runs = synthetic_runs(0.005, seed=5, sizes=4, token_counts=4)
    fit = fit_chinchilla(runs)
    path = plot_chinchilla(fit, runs, tmp_path / "nested" / "chinchilla.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 1000
    iso = isoflop_runs()
    path = plot_isoflop(fit_isoflop(iso), iso, tmp_path / "isoflop.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 1000


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: Run(0, 1e9, 3.0), "n_params"),
        (lambda: Run(1e8, -1e9, 3.0), "tokens"),
        (lambda: Run(1e8, 1e9, float("nan")), "loss"),
        (lambda: Run(1e8, 1e9, 3.0, compute=0), "compute"),
        (lambda: fit_chinchilla(synthetic_runs()[:4]), "at least 5 runs"),
        (lambda: fit_chinchilla([Run(1e8, d, 3.0) for d in (1e9, 2e9, 3e9, 4e9, 5e9)]), "2 distinct n_params"),
        (lambda: bootstrap_chinchilla(synthetic_runs(), n_boot=1), "n_boot"),
        (lambda: fit_chinchilla(synthetic_runs(), huber_delta=0), "huber_delta"),
        (lambda: fit_isoflop(isoflop_runs()[:7]), "at least 2 budgets"),
        (lambda: fit_isoflop(isoflop_runs(), min_sizes=2), "min_sizes"),
        (lambda: fit_isoflop(isoflop_runs(), rel_tol=0), "rel_tol"),
        (lambda: plan_isoflop_grid(budgets=[]), "budgets"),
        (lambda: plan_isoflop_grid(budgets=[1e18, -1.0]), "budgets[1]"),
        (lambda: plan_isoflop_grid(budgets=[1e18], n_sizes=0), "n_sizes"),
        (lambda: plan_isoflop_grid(budgets=[1e18], spread=0.5), "spread"),
    ],
)
def test_bad_input_raises_one_line_config_error(call, message):
    with pytest.raises(ConfigError) as info:
        call()
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_scaling_modules_import_without_torch_or_matplotlib():
    code = "import sys, scaling.laws, scaling.rules; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
