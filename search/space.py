"""The search space: which patterns a search may propose, and the key its results are stored under.

A `SearchSpace` is an alphabet of primitive letters, a length n, and constraints a candidate must
meet before anything is built or trained: per-primitive share bounds, at least one sequence mixer,
and optional parameter/FLOP budgets at the proxy width (scaling.accounting: pure arithmetic). The
space is |alphabet|^n patterns (2^6 = 64 for the paper's 6-layer Attention/MLP search, 3^16 ≈ 43M
for AIRA-Compose's); `violations` says why a pattern is out, so a sampler can skip it unbuilt.

Imports no torch, directly or indirectly: a search rejects candidates in a process that has none.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from composer.config import ModelConfig, from_mapping
from composer.errors import ConfigError
from composer.pattern import parse_pattern
from primitives import REGISTRY, describe_alphabet
from scaling.accounting import count_parameters, train_flops_per_token

MAX_ENUMERATE = 1_000_000  # enumerate() refuses spaces larger than this; sample() them instead
DEFAULT_MAX_TRIES = 10_000  # rejection-sampling draws before sample() declares the space infeasible
_SHARE_TOLERANCE = 1e-9  # 1/3 * 3 is not exactly 1: a bound met up to rounding is met
HASH_CHARS = 16  # hex characters of pattern_hash: 64 bits, no collision in any realistic search


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    alphabet: str = "*-M"  # the letters a layer may take, in the order encode() numbers them
    length: int = 6  # n layers searched at once (the paper's one-shot searches: 6 and 16)
    min_share: Mapping[str, float | None] = field(default_factory=dict)  # letter -> least fraction of layers (None: no bound)
    max_share: Mapping[str, float | None] = field(default_factory=dict)  # letter -> most fraction of layers (None: no bound)
    require_sequence_mixer: bool = True  # an all-MLP stack never sees another token: never worth a trial
    # Budgets at the proxy width (None: no budget). Parameters are NON-EMBEDDING (layers, their
    # pre-norms and the final norm): the embedding depends only on the vocabulary, not the pattern,
    # and the extrapolator's size ratio s = M/m is in the same units.
    max_params: int | None = None
    max_train_flops_per_token: int | None = None  # 3 × forward, LM head included, at seq_len
    # The proxy the budgets are computed on (composer.config.ModelConfig; defaults: configs/model,
    # a MAD task's vocabulary and length).
    d_model: int = 128
    vocab_size: int = 16
    seq_len: int = 128
    primitives: Mapping[str, Any] = field(default_factory=dict)  # primitive name -> config (or mapping)

    def __post_init__(self) -> None:
        if not isinstance(self.alphabet, str) or not self.alphabet:
            raise ConfigError(f"space.alphabet must be a non-empty string of letters, got {self.alphabet!r}")
        for position, letter in enumerate(self.alphabet):
            if letter not in REGISTRY:
                raise ConfigError(
                    f"space.alphabet: unknown primitive {letter!r} at position {position} of "
                    f"{self.alphabet!r}; valid letters: {describe_alphabet()}"
                )
            if letter in self.alphabet[:position]:
                raise ConfigError(f"space.alphabet: letter {letter!r} appears twice in {self.alphabet!r}")
        if not _is_int(self.length) or self.length < 1:
            raise ConfigError(f"space.length must be a positive integer, got {self.length!r}")
        for name in ("min_share", "max_share"):
            bounds = getattr(self, name)
            if not isinstance(bounds, Mapping):
                raise ConfigError(f"space.{name} must map letters to fractions, got {bounds!r}")
            bounds = {letter: share for letter, share in bounds.items() if share is not None}  # null: no bound
            for letter, share in bounds.items():
                if letter not in self.alphabet:
                    raise ConfigError(f"space.{name}: letter {letter!r} is not in the alphabet {self.alphabet!r}")
                if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
                    raise ConfigError(f"space.{name}[{letter!r}] must be a fraction in [0, 1], got {share!r}")
            object.__setattr__(self, name, MappingProxyType(dict(bounds)))
        for letter, low in self.min_share.items():
            high = self.max_share.get(letter, 1.0)
            if low > high:
                raise ConfigError(f"space.min_share[{letter!r}] = {low} exceeds max_share[{letter!r}] = {high}")
        if sum(self.min_share.values()) > 1 + _SHARE_TOLERANCE:
            raise ConfigError(f"space.min_share sums to {sum(self.min_share.values()):.3g} > 1: no pattern can meet it")
        if self.require_sequence_mixer and not any(REGISTRY[c].mixes_sequence for c in self.alphabet):
            raise ConfigError(
                f"space.require_sequence_mixer is set but the alphabet {self.alphabet!r} has no "
                f"sequence mixer: every pattern would be infeasible"
            )
        for name in ("max_params", "max_train_flops_per_token"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ConfigError(f"space.{name} must be a positive integer or null, got {value!r}")
        for name in ("d_model", "vocab_size", "seq_len"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ConfigError(f"space.{name} must be a positive integer, got {getattr(self, name)!r}")
        # Primitive sections may come as mappings (YAML, JSON) or as config objects.
        sections = {p.name: p for p in REGISTRY.values()}
        configs = {}
        for name, cfg in dict(self.primitives).items():
            if name not in sections:
                raise ConfigError(f"space.primitives: no primitive named {name!r} (registered: {', '.join(sections)})")
            configs[name] = from_mapping(sections[name].config_cls, cfg, where=f"space.primitives.{name}") if isinstance(
                cfg, Mapping
            ) else cfg
        object.__setattr__(self, "primitives", MappingProxyType(configs))
        self.proxy_config(self.alphabet)  # a width a primitive cannot take fails here, not mid-search
        object.__setattr__(self, "_cost_cache", {})

    # ---- the proxy and its costs -------------------------------------------------------------

    def proxy_config(self, pattern: str) -> ModelConfig:
        """The proxy model the budgets are computed on."""
        try:
            return ModelConfig(
                pattern=pattern, vocab_size=self.vocab_size, d_model=self.d_model, primitives=dict(self.primitives)
            )
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(f"search proxy: {exc}") from None

    def cost(self, pattern: str) -> dict[str, int]:
        """{'n_non_embedding_params', 'train_flops_per_token'} of the pattern's proxy.

        Accounting sums per-layer terms, so it depends on the letter counts only: the cache is keyed
        by the sorted pattern (153 entries for every 16-layer pattern over three letters)."""
        key = "".join(sorted(parse_pattern(pattern)))
        cache: dict[str, dict[str, int]] = self._cost_cache  # type: ignore[attr-defined]
        if key not in cache:
            cfg = self.proxy_config(key)
            cache[key] = {
                "n_non_embedding_params": count_parameters(cfg)["n_non_embedding_params"],
                "train_flops_per_token": train_flops_per_token(cfg, seq_len=self.seq_len),
            }
        return dict(cache[key])

    # ---- feasibility -------------------------------------------------------------------------

    def violations(self, pattern: str) -> list[str]:
        """Why `pattern` is outside the space: one short reason per violated constraint, [] if inside.

        A letter that is no registered primitive is a PatternError, not a violation."""
        pattern = parse_pattern(pattern)
        out: list[str] = []
        if len(pattern) != self.length:
            out.append(f"length: {len(pattern)} layers, the space has {self.length}")
        outside = sorted({c for c in pattern if c not in self.alphabet}, key=pattern.index)
        for letter in outside:
            out.append(f"alphabet: {letter!r} at position {pattern.index(letter)} is not in {self.alphabet!r}")
        n = len(pattern)
        for letter, low in self.min_share.items():
            share = pattern.count(letter) / n
            if share < low - _SHARE_TOLERANCE:
                out.append(f"min_share: {letter!r} ({REGISTRY[letter].name}) is {share:.3g} of the layers < {low}")
        for letter, high in self.max_share.items():
            share = pattern.count(letter) / n
            if share > high + _SHARE_TOLERANCE:
                out.append(f"max_share: {letter!r} ({REGISTRY[letter].name}) is {share:.3g} of the layers > {high}")
        if self.require_sequence_mixer and not any(REGISTRY[c].mixes_sequence for c in pattern):
            mixers = ", ".join(f"{c!r}" for c in self.alphabet if REGISTRY[c].mixes_sequence)
            out.append(f"require_sequence_mixer: no layer mixes tokens (needs one of {mixers})")
        if self.max_params is not None or self.max_train_flops_per_token is not None:
            cost = self.cost(pattern)
            if self.max_params is not None and cost["n_non_embedding_params"] > self.max_params:
                out.append(
                    f"max_params: {cost['n_non_embedding_params']:,} non-embedding parameters at "
                    f"d_model {self.d_model} > {self.max_params:,}"
                )
            if self.max_train_flops_per_token is not None and cost["train_flops_per_token"] > self.max_train_flops_per_token:
                out.append(
                    f"max_train_flops_per_token: {cost['train_flops_per_token']:,} at d_model {self.d_model}, "
                    f"seq_len {self.seq_len} > {self.max_train_flops_per_token:,}"
                )
        return out

    def is_feasible(self, pattern: str) -> bool:
        return not self.violations(pattern)

    # ---- the members ------------------------------------------------------------------------

    def size(self) -> int:
        """|alphabet|^n: every pattern of the right length and letters, feasible or not."""
        return len(self.alphabet) ** self.length

    def enumerate(self) -> Iterator[str]:
        """Every feasible pattern, in alphabet order (the first letter of the alphabet sorts first).

        Refuses spaces above MAX_ENUMERATE patterns at the call, not at the first `next()`."""
        if self.size() > MAX_ENUMERATE:
            raise ConfigError(
                f"the space has {len(self.alphabet)}^{self.length} = {self.size():,} patterns, more than "
                f"{MAX_ENUMERATE:,} to enumerate; use sample()"
            )
        return (p for p in map("".join, itertools.product(self.alphabet, repeat=self.length)) if self.is_feasible(p))

    def sample(self, rng: random.Random | Any, *, max_tries: int = DEFAULT_MAX_TRIES) -> str:
        """One feasible pattern, uniform over the feasible set (uniform draws, rejection).

        `rng` is a `random.Random` or a `numpy.random.Generator`; the same seed gives the same
        pattern. Raises ConfigError after `max_tries` rejected draws: the space is (nearly) empty."""
        if not _is_int(max_tries) or max_tries < 1:
            raise ConfigError(f"max_tries must be a positive integer, got {max_tries!r}")
        last: list[str] = []
        for _ in range(max_tries):
            pattern = self.decode(_draw_indices(rng, len(self.alphabet), self.length))
            last = self.violations(pattern)
            if not last:
                return pattern
        raise ConfigError(
            f"no feasible pattern in {max_tries:,} uniform draws from {self.size():,} patterns: the "
            f"constraints leave the space (nearly) empty; last rejection: {'; '.join(last)}"
        )

    # ---- categorical encoding, for samplers --------------------------------------------------

    def encode(self, pattern: str) -> list[int]:
        """Each layer's letter as its index in the alphabet: `'*-M'` space, `'-*'` -> `[1, 0]`."""
        pattern = parse_pattern(pattern)
        if len(pattern) != self.length:
            raise ConfigError(f"cannot encode {pattern!r}: {len(pattern)} layers, the space has {self.length}")
        for position, letter in enumerate(pattern):
            if letter not in self.alphabet:
                raise ConfigError(
                    f"cannot encode {pattern!r}: {letter!r} at position {position} is not in the alphabet {self.alphabet!r}"
                )
        return [self.alphabet.index(c) for c in pattern]

    def decode(self, indices: Sequence[int]) -> str:
        """The inverse of encode."""
        indices = list(indices)
        if len(indices) != self.length:
            raise ConfigError(f"cannot decode {indices}: {len(indices)} indices, the space has {self.length} layers")
        k = len(self.alphabet)
        for position, i in enumerate(indices):
            if not _is_int(i) or not 0 <= int(i) < k:
                raise ConfigError(f"cannot decode {indices}: index {i!r} at position {position} is not in [0, {k})")
        return "".join(self.alphabet[int(i)] for i in indices)


def canonical(pattern: str) -> str:
    """The trial key of a pattern. Patterns are already canonical (one letter per layer, no
    synonyms), so this is the validated pattern itself; it exists so the key has one definition."""
    return parse_pattern(pattern)


def pattern_hash(pattern: str, **settings: Any) -> str:
    """A short stable key for (pattern, evaluation settings): results are indexed by it.

    The settings are serialised as sorted JSON (dataclasses as their fields, mappings as dicts,
    tuples as lists), so the hash does not depend on keyword order or the Python process."""
    payload = {"pattern": canonical(pattern), "settings": settings}
    try:
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=_jsonable, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"pattern_hash: settings must be JSON-serialisable: {exc}") from None
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__type__": type(obj).__name__, **dataclasses.asdict(obj)}
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    raise TypeError(f"{type(obj).__name__} {obj!r} is not JSON-serialisable")


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return type(value).__module__ == "numpy" and hasattr(value, "dtype") and value.dtype.kind in "iu"


def _draw_indices(rng: Any, k: int, n: int) -> list[int]:
    if isinstance(rng, random.Random):
        return [rng.randrange(k) for _ in range(n)]
    if hasattr(rng, "integers"):  # numpy.random.Generator
        return [int(i) for i in rng.integers(0, k, size=n)]
    raise ConfigError(f"rng must be a random.Random or a numpy.random.Generator, got {type(rng).__name__}")


__all__ = ["MAX_ENUMERATE", "SearchSpace", "canonical", "pattern_hash"]
