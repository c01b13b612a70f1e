"""Grow a searched pattern to a target size by depth, as Composer's extrapolator does (no torch).

Width is the target's (a preset); depth grows by the size ratio

    s = non-embedding params of the preset's Llama reference ("*-" × n_blocks)
        / non-embedding params of the searched pattern, both at the preset's width

(layers, their pre-norms and the final norm; an MoE layer counts the parameters one token runs
through, its active ones, so MoE patterns match the reference's compute). This reproduces the published layer counts (27
stacked, 29 stretched at 1B); a ratio of layer counts does not. s is kept as an exact fraction,
so ceil(s · h) never rounds up by float noise.

Known edge of the rule: where the mixers divide the reference exactly, the norms (d_model per
layer, and the reference has more layers) push s a hair above the whole number, and ceil turns
that hair into whole runs: `**----` at 350M has s = 4.00002 and stacks to 26 layers (+7 %), not
24 (at 3B: s = 8.00001, 50 layers). `match` cannot avoid it (stretching is hit the same way).

  stretch  every maximal run (p, h) becomes ceil(s · h) long: the transition points stay.
  stack    floor(s) copies of the pattern, then the pattern stretched by the remainder
           s − floor(s) appended at the end (nothing appended when the remainder is 0).
  match    whichever of stack and stretch lands closer to the target's non-embedding count.
  fit      the paper's choice (stack below 16 layers, stretch from 16) with each stretched run rounded
           down or up, whichever lands nearest the target, instead of always up: within about one
           layer of the target where ceil overshoots (16-layer patterns at s ≈ 2: +1 % to +40 %).
  even     the searched composition scaled by s, laid out evenly (`allocate_evenly`): the
           Megatron-style baseline with the same primitive ratios but no searched order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction

from composer.config import ModelConfig
from composer.errors import ConfigError
from composer.pattern import count_primitives, parse_pattern, runs
from scaling.accounting import count_parameters
from scaling.presets import Preset, get_preset, preset_model_config, reference_pattern

METHODS = ("stack", "stretch", "match", "fit", "even")
STRETCH_FROM = 16  # the paper's rule: stack searched patterns shorter than this, stretch the others


def paper_method(pattern: str) -> str:
    """The paper's choice for a searched pattern: stacking below STRETCH_FROM layers, stretching from it on
    (stretching a short `AAMMMM` degenerates to all attention first, all MLP last)."""
    return "stretch" if len(pattern) >= STRETCH_FROM else "stack"


@dataclass(frozen=True, kw_only=True)
class Extrapolation:
    pattern: str  # the extrapolated pattern
    source_pattern: str  # the searched pattern it grew from
    method: str  # stack | stretch | fit | even (match resolves to one of the first two)
    target: str  # preset name
    n_layers: int
    counts: dict[str, int]  # layers per primitive letter, every registered letter present
    d_model: int
    n_params: int
    n_non_embedding_params: int
    n_active_params: int  # per token: n_params less the experts a token is not routed to (MoE layers)
    target_non_embedding_params: int  # of the preset's Llama reference
    deviation: float  # (non-embedding active params − target) / target, signed; active = all for dense patterns
    s: float  # the size ratio the pattern grew by
    preset: Preset = field(repr=False, compare=False)  # the target's widths

    def model_config(self) -> ModelConfig:
        """The ModelConfig of the extrapolated pattern at the target's width."""
        return preset_model_config(self.preset, self.pattern)


def _ratio(s: float | Fraction | int) -> Fraction:
    """An exact ratio: floats are read as written (1.1 -> 11/10), not as their binary value."""
    if isinstance(s, Fraction | int):
        return Fraction(s)
    return Fraction(repr(float(s)))


def stretch(pattern: str, s: float | Fraction) -> str:
    """Each maximal run (p, h) becomes ceil(s · h) long. `stretch('**--M', 1.5)` -> '***---MM'."""
    s = _ratio(s)
    if s <= 0:
        raise ConfigError(f"the stretch factor must be positive, got {float(s)}")
    return "".join(p * math.ceil(s * h) for p, h in runs(pattern))


def stack(pattern: str, s: float | Fraction) -> str:
    """floor(s) copies of the pattern, then `stretch(pattern, s − floor(s))` appended at the end
    (skipped when s is whole). Reading of the paper's "repeat the whole sequence floor(M/m)
    times; fill the remaining size by stretching the sequence onto the end": the remainder part
    is the whole pattern stretched by the fraction, so every run appears in it at least once.
    `stack('**----', 4.377...)` -> 4 × '**----' + '*--' (27 layers)."""
    pattern, s = parse_pattern(pattern), _ratio(s)
    if s <= 0:
        raise ConfigError(f"the stack factor must be positive, got {float(s)}")
    whole = math.floor(s)
    rest = s - whole
    return pattern * whole + (stretch(pattern, rest) if rest else "")


def fit(pattern: str, s: float | Fraction, *, size: Callable[[str], int], goal: int) -> str:
    """The paper's growth (`paper_method`) landing nearest `goal` by `size`: each stretched run becomes
    floor(s · h) or one more, the extra layers going to the runs with the largest remainders, as many
    as bring size(grown) nearest the goal (ties: fewer layers). Stretching keeps every run (at least
    one layer); stacking keeps floor(s) whole copies and fits the tail, where a run may drop out. A
    pattern that repeats a shorter one grows as that one does: the Llama layout stays '*-' repeated.
    `fit('*-M-', 2.5, size=len, goal=10)` -> '*-M-*-M-*-' (stack gives '*-M-' three times)."""
    pattern, s = parse_pattern(pattern), _ratio(s)
    if s <= 0:
        raise ConfigError(f"the fit factor must be positive, got {float(s)}")
    period = next(q for q in (pattern[:n] for n in range(1, len(pattern) + 1)) if q * (len(pattern) // len(q)) == pattern)
    pattern, s = period, s * (len(pattern) // len(period))
    whole = 0 if paper_method(pattern) == "stretch" else math.floor(s)
    head, rest, least = pattern * whole, s - whole, 0 if whole else 1
    spans = runs(pattern)
    exact = [rest * h for _, h in spans]
    base = [max(least, math.floor(x)) for x in exact]
    order = sorted(range(len(spans)), key=lambda i: (-(exact[i] - math.floor(exact[i])), i))
    options = []
    for k in range(len(spans) + 1):
        lengths = [n + (i in order[:k]) for i, n in enumerate(base)]
        grown = head + "".join(p * n for (p, _), n in zip(spans, lengths))
        if grown:
            options.append(grown)
    return min(options, key=lambda g: (abs(size(g) - goal), len(g)))


def allocate_evenly(counts: Mapping[str, int]) -> str:
    """A pattern with these layer counts, each primitive spread evenly over the depth.

    Layer j (0-based) of a primitive with k layers sits at the ideal point (j + ½) / k; layers are
    laid out by ideal point, ties in the order the counts are given. So {'*': 16, '-': 16} is the
    Llama layout '*-' × 16, and a rare primitive lands evenly spaced among the others, as
    Megatron-LM's hybrid allocator spaces attention."""
    slots = []
    for order, (letter, k) in enumerate(counts.items()):
        if k < 0:
            raise ConfigError(f"layer count of {letter!r} must be >= 0, got {k}")
        slots += [(Fraction(2 * j + 1, 2 * k), order, letter) for j in range(k)]
    if not slots:
        raise ConfigError("allocate_evenly needs at least one layer")
    return parse_pattern("".join(letter for *_, letter in sorted(slots)))


def baseline_pattern(ratios: Mapping[str, float], *, n_layers: int) -> str:
    """n_layers layers split by `ratios` (letter -> share, normalised; largest remainder rounding,
    at least one layer for a positive share), laid out by `allocate_evenly`."""
    total = sum(ratios.values())
    if n_layers < 1 or total <= 0 or any(r < 0 for r in ratios.values()):
        raise ConfigError(f"baseline needs n_layers >= 1 and non-negative ratios, got {n_layers}, {dict(ratios)}")
    exact = {c: n_layers * r / total for c, r in ratios.items()}
    counts = {c: max(math.floor(x), 1 if x > 0 else 0) for c, x in exact.items()}
    by_remainder = sorted(exact, key=lambda c: exact[c] - math.floor(exact[c]), reverse=True)
    for c in by_remainder:
        if sum(counts.values()) >= n_layers:
            break
        if exact[c] > 0:
            counts[c] += 1
    if sum(counts.values()) != n_layers:
        raise ConfigError(f"{n_layers} layers cannot give each positive share of {dict(ratios)} a layer")
    return allocate_evenly(counts)


def _even(pattern: str, s: Fraction) -> str:
    """The searched composition scaled by s (each count rounded, at least 1), laid out evenly."""
    return allocate_evenly({c: max(1, round(s * k)) for c, k in count_primitives(pattern).items() if k})


def _non_embedding(preset: Preset, pattern: str) -> int:
    """Non-embedding parameters a token runs through: all of them for dense patterns; MoE layers
    count their active experts, so an `E` pattern grows to the reference's compute per token (as
    OLMoE-1B-7B is set against dense 1B models), its total growing by the experts' ratio."""
    params = count_parameters(preset_model_config(preset, pattern))
    return params["n_active_params"] - params["n_embedding_params"]


def scale_ratio(pattern: str, target: str | Preset) -> Fraction:
    """s: the target reference's non-embedding params over the pattern's, at the target width (exact)."""
    preset = get_preset(target)
    return Fraction(_non_embedding(preset, reference_pattern(preset)), _non_embedding(preset, parse_pattern(pattern)))


def extrapolate(pattern: str, *, target: str | Preset, method: str) -> Extrapolation:
    """Grow `pattern` to the target preset's size by `method` (stack | stretch | match | fit | even)."""
    if method not in METHODS:
        raise ConfigError(f"unknown extrapolation method {method!r} (valid methods: {', '.join(METHODS)})")
    pattern = parse_pattern(pattern)
    preset = get_preset(target)
    goal = _non_embedding(preset, reference_pattern(preset))
    s = scale_ratio(pattern, preset)
    if s < 1:
        raise ConfigError(
            f"pattern {pattern!r} ({len(pattern)} layers) is already larger than the {preset.name} target "
            f"at its width (s = {float(s):.3f} < 1); search a shorter pattern or pick a larger target"
        )
    build = {"stack": stack, "stretch": stretch, "even": _even,
             "fit": lambda p, s: fit(p, s, size=lambda g: _non_embedding(preset, g), goal=goal)}
    if method == "match":
        candidates = {m: build[m](pattern, s) for m in ("stack", "stretch")}
        preferred = paper_method(pattern)  # ties go to the paper's choice
        method = min(
            candidates,
            key=lambda m: (abs(_non_embedding(preset, candidates[m]) - goal), m != preferred),
        )
        grown = candidates[method]
    else:
        grown = build[method](pattern, s)
    params = count_parameters(preset_model_config(preset, grown))
    return Extrapolation(
        pattern=grown,
        source_pattern=pattern,
        method=method,
        target=preset.name,
        n_layers=len(grown),
        counts=count_primitives(grown),
        d_model=preset.d_model,
        n_params=params["n_params"],
        n_non_embedding_params=params["n_non_embedding_params"],
        n_active_params=params["n_active_params"],
        target_non_embedding_params=goal,
        deviation=(params["n_active_params"] - params["n_embedding_params"] - goal) / goal,  # = total for dense
        s=float(s),
        preset=preset,
    )
