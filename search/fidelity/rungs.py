"""A rung of a fidelity study: every pattern grown to one size at one width, trained on real text.

A rung is a Llama-style reference at its width (`"*-" × n_blocks`, as the extrapolator's presets
are); each pattern is grown to the reference's non-embedding parameter count by the extrapolator
(scaling/extrapolate.py: stacked below 16 layers, stretched from 16, as a search's winner would be),
then trained for `tokens_per_param` × that count tokens (the same tokens for every pattern) and
scored by validation bits per byte, once per seed. The Llama reference is itself the grown form
of the Llama baseline, so baselines and candidates meet at exactly the same size.

Each run is a folder `rungs/<rung>/<hash of grown pattern>-s<seed>/` with the trainer's checkpoint
and summary.json: a finished run is read back, never trained twice; a killed one resumes from its
last checkpoint. Imports no torch until a run trains.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from composer.config import from_mapping
from composer.errors import ConfigError
from scaling.extrapolate import METHODS as GROW_METHODS, Extrapolation, extrapolate, paper_method
from scaling.presets import Preset, preset_model_config
from search.space import pattern_hash

METHODS = ("auto", *(m for m in GROW_METHODS if m != "even"))  # auto: the paper's rule, as the search's winner grows


@dataclass(frozen=True, kw_only=True)
class RungConfig:
    name: str  # the rung's folder under rungs/ and its key in fidelity.json
    d_model: int
    n_blocks: int  # the size: non-embedding parameters of "*-" × n_blocks at d_model
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: n_heads
    head_dim: int | None = None  # None: d_model // n_heads
    mlp_hidden: int | None = None  # None: 4 × d_model
    mamba_d_state: int = 64
    mamba_head_dim: int = 32
    mamba_expand: int = 2
    mamba_chunk_size: int = 64
    method: str = "fit"  # fit | auto (the paper's ceil growth) | stack | stretch | match: scaling/extrapolate.py
    tokens_per_param: float = 20.0  # training tokens = this × the reference's non-embedding parameters
    seeds: tuple[int, ...] = (0, 1)
    trainer: Mapping[str, Any] = field(default_factory=dict)  # TrainerConfig overrides for this rung (lr, batch_size...)

    def __post_init__(self) -> None:
        where = f"rungs.{self.name}"
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ConfigError(f"a rung needs a name without '/', got {self.name!r}")
        for key in ("d_model", "n_blocks", "n_heads", "mamba_d_state", "mamba_head_dim", "mamba_expand",
                    "mamba_chunk_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}.{key} must be a positive integer, got {value!r}")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ConfigError(f"{where}: d_model {self.d_model} does not divide into n_heads {self.n_heads}; "
                              f"set head_dim")
        if self.method not in METHODS:
            raise ConfigError(f"{where}.method must be one of {', '.join(METHODS)}, got {self.method!r}")
        tpp = self.tokens_per_param
        if isinstance(tpp, bool) or not isinstance(tpp, (int, float)) or not 0 < tpp < math.inf:
            raise ConfigError(f"{where}.tokens_per_param must be a positive number, got {tpp!r}")
        seeds = tuple(self.seeds)
        if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds) or len(set(seeds)) < len(seeds):
            raise ConfigError(f"{where}.seeds must be distinct integers, got {list(seeds)}")
        object.__setattr__(self, "seeds", seeds)
        if "max_tokens" in self.trainer:
            raise ConfigError(f"{where}.trainer.max_tokens: a rung's budget is tokens_per_param, not max_tokens")
        object.__setattr__(self, "trainer", MappingProxyType(dict(self.trainer)))

    def preset(self, vocab_size: int) -> Preset:
        """The rung's widths as an extrapolation target, at the tokenizer's vocabulary."""
        try:
            return Preset(name=self.name, d_model=self.d_model, n_blocks=self.n_blocks,
                          mlp_hidden=self.mlp_hidden or 4 * self.d_model, n_heads=self.n_heads,
                          n_kv_heads=self.n_kv_heads or self.n_heads, head_dim=self.head_dim or self.d_model // self.n_heads,
                          vocab_size=vocab_size, rope_theta=10_000.0, mamba_d_state=self.mamba_d_state,
                          mamba_head_dim=self.mamba_head_dim, mamba_expand=self.mamba_expand,
                          mamba_chunk_size=self.mamba_chunk_size)
        except ValueError as exc:
            raise ConfigError(f"rungs.{self.name}: {exc}") from None

    def grow(self, pattern: str, *, vocab_size: int) -> Extrapolation:
        """`pattern` grown to the rung's size (one-line ConfigError when it is already larger)."""
        method = paper_method(pattern) if self.method == "auto" else self.method
        try:
            return extrapolate(pattern, target=self.preset(vocab_size), method=method)
        except ConfigError as exc:
            raise ConfigError(f"rungs.{self.name}: {exc}") from None

    def tokens(self, grown: Extrapolation) -> int:
        """Training tokens of every run of this rung (the reference's size × tokens_per_param)."""
        return int(round(self.tokens_per_param * grown.target_non_embedding_params))


def rung_config_from_mapping(data: Mapping[str, Any]) -> RungConfig:
    return from_mapping(RungConfig, data, where=f"rungs.{data.get('name', '?') if isinstance(data, Mapping) else '?'}")


def run_folder(root: Path, rung: RungConfig, grown: str, seed: int) -> Path:
    return Path(root) / "rungs" / rung.name / f"{pattern_hash(grown)}-s{seed}"


def finished(folder: Path, grown: str, seed: int) -> float | None:
    """The validation bits per byte of a run that completed in `folder` with this pattern and seed."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
        if summary.get("status") == "completed" and summary.get("pattern") == grown and summary.get("seed") == seed:
            return float(summary["final"]["bits_per_byte"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def train_run(rung: RungConfig, grown: Extrapolation, *, seed: int, corpus: Any, trainer: Any, seq_len: int,
              folder: Path) -> float:
    """Train one pattern of the rung at `seed` (or read its finished run back); its bits per byte."""
    done = finished(folder, grown.pattern, seed)
    if done is not None:
        return done
    from composer.engine.trainer import CHECKPOINT
    from composer.runs.proxy import train_on_text

    cfg = replace(trainer, max_tokens=rung.tokens(grown))
    summary = train_on_text(model_cfg=preset_model_config(grown.preset, grown.pattern), corpus=corpus,
                            trainer_cfg=cfg, seq_len=seq_len, seed=seed, run_dir=folder,
                            summary={"rung": rung.name, "source_pattern": grown.source_pattern})
    (folder / CHECKPOINT).unlink(missing_ok=True)  # the summary is the result; checkpoints of every run add up
    return float(summary["final"]["bits_per_byte"])


__all__ = ["METHODS", "RungConfig", "finished", "rung_config_from_mapping", "run_folder", "train_run"]
