"""Hyperparameter and budget rules for full pretraining: tokens, peak LR, batch and WSD steps.

Pure functions on frozen dataclasses; no torch, so a search can plan a run before building it.
Model sizes are TOTAL parameter counts (embeddings included) throughout, because the published
anchors are named by total size (Llama-3.2-style 100M / 350M / 1B / 3B).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

from composer.errors import ConfigError

# Peak AdamW learning rate per total model size, Llama-3.2-style hybrids (arXiv 2510.04800).
PUBLISHED_LR_ANCHORS: tuple[tuple[float, float], ...] = (
    (100e6, 6e-3),
    (350e6, 3e-3),
    (1e9, 6e-4),
    (3e9, 3e-4),
)
# "2M-token batches" (arXiv 2510.04800) read as 2**21, which divides every power-of-two context.
PUBLISHED_BATCH_TOKENS = 2**21


def require_positive(name: str, value: float) -> None:
    """One-line ConfigError unless value is a positive finite real (numpy scalars included)."""
    if not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}")


def _positive_int(name: str, value: int) -> None:
    if not isinstance(value, Integral) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _fraction(name: str, value: float) -> None:
    if not isinstance(value, Real) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be a fraction in [0, 1], got {value!r}")


def _check_wsd(warmup_frac: float, decay_frac: float) -> None:
    _fraction("warmup_frac", warmup_frac)
    _fraction("decay_frac", decay_frac)
    if warmup_frac + decay_frac > 1.0:
        raise ConfigError(f"warmup_frac + decay_frac must be <= 1, got {warmup_frac} + {decay_frac}")


def _check_anchors(anchors: tuple[tuple[float, float], ...]) -> None:
    if len(anchors) < 2:
        raise ConfigError(f"lr_anchors needs at least 2 (n_params, lr) points, got {len(anchors)}")
    for i, pair in enumerate(anchors):
        if len(pair) != 2:
            raise ConfigError(f"lr_anchors[{i}] must be an (n_params, lr) pair, got {pair!r}")
        require_positive(f"lr_anchors[{i}].n_params", pair[0])
        require_positive(f"lr_anchors[{i}].lr", pair[1])
    sizes = [n for n, _ in anchors]
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"lr_anchors has a repeated n_params: {sorted(sizes)}")


@dataclass(frozen=True, kw_only=True)
class Rules:
    """Every scaling rule in one place; override a field to replace the published default."""

    tokens_per_param: float = 20.0  # Chinchilla compute-optimal ratio (arXiv 2203.15556)
    lr_anchors: tuple[tuple[float, float], ...] = PUBLISHED_LR_ANCHORS  # replaced whole, not merged
    batch_tokens: int = PUBLISHED_BATCH_TOKENS  # global batch, same at every published scale
    warmup_frac: float = 0.25  # composer recipe: ~25% warmup
    decay_frac: float = 0.20  # composer recipe: ~20% cooldown

    def __post_init__(self) -> None:
        require_positive("tokens_per_param", self.tokens_per_param)
        # Sort once so lookups can assume increasing n_params.
        anchors = tuple(sorted((tuple(p) for p in self.lr_anchors), key=lambda p: p[0]))
        _check_anchors(anchors)
        object.__setattr__(self, "lr_anchors", tuple((float(n), float(lr)) for n, lr in anchors))
        _positive_int("batch_tokens", self.batch_tokens)
        _check_wsd(self.warmup_frac, self.decay_frac)


DEFAULT_RULES = Rules()


def tokens_for(n_params: float, *, tokens_per_param: float = 20.0) -> int:
    """Compute-optimal training tokens: tokens_per_param · N, rounded to the nearest token.

    Source: Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models"
    (Chinchilla, arXiv 2203.15556): about 20 tokens per parameter at the compute optimum.
    """
    require_positive("n_params", n_params)
    require_positive("tokens_per_param", tokens_per_param)
    return round(tokens_per_param * n_params)


def fit_power_law(points: tuple[tuple[float, float], ...]) -> tuple[float, float]:
    """Least-squares fit of y = a · x^b in log space; returns (a, b).

    Source: standard log-log regression, as used for per-scale hyperparameter laws
    (e.g. Step Law, arXiv 2503.04715). Applied here to the LR anchors of arXiv 2510.04800.
    """
    if len(points) < 2:
        raise ConfigError(f"points needs at least 2 (x, y) pairs, got {len(points)}")
    for i, (x, y) in enumerate(points):
        require_positive(f"points[{i}].x", x)
        require_positive(f"points[{i}].y", y)
    log_x = [math.log(x) for x, _ in points]
    log_y = [math.log(y) for _, y in points]
    mean_x, mean_y = sum(log_x) / len(log_x), sum(log_y) / len(log_y)
    sxx = sum((lx - mean_x) ** 2 for lx in log_x)
    if sxx == 0:
        raise ConfigError("points needs at least 2 distinct x values to fit a power law")
    b = sum((lx - mean_x) * (ly - mean_y) for lx, ly in zip(log_x, log_y)) / sxx
    return math.exp(mean_y - b * mean_x), b


def peak_lr_for(n_params: float, *, rules: Rules = DEFAULT_RULES) -> float:
    """Peak AdamW learning rate for a model of n_params TOTAL parameters.

    Source: per-scale peak LRs 6e-3 (100M), 3e-3 (350M), 6e-4 (1B), 3e-4 (3B) for Llama-3.2-style
    hybrids (arXiv 2510.04800), or rules.lr_anchors when overridden. Exact at an anchor; between
    two neighbouring anchors, the power law through both (log-log interpolation, so monotone and
    within their values); beyond the table, the exponent b of the least-squares power law
    lr = a · N^b over all anchors, continued from the nearest anchor so the rule stays continuous.
    """
    require_positive("n_params", n_params)
    anchors = rules.lr_anchors
    (n_lo, lr_lo), (n_hi, lr_hi) = anchors[0], anchors[-1]
    if n_params <= n_lo or n_params >= n_hi:
        _, b = fit_power_law(anchors)
        n_ref, lr_ref = (n_lo, lr_lo) if n_params <= n_lo else (n_hi, lr_hi)
        return lr_ref * (n_params / n_ref) ** b
    for (n0, lr0), (n1, lr1) in zip(anchors, anchors[1:]):
        if n_params == n0:
            return lr0
        if n0 < n_params < n1:
            b = math.log(lr1 / lr0) / math.log(n1 / n0)
            return lr0 * (n_params / n0) ** b
    raise AssertionError("unreachable: anchors are sorted and n_params lies inside them")


def batch_tokens_for(n_params: float, *, rules: Rules = DEFAULT_RULES) -> int:
    """Global batch size in tokens for a model of n_params total parameters.

    Source: 2M-token batches at every published scale, 100M-3B (arXiv 2510.04800); configurable
    through rules.batch_tokens. Size-independent at these scales, so n_params is only validated.
    """
    require_positive("n_params", n_params)
    return rules.batch_tokens


def sequences_per_step(batch_tokens: int, *, seq_len: int) -> int:
    """Sequences per optimiser step: batch_tokens / seq_len, rounded to the nearest whole sequence.

    Source: arithmetic on the 2M-token batch of arXiv 2510.04800 (2**21 / 8192 = 256 sequences
    at the 8K packed context of the composer recipe). At least one sequence.
    """
    require_positive("batch_tokens", batch_tokens)
    _positive_int("seq_len", seq_len)
    return max(1, round(batch_tokens / seq_len))


@dataclass(frozen=True, kw_only=True)
class StepPlan:
    """Warmup-stable-decay step counts; warmup + stable + decay == total."""

    total: int
    warmup: int
    stable: int
    decay: int


def plan_steps(
    tokens: float,
    *,
    batch_tokens: int,
    warmup_frac: float = DEFAULT_RULES.warmup_frac,
    decay_frac: float = DEFAULT_RULES.decay_frac,
) -> StepPlan:
    """Turn a token budget into warmup-stable-decay steps.

    Source: the composer full-pretraining recipe (~25% warmup, ~20% cooldown, WSD; arXiv
    2510.04800). Rounding rule: total = ceil(tokens / batch_tokens), so the budget is never
    under-trained (37.5B tokens at 2**21 -> 17,882 steps); warmup and decay are
    round-half-up(frac · total); stable takes the remainder.
    """
    require_positive("tokens", tokens)
    require_positive("batch_tokens", batch_tokens)
    _check_wsd(warmup_frac, decay_frac)
    total = math.ceil(tokens / batch_tokens)
    warmup = math.floor(warmup_frac * total + 0.5)
    decay = math.floor(decay_frac * total + 0.5)
    # Both halves rounding up can overshoot by one step when the fractions sum to 1.
    decay = min(decay, total - warmup)
    return StepPlan(total=total, warmup=warmup, stable=total - warmup - decay, decay=decay)


@dataclass(frozen=True, kw_only=True)
class TrainingPlan:
    """Everything a full-pretraining run needs from the scaling rules."""

    n_params: float  # total parameters, embeddings included
    tokens: int  # token budget (steps · batch_tokens may exceed it by less than one batch)
    batch_tokens: int  # actual global batch: batch_sequences · seq_len
    batch_sequences: int
    seq_len: int
    steps: int
    warmup_steps: int
    decay_steps: int
    peak_lr: float
    schedule: str = "wsd"  # warmup-stable-decay

    @property
    def stable_steps(self) -> int:
        return self.steps - self.warmup_steps - self.decay_steps


def plan_training(
    n_params: float, *, seq_len: int, tokens: float | None = None, rules: Rules = DEFAULT_RULES
) -> TrainingPlan:
    """Plan a WSD pretraining run: tokens (Chinchilla unless given), batch, steps and peak LR.

    Sources: tokens_for (arXiv 2203.15556), peak_lr_for and batch_tokens_for (arXiv 2510.04800),
    plan_steps (composer recipe). Pass tokens to train past Chinchilla (e.g. 37.5B at 1B).
    """
    require_positive("n_params", n_params)
    budget = tokens_for(n_params, tokens_per_param=rules.tokens_per_param) if tokens is None else tokens
    require_positive("tokens", budget)
    sequences = sequences_per_step(batch_tokens_for(n_params, rules=rules), seq_len=seq_len)
    batch = sequences * seq_len
    steps = plan_steps(budget, batch_tokens=batch, warmup_frac=rules.warmup_frac, decay_frac=rules.decay_frac)
    return TrainingPlan(
        n_params=n_params,
        tokens=round(budget),
        batch_tokens=batch,
        batch_sequences=sequences,
        seq_len=seq_len,
        steps=steps.total,
        warmup_steps=steps.warmup,
        decay_steps=steps.decay,
        peak_lr=peak_lr_for(n_params, rules=rules),
    )
