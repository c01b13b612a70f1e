"""Scaling-law fits: Chinchilla's parametric loss L(N, D) and isoFLOP parabolas.

numpy and scipy only (no torch); matplotlib is imported inside the plotting functions.
N is the parameter count, D the training tokens, C = 6·N·D the training FLOPs unless given.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.optimize import minimize

from composer.errors import ConfigError
from scaling.rules import require_positive

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, appendix D.2
# Initialisation grid of Hoffmann et al. 2022 (D.2): log A, log B, log E, alpha, beta.
_GRID_LOG_A = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
_GRID_LOG_B = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
_GRID_LOG_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
_GRID_ALPHA = (0.0, 0.5, 1.0, 1.5, 2.0)
_GRID_BETA = (0.0, 0.5, 1.0, 1.5, 2.0)
_GRID = np.array(list(itertools.product(_GRID_LOG_A, _GRID_LOG_B, _GRID_LOG_E, _GRID_ALPHA, _GRID_BETA)))
_N_LOCAL_STARTS = 4  # best grid points refined by BFGS; the rest rarely win
_N_BOOT_GRID_STARTS = 1  # per bootstrap refit, besides the full fit


@dataclass(frozen=True)
class Run:
    """One finished training run: its size, its tokens and its final validation loss."""

    n_params: float
    tokens: float
    loss: float
    _: KW_ONLY
    compute: float | None = None  # training FLOPs; 6·N·D when None

    def __post_init__(self) -> None:
        require_positive("n_params", self.n_params)
        require_positive("tokens", self.tokens)
        require_positive("loss", self.loss)
        if self.compute is not None:
            require_positive("compute", self.compute)

    @property
    def flops(self) -> float:
        return 6.0 * self.n_params * self.tokens if self.compute is None else self.compute


def _as_arrays(runs: Sequence[Run]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.array([r.n_params for r in runs], dtype=float),
        np.array([r.tokens for r in runs], dtype=float),
        np.array([r.loss for r in runs], dtype=float),
    )


# ---------------------------------------------------------------------------------------------
# Chinchilla parametric fit: L(N, D) = E + A / N^alpha + B / D^beta
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ChinchillaFit:
    """Fitted L(N, D) = e + a / N^alpha + b / D^beta."""

    e: float  # irreducible loss
    a: float
    alpha: float
    b: float
    beta: float
    n_runs: int
    objective: float  # summed Huber loss on log-loss residuals at the optimum

    def predict(self, n_params: float | np.ndarray, tokens: float | np.ndarray) -> float | np.ndarray:
        """Predicted loss; broadcasts over numpy arrays."""
        n, d = np.asarray(n_params, dtype=float), np.asarray(tokens, dtype=float)
        loss = self.e + self.a / n**self.alpha + self.b / d**self.beta
        return float(loss) if loss.ndim == 0 else loss

    @property
    def n_opt_exponent(self) -> float:
        """a in N_opt ∝ C^a at fixed compute (Hoffmann et al. 2022, eq. 4): beta / (alpha + beta)."""
        return self.beta / (self.alpha + self.beta)

    def optimal_allocation(self, compute: float) -> tuple[float, float]:
        """Loss-minimising (N, D) with 6·N·D = compute (Hoffmann et al. 2022, eq. 4)."""
        require_positive("compute", compute)
        g = (self.alpha * self.a / (self.beta * self.b)) ** (1.0 / (self.alpha + self.beta))
        n_opt = g * (compute / 6.0) ** self.n_opt_exponent
        return n_opt, compute / (6.0 * n_opt)


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    abs_r = np.abs(r)
    return np.where(abs_r <= delta, 0.5 * r**2, delta * (abs_r - 0.5 * delta))


def _log_sum_exp(terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LSE over axis 0 and its softmax weights (the gradient of LSE), computed stably."""
    top = terms.max(axis=0)
    weights = np.exp(terms - top)
    total = weights.sum(axis=0)
    return top + np.log(total), weights / total


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float):
    """Huber loss of log L against LSE(log A − α log N, log B − β log D, log E), with gradient."""
    log_a, log_b, log_e, alpha, beta = theta
    terms = np.stack([log_a - alpha * log_n, log_b - beta * log_d, np.full_like(log_n, log_e)])
    log_pred, weights = _log_sum_exp(terms)
    r = log_pred - log_l
    dr = np.clip(r, -delta, delta)  # Huber derivative
    grad = np.array([
        np.sum(dr * weights[0]),
        np.sum(dr * weights[1]),
        np.sum(dr * weights[2]),
        -np.sum(dr * weights[0] * log_n),
        -np.sum(dr * weights[1] * log_d),
    ])
    return float(np.sum(_huber(r, delta))), grad


def _grid_objectives(log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float) -> np.ndarray:
    """Objective at every point of _GRID at once: shape (len(_GRID),)."""
    log_a, log_b, log_e, alpha, beta = (_GRID[:, i : i + 1] for i in range(5))  # (G, 1) each
    log_e = np.broadcast_to(log_e, (len(_GRID), len(log_n)))
    log_pred, _ = _log_sum_exp(np.stack([log_a - alpha * log_n, log_b - beta * log_d, log_e]))
    return _huber(log_pred - log_l, delta).sum(axis=1)


def _best_grid_starts(log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float) -> np.ndarray:
    values = _grid_objectives(log_n, log_d, log_l, delta)
    return _GRID[np.argsort(values, kind="stable")[:_N_LOCAL_STARTS]]


def _fit_from(starts: np.ndarray, log_n, log_d, log_l, delta: float) -> tuple[np.ndarray, float]:
    """Best BFGS result over the starts: (theta, objective)."""
    best_theta, best_value = starts[0], math.inf
    for start in starts:
        # BFGS, not L-BFGS-B: with 5 parameters its dense update is cheap, and L-BFGS-B's compiled
        # core runs ~10x slower per step once torch's thread pools are loaded in the process.
        result = minimize(_objective, start, args=(log_n, log_d, log_l, delta), jac=True, method="BFGS",
                          options={"maxiter": 2000, "gtol": 1e-12})
        if np.isfinite(result.fun) and result.fun < best_value:
            best_theta, best_value = result.x, float(result.fun)
    return best_theta, best_value


def _check_fit_inputs(runs: Sequence[Run]) -> None:
    if len(runs) < 5:
        raise ConfigError(f"runs: fit_chinchilla needs at least 5 runs for 5 parameters, got {len(runs)}")
    if not all(isinstance(r, Run) for r in runs):
        raise ConfigError("runs must all be scaling.laws.Run instances")
    if len({r.n_params for r in runs}) < 2 or len({r.tokens for r in runs}) < 2:
        raise ConfigError("runs: fit_chinchilla needs at least 2 distinct n_params and 2 distinct tokens")


def _to_fit(theta: np.ndarray, value: float, n_runs: int) -> ChinchillaFit:
    log_a, log_b, log_e, alpha, beta = (float(t) for t in theta)
    return ChinchillaFit(
        e=math.exp(log_e), a=math.exp(log_a), alpha=alpha, b=math.exp(log_b), beta=beta,
        n_runs=n_runs, objective=value,
    )


def fit_chinchilla(runs: Sequence[Run], *, huber_delta: float = HUBER_DELTA) -> ChinchillaFit:
    """Fit L(N, D) = E + A/N^α + B/D^β as Hoffmann et al. 2022 (arXiv 2203.15556, app. D.2) do.

    Minimises the Huber loss (δ = 1e-3) between log L and the log of the predicted loss, written
    as a log-sum-exp of (log A − α log N, log B − β log D, log E), with BFGS (they use L-BFGS;
    same optimum) from the best points of their initialisation grid (4,500 points, scored in one
    vectorised pass).
    """
    return bootstrap_chinchilla(runs, n_boot=0, huber_delta=huber_delta).fit


@dataclass(frozen=True, kw_only=True)
class Prediction:
    """A predicted loss with its bootstrap spread."""

    loss: float  # prediction of the fit on all runs
    std: float  # standard deviation over bootstrap refits
    low: float  # 2.5th percentile over bootstrap refits
    high: float  # 97.5th percentile over bootstrap refits


@dataclass(frozen=True, kw_only=True)
class ChinchillaBootstrap:
    """A fit on all runs plus refits on runs resampled with replacement."""

    fit: ChinchillaFit
    samples: tuple[ChinchillaFit, ...]
    seed: int

    def predict(self, n_params: float, tokens: float) -> Prediction:
        draws = np.array([s.predict(n_params, tokens) for s in self.samples])
        low, high = np.percentile(draws, [2.5, 97.5])
        return Prediction(loss=float(self.fit.predict(n_params, tokens)), std=float(draws.std(ddof=1)),
                          low=float(low), high=float(high))


def bootstrap_chinchilla(
    runs: Sequence[Run], *, n_boot: int = 100, seed: int = 0, huber_delta: float = HUBER_DELTA
) -> ChinchillaBootstrap:
    """Fit all runs, then refit n_boot resamples of them (with replacement, seeded).

    Source: the nonparametric bootstrap (Efron 1979) used for the parameter intervals of
    Hoffmann et al. 2022 (app. D.2). Each refit starts from the full fit and the best grid
    point of the full data; resamples with fewer than 2 distinct sizes or token counts are redrawn.
    """
    runs = tuple(runs)
    _check_fit_inputs(runs)
    require_positive("huber_delta", huber_delta)
    # n_boot = 0 is the plain fit (fit_chinchilla); one refit gives no spread.
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot == 1 or n_boot < 0:
        raise ConfigError(f"n_boot must be 0 or an integer >= 2, got {n_boot!r}")
    n, d, loss = _as_arrays(runs)
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)
    grid_starts = _best_grid_starts(log_n, log_d, log_l, huber_delta)
    theta, value = _fit_from(grid_starts, log_n, log_d, log_l, huber_delta)
    full = _to_fit(theta, value, len(runs))
    # Resamples start from the full fit and the full data's best grid points: rescoring the
    # grid per resample costs more than it finds.
    starts = np.vstack([theta, grid_starts[: _N_BOOT_GRID_STARTS]])
    rng = np.random.default_rng(seed)
    samples: list[ChinchillaFit] = []
    while len(samples) < n_boot:
        idx = rng.integers(0, len(runs), size=len(runs))
        if len(np.unique(n[idx])) < 2 or len(np.unique(d[idx])) < 2:
            continue  # not identifiable; redraw
        theta_i, value_i = _fit_from(starts, log_n[idx], log_d[idx], log_l[idx], huber_delta)
        samples.append(_to_fit(theta_i, value_i, len(runs)))
    return ChinchillaBootstrap(fit=full, samples=tuple(samples), seed=seed)


def predict_with_uncertainty(
    runs: Sequence[Run], n_params: float, tokens: float, *, n_boot: int = 100, seed: int = 0
) -> Prediction:
    """Loss at (n_params, tokens) from fit_chinchilla, with a seeded bootstrap std and 95% interval.

    Source: bootstrap over runs (Efron 1979) of the Hoffmann et al. 2022 fit. To predict many
    points, call bootstrap_chinchilla once and its predict per point.
    """
    require_positive("n_params", n_params)
    require_positive("tokens", tokens)
    return bootstrap_chinchilla(runs, n_boot=n_boot, seed=seed).predict(n_params, tokens)


# ---------------------------------------------------------------------------------------------
# IsoFLOP profiles (Hoffmann et al. 2022, approach 2)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class IsoFlopBudget:
    """One compute budget: the parabola loss = c2·x² + c1·x + c0 with x = ln N, and its minimum."""

    compute: float  # geometric mean of the grouped runs' FLOPs
    c2: float
    c1: float
    c0: float
    n_opt: float
    d_opt: float  # compute / (6 · n_opt)
    loss_opt: float
    n_runs: int
    n_min: float  # smallest sampled size: n_opt outside [n_min, n_max] is an extrapolation
    n_max: float

    def predict(self, n_params: float | np.ndarray) -> float | np.ndarray:
        x = np.log(np.asarray(n_params, dtype=float))
        loss = self.c2 * x**2 + self.c1 * x + self.c0
        return float(loss) if loss.ndim == 0 else loss


@dataclass(frozen=True, kw_only=True)
class IsoFlopFit:
    """Per-budget parabolas and the power laws N_opt = n_coef · C^n_exponent, D_opt = d_coef · C^d_exponent."""

    budgets: tuple[IsoFlopBudget, ...]  # sorted by compute
    n_exponent: float
    n_coef: float
    d_exponent: float
    d_coef: float
    rel_tol: float  # runs within this relative compute difference form one budget
    skipped: tuple[float, ...]  # budgets with too few sizes or a parabola that opens downwards

    def n_opt(self, compute: float) -> float:
        return self.n_coef * compute**self.n_exponent

    def d_opt(self, compute: float) -> float:
        return self.d_coef * compute**self.d_exponent


def group_by_compute(runs: Sequence[Run], *, rel_tol: float = 0.05) -> list[list[Run]]:
    """Runs sorted by FLOPs, grouped while each stays within rel_tol of its group's first run."""
    require_positive("rel_tol", rel_tol)
    groups: list[list[Run]] = []
    for run in sorted(runs, key=lambda r: r.flops):
        if groups and run.flops <= groups[-1][0].flops * (1.0 + rel_tol):
            groups[-1].append(run)
        else:
            groups.append([run])
    return groups


def _fit_log_power_law(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return float(slope), float(math.exp(intercept))


def fit_isoflop(runs: Sequence[Run], *, rel_tol: float = 0.05, min_sizes: int = 3) -> IsoFlopFit:
    """IsoFLOP analysis, approach 2 of Hoffmann et al. 2022 (arXiv 2203.15556, section 3.2).

    Groups runs by compute budget (relative tolerance rel_tol), fits a parabola of loss against
    ln N per budget, takes its vertex as (N_opt, L_opt), then fits N_opt ∝ C^a and D_opt ∝ C^b by
    least squares in log-log space. Budgets with fewer than min_sizes distinct sizes, or whose
    parabola opens downwards, are skipped and listed in the result.
    """
    runs = tuple(runs)
    if not all(isinstance(r, Run) for r in runs):
        raise ConfigError("runs must all be scaling.laws.Run instances")
    if isinstance(min_sizes, bool) or not isinstance(min_sizes, int) or min_sizes < 3:
        raise ConfigError(f"min_sizes must be an integer >= 3 (a parabola has 3 coefficients), got {min_sizes!r}")
    budgets: list[IsoFlopBudget] = []
    skipped: list[float] = []
    for group in group_by_compute(runs, rel_tol=rel_tol):
        compute = float(np.exp(np.mean([np.log(r.flops) for r in group])))
        n, _, loss = _as_arrays(group)
        if len(np.unique(n)) < min_sizes:
            skipped.append(compute)
            continue
        c2, c1, c0 = np.polyfit(np.log(n), loss, 2)
        if c2 <= 0:
            skipped.append(compute)
            continue
        x_opt = -c1 / (2.0 * c2)
        n_opt = math.exp(x_opt)
        budgets.append(IsoFlopBudget(
            compute=compute, c2=float(c2), c1=float(c1), c0=float(c0), n_opt=n_opt,
            d_opt=compute / (6.0 * n_opt), loss_opt=float(c0 - c1**2 / (4.0 * c2)),
            n_runs=len(group), n_min=float(n.min()), n_max=float(n.max()),
        ))
    if len(budgets) < 2:
        raise ConfigError(
            f"runs: fit_isoflop needs at least 2 budgets with >= {min_sizes} distinct sizes each, got {len(budgets)}"
        )
    compute = np.array([b.compute for b in budgets])
    n_exponent, n_coef = _fit_log_power_law(compute, np.array([b.n_opt for b in budgets]))
    d_exponent, d_coef = _fit_log_power_law(compute, np.array([b.d_opt for b in budgets]))
    return IsoFlopFit(
        budgets=tuple(budgets), n_exponent=n_exponent, n_coef=n_coef, d_exponent=d_exponent,
        d_coef=d_coef, rel_tol=rel_tol, skipped=tuple(skipped),
    )


class GridPoint(NamedTuple):
    """One planned run of an isoFLOP grid: 6 · n_params · tokens == compute."""

    compute: float
    n_params: float
    tokens: float


def plan_isoflop_grid(
    *, budgets: Sequence[float], n_sizes: int = 5, spread: float = 4.0, tokens_per_param: float = 20.0
) -> list[GridPoint]:
    """Plan isoFLOP runs: per budget C, n_sizes sizes log-uniform in [N*/spread, N*·spread].

    Source: the isoFLOP design of Hoffmann et al. 2022 (approach 2), centred on the Chinchilla
    optimum N* = sqrt(C / (6 · tokens_per_param)), i.e. D* = tokens_per_param · N*; each point
    trains D = C / (6 N). An odd n_sizes puts N* itself in the grid. Sorted by budget, then size.
    """
    if len(budgets) == 0:
        raise ConfigError("budgets must name at least one FLOP budget")
    for i, c in enumerate(budgets):
        require_positive(f"budgets[{i}]", c)
    if isinstance(n_sizes, bool) or not isinstance(n_sizes, int) or n_sizes < 1:
        raise ConfigError(f"n_sizes must be a positive integer, got {n_sizes!r}")
    require_positive("spread", spread)
    if spread < 1.0:
        raise ConfigError(f"spread must be >= 1 (the factor each side of the optimum), got {spread!r}")
    require_positive("tokens_per_param", tokens_per_param)
    exponents = np.linspace(-1.0, 1.0, n_sizes) if n_sizes > 1 else np.zeros(1)
    points: list[GridPoint] = []
    for c in sorted(float(c) for c in budgets):
        n_star = math.sqrt(c / (6.0 * tokens_per_param))
        for k in exponents:
            n = n_star * spread ** float(k)
            points.append(GridPoint(compute=c, n_params=n, tokens=c / (6.0 * n)))
    return points


# ---------------------------------------------------------------------------------------------
# Plots (PNG); matplotlib is imported here only, so the fits never pay for it.
# ---------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on cluster nodes
    import matplotlib.pyplot as plt

    return plt


def _token_levels(tokens: np.ndarray, max_levels: int) -> np.ndarray:
    """Distinct token budgets, thinned log-uniformly to at most max_levels curves."""
    levels = np.unique(tokens)
    if len(levels) <= max_levels:
        return levels
    return levels[np.unique(np.round(np.linspace(0, len(levels) - 1, max_levels)).astype(int))]


def plot_chinchilla(fit: ChinchillaFit, runs: Sequence[Run], path: str | Path, *, max_curves: int = 8) -> Path:
    """Loss vs N: runs coloured by tokens, the fitted L(N, D) per token budget, and the
    compute-optimal frontier; saved as PNG at path."""
    runs = tuple(runs)
    if not runs:
        raise ConfigError("runs must hold at least one run to plot")
    plt = _pyplot()
    n, d, loss = _as_arrays(runs)
    n_grid = np.geomspace(n.min() / 2.0, n.max() * 2.0, 200)
    levels = _token_levels(d, max_curves)
    cmap = plt.get_cmap("viridis")
    log_d = np.log(d)
    span = max(float(np.ptp(log_d)), 1e-12)
    fig, ax = plt.subplots(figsize=(7, 5))
    for level in levels:
        color = cmap((math.log(level) - log_d.min()) / span)
        ax.plot(n_grid, fit.predict(n_grid, level), color=color, lw=1.2, label=f"D = {level:.3g}")
    ax.scatter(n, loss, c=(log_d - log_d.min()) / span, cmap=cmap, vmin=0, vmax=1, edgecolors="k", zorder=3)
    flops = np.array([r.flops for r in runs])
    c_grid = np.geomspace(flops.min(), flops.max(), 50)
    frontier = np.array([fit.optimal_allocation(c) for c in c_grid])
    ax.plot(frontier[:, 0], fit.predict(frontier[:, 0], frontier[:, 1]), "k--", lw=1, label="compute-optimal")
    ax.set(xscale="log", xlabel="parameters N", ylabel="loss",
           title=f"L = {fit.e:.3g} + {fit.a:.3g}/N^{fit.alpha:.3g} + {fit.b:.3g}/D^{fit.beta:.3g}")
    ax.legend(fontsize="small")
    return _save(fig, plt, path)


def plot_isoflop(result: IsoFlopFit, runs: Sequence[Run], path: str | Path) -> Path:
    """Left: loss vs N per budget with its parabola and minimum. Right: N_opt vs C with the
    fitted power law. Saved as PNG at path."""
    runs = tuple(runs)
    plt = _pyplot()
    fig, (ax_loss, ax_opt) = plt.subplots(1, 2, figsize=(12, 5))
    cmap = plt.get_cmap("plasma")
    budget_logs = np.log([b.compute for b in result.budgets])
    for i, budget in enumerate(result.budgets):
        color = cmap(i / max(len(result.budgets) - 1, 1) * 0.85)
        # A run belongs to the budget nearest its FLOPs in log space, if within the grouping tolerance.
        members = [r for r in runs if int(np.argmin(np.abs(budget_logs - math.log(r.flops)))) == i
                   and abs(r.flops / budget.compute - 1.0) <= 2 * result.rel_tol]
        if members:
            ax_loss.scatter([r.n_params for r in members], [r.loss for r in members], color=color, zorder=3)
        n_grid = np.geomspace(min(budget.n_min, budget.n_opt), max(budget.n_max, budget.n_opt), 100)
        ax_loss.plot(n_grid, budget.predict(n_grid), color=color, label=f"C = {budget.compute:.2g}")
        ax_loss.scatter([budget.n_opt], [budget.loss_opt], color=color, marker="*", s=200, edgecolors="k", zorder=4)
    ax_loss.set(xscale="log", xlabel="parameters N", ylabel="loss", title="isoFLOP profiles")
    ax_loss.legend(fontsize="small")
    compute = np.array([b.compute for b in result.budgets])
    c_grid = np.geomspace(compute.min(), compute.max(), 50)
    ax_opt.scatter(compute, [b.n_opt for b in result.budgets], marker="*", s=120, color="k", zorder=3)
    ax_opt.plot(c_grid, result.n_coef * c_grid**result.n_exponent, "k--",
                label=f"N_opt ∝ C^{result.n_exponent:.3f}")
    ax_opt.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel="N_opt", title="optimal size")
    ax_opt.legend()
    return _save(fig, plt, path)


def _save(fig, plt, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path


class PatternGridPoint(NamedTuple):
    compute: float  # the budget C in FLOPs (6·N·D, N non-embedding)
    pattern: str  # the searched pattern grown to this size
    d_model: int
    n_non_embedding_params: int  # of that model
    tokens: float  # C / (6 · N)


def plan_pattern_isoflop_grid(
    pattern: str, *, budgets: Sequence[float], n_sizes: int = 5, spread: float = 4.0,
    tokens_per_param: float = 20.0, method: str = "match",
) -> list[PatternGridPoint]:
    """The isoFLOP grid of `plan_isoflop_grid` realised for one pattern: each planned size N (here
    non-embedding parameters, Kaplan et al. 2020's convention and the extrapolator's) becomes the
    pattern grown to it (`extrapolate` against `sized_preset(N)`), and its token count is
    recomputed from the grown model's N so that every point spends exactly its budget."""
    from scaling.extrapolate import extrapolate
    from scaling.presets import sized_preset

    points = []
    for point in plan_isoflop_grid(budgets=budgets, n_sizes=n_sizes, spread=spread, tokens_per_param=tokens_per_param):
        grown = extrapolate(pattern, target=sized_preset(point.n_params), method=method)
        n = grown.n_non_embedding_params
        points.append(PatternGridPoint(point.compute, grown.pattern, grown.d_model, n, point.compute / (6 * n)))
    return points
