"""The statistics of a rank-fidelity study: does a cheap proxy rank patterns as a larger rung does?

Every score here is HIGHER IS BETTER, for the proxy (x) and the rung (y) alike; callers negate
losses and bits-per-byte before they come in.

1. `correlation`: Spearman's rho or Kendall's tau-b (scipy's own) with a paired percentile
   bootstrap interval (`scipy.stats.bootstrap`).
2. `decision_accuracy`: the share of pattern pairs the proxy orders as the rung does, the number
   a search actually lives by ("would it have kept the better one?").
3. `noise_floor`: the same agreement between two seeds of one training setup, the best agreement
   any proxy can reach against that setup.
4. `ranks`: 1 = best, ties share the better rank.

The rules for degenerate input, each applied the same way everywhere:
- Undefined correlations (a constant input) are None, never nan and never 0.
- Inside the bootstrap a constant resample has no ordering to measure; its statistic counts as 0.0
  ("no agreement shown") rather than being dropped, so every resample keeps its weight and the
  interval is pulled towards 0, never away from it.
- Ties are exact float equality; a tie between two patterns is a coin flip, so it counts 0.5
  wherever a pair is scored (except ties in the reference, which have no truth to agree with).

Pure numpy and scipy; imports no torch.
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np
import scipy.stats

from composer.errors import ConfigError

METHODS = ("spearman", "kendall")
MIN_BOOTSTRAP_POINTS = 4  # below this a resample is constant too often for an interval to mean anything
# scipy 1.15 renamed bootstrap's `random_state` to `rng` (SPEC 7); a Generator behaves the same under both.
_RNG_KEYWORD = "rng" if "rng" in inspect.signature(scipy.stats.bootstrap).parameters else "random_state"


def _check_points(values: Sequence[float], *, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a sequence of numbers, got {values!r}") from None
    if arr.ndim != 1:
        raise ConfigError(f"{name} must be a flat sequence of numbers, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        i = int(bad[0])
        raise ConfigError(f"{name}[{i}] is {arr[i]}: scores must be finite (drop diverged runs)")
    return arr


def _check_pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = _check_points(x, name="x"), _check_points(y, name="y")
    if xs.size != ys.size:
        raise ConfigError(f"x and y differ in length ({xs.size} vs {ys.size}): they must be paired scores")
    return xs, ys


def _statistic(x: np.ndarray, y: np.ndarray, method: str) -> float:
    """scipy's rho or tau-b; nan when undefined (a constant input), without scipy's warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConstantInputWarning: answered by the nan itself
        result = scipy.stats.spearmanr(x, y) if method == "spearman" else scipy.stats.kendalltau(x, y)
    return float(result.statistic)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho of paired scores without an interval (a point estimate, for ranking many candidates); None
    where it is undefined (a constant input)."""
    value = _statistic(*_check_pair(x, y), "spearman")
    return None if math.isnan(value) else value


def correlation(
    x: Sequence[float],
    y: Sequence[float],
    *,
    method: str,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Rank correlation of paired scores with a bootstrap interval.

    Returns {"value": float | None, "low": float | None, "high": float | None, "n": int}.
    `method` is "spearman" (rho) or "kendall" (tau-b, scipy's default variant). The interval
    resamples the (x, y) points together (`scipy.stats.bootstrap`, paired=True) and takes plain
    percentiles: BCa needs a jackknife and an acceleration that fail on the degenerate
    resamples rank statistics produce on few points (all-equal bootstrap distributions, constant
    leave-one-out samples), where percentile simply reads the distribution. A constant resample
    counts 0.0 (module docstring). No interval below 4 points or when the value is undefined;
    value None when undefined (a constant x or y). `seed` fixes the resampling.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown correlation method {method!r}: choose one of {', '.join(METHODS)}")
    xs, ys = _check_pair(x, y)
    n = int(xs.size)
    if n < 2:
        raise ConfigError(f"a correlation needs at least 2 paired points, got {n}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ConfigError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    value = _statistic(xs, ys, method)
    if math.isnan(value):
        return {"value": None, "low": None, "high": None, "n": n}
    if n < MIN_BOOTSTRAP_POINTS:
        return {"value": value, "low": None, "high": None, "n": n}

    def resampled(xb: np.ndarray, yb: np.ndarray) -> float:
        stat = _statistic(xb, yb, method)
        return 0.0 if math.isnan(stat) else stat

    result = scipy.stats.bootstrap(
        (xs, ys), resampled, paired=True, vectorized=False, n_resamples=n_resamples,
        confidence_level=confidence, method="percentile", **{_RNG_KEYWORD: np.random.default_rng(seed)},
    )
    interval = result.confidence_interval
    return {"value": value, "low": float(interval.low), "high": float(interval.high), "n": n}


def agreement(x: Sequence[float], y: Sequence[float], *, bootstrap: int, seed: int) -> dict:
    """How ranking x agrees with ranking y: {"n", "spearman", "kendall" (each `correlation`), "decision_accuracy"}."""
    return {"n": len(x), **{m: correlation(x, y, method=m, n_resamples=bootstrap, seed=seed) for m in METHODS},
            "decision_accuracy": decision_accuracy(x, y)}


def _pair_signs(values: np.ndarray) -> np.ndarray:
    i, j = np.triu_indices(values.size, k=1)
    return np.sign(values[i] - values[j])


def decision_accuracy(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Share of pairs i < j that x orders as y does.

    Pairs tied in y are skipped (no truth to agree with); pairs tied in x but not in y count 0.5
    (a coin flip). None when no pair is countable (fewer than 2 points, or y constant).
    """
    xs, ys = _check_pair(x, y)
    sx, sy = _pair_signs(xs), _pair_signs(ys)
    countable = sy != 0
    if not countable.any():
        return None
    scored = np.where(sx == sy, 1.0, np.where(sx == 0, 0.5, 0.0))
    return float(scored[countable].mean())


def _mean_or_none(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(defined)) if defined else None


def noise_floor(seeds: Mapping[str, Sequence[float]]) -> dict:
    """The seed-noise floor: how often two seeds of one pattern swap order with its neighbours.

    `seeds` maps pattern -> its scores per seed, in the same seed order for every pattern.
    Returns {"n_patterns": int, "n_seeds": int, "neighbour_swap_rate": float | None,
    "seed_spearman": float | None, "seed_decision_accuracy": float | None, "std": float | None}:
    - n_seeds is the most common number of seeds (ties: the larger); patterns with fewer are left
      out, patterns with more keep their first n_seeds scores; n_patterns counts those kept.
    - neighbour_swap_rate: over every pair of patterns adjacent in the ranking by mean score
      (best first, ties by pattern) and every seed pair a < b, the share where seeds a and b
      order the two oppositely; a tie in either seed counts 0.5.
    - seed_spearman / seed_decision_accuracy: the mean over seed pairs a < b of Spearman's rho /
      `decision_accuracy(seed a, seed b)` across patterns (undefined pairs left out).
    - std: the mean over patterns of the population std of their scores across seeds.
    Values are None where undefined: fewer than 2 seeds, or fewer than 2 patterns (std needs 1).
    This is the best agreement a proxy could reach against a target trained with that noise.
    """
    if not isinstance(seeds, Mapping):
        raise ConfigError(f"seeds must be a mapping of pattern -> scores per seed, got {type(seeds).__name__}")
    scores = {p: _check_points(v, name=f"seeds[{p!r}]") for p, v in seeds.items()}
    counts = Counter(arr.size for arr in scores.values())
    k = max(counts, key=lambda c: (counts[c], c)) if counts else 0
    kept = sorted(p for p, arr in scores.items() if k > 0 and arr.size >= k)
    out = {"n_patterns": len(kept), "n_seeds": k, "neighbour_swap_rate": None, "seed_spearman": None,
           "seed_decision_accuracy": None, "std": None}
    if k < 2 or not kept:
        return out
    table = np.stack([scores[p][:k] for p in kept])  # (patterns, seeds)
    out["std"] = float(table.std(axis=1).mean())
    if len(kept) < 2:
        return out
    means = table.mean(axis=1)
    order = sorted(range(len(kept)), key=lambda r: (-means[r], kept[r]))
    seed_pairs = list(combinations(range(k), 2))
    swaps = []
    for upper, lower in zip(order, order[1:]):
        diff = np.sign(table[upper] - table[lower])  # (seeds,): +1 where that seed keeps the order
        for a, b in seed_pairs:
            swaps.append(0.5 if diff[a] == 0 or diff[b] == 0 else float(diff[a] != diff[b]))
    out["neighbour_swap_rate"] = float(np.mean(swaps))
    out["seed_spearman"] = _mean_or_none([_statistic(table[:, a], table[:, b], "spearman") for a, b in seed_pairs])
    out["seed_decision_accuracy"] = _mean_or_none([decision_accuracy(table[:, a], table[:, b]) for a, b in seed_pairs])
    return out


def ranks(scores: Mapping[str, float]) -> dict[str, int]:
    """Rank of every pattern, 1 = best (highest score); ties share the better rank (1, 2, 2, 4).

    The dict is ordered best first, equal scores by pattern, so the result is deterministic.
    """
    if not isinstance(scores, Mapping):
        raise ConfigError(f"scores must be a mapping of pattern -> score, got {type(scores).__name__}")
    checked = {}
    for pattern, score in scores.items():
        if isinstance(score, bool) or not isinstance(score, numbers.Real) or not math.isfinite(score):
            raise ConfigError(f"the score of {pattern!r} is {score!r}: scores must be finite numbers")
        checked[pattern] = float(score)
    ordered = sorted(checked, key=lambda p: (-checked[p], p))
    out: dict[str, int] = {}
    for position, pattern in enumerate(ordered, start=1):
        previous = ordered[position - 2] if position > 1 else None
        tied = previous is not None and checked[previous] == checked[pattern]
        out[pattern] = out[previous] if tied else position
    return out
