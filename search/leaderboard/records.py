"""Leaderboard records: what a search, an architecture or a pretraining run writes, each field
checked, each derived column computed here (search/leaderboard/__init__.py describes the kinds)."""

from __future__ import annotations

import json
import math
import numbers
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from composer.config import ModelConfig, from_mapping
from composer.errors import ConfigError
from composer.pattern import parse_pattern
from primitives import REGISTRY
from scaling.accounting import account
from scaling.extrapolate import extrapolate, paper_method

SCHEMA = 1  # bumped when a field changes meaning; readers of older lines use .get
KINDS = ("architecture", "search", "pretrain")
ROLES = ("aggregate", "best_single", "candidate")
TARGETS = ("350m", "1b", "3b")  # presets every architecture is extrapolated to
COST_SEQ_LEN = 2048  # training sequence length of the 1B FLOPs column
CONTEXTS = (4096, 32768)  # decoding contexts of the 1B inference-state columns
NEEDLE_PREFIX = "needle@"  # record fields and table columns of the long-context probe: needle@1x, needle@2x


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_text(name: str, value: Any, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _check_count(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def needle_multiple(key: str) -> float | None:
    """'needle@2x' -> 2.0, 'needle@1.5x' -> 1.5; None for any other key."""
    if not key.startswith(NEEDLE_PREFIX) or not key.endswith("x"):
        return None
    try:
        m = float(key[len(NEEDLE_PREFIX) : -1])
    except ValueError:
        return None
    return m if math.isfinite(m) and m > 0 else None


def _check_needle(needle: Mapping[str, Any] | None) -> dict[str, float]:
    """The `needle@<m>x` entries of a `composer.evals.needle.needle_accuracy` result (its other entries,
    per_token@, lengths, by_depth, are not leaderboard columns and are left out), each in [0, 1].
    None or an empty mapping: no probe ran."""
    if needle is None or (isinstance(needle, Mapping) and not needle):
        return {}
    if not isinstance(needle, Mapping):
        raise ConfigError(f"needle must be a mapping like {{'needle@1x': 0.9}}, got {type(needle).__name__}")
    out = {}
    for key, value in needle.items():
        if isinstance(key, str) and needle_multiple(key) is not None:
            value = _check_number(key, value)
            if not 0 <= value <= 1:
                raise ConfigError(f"{key} is a fraction of probes, between 0 and 1, got {value}")
            out[key] = value
    if not out:
        raise ConfigError(f"needle holds no 'needle@<m>x' accuracy (keys: {', '.join(map(str, needle)) or 'none'})")
    return out


def stats(values: Sequence[float]) -> dict[str, float | int]:
    """Mean, population std (0 for one value) and count."""
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "n": len(values)}


def _primitive_configs(primitives: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(primitive name -> config object for ModelConfig, the same as plain JSON-ready dicts).
    Values may be the config dataclasses or mappings of their fields (as read back from JSON)."""
    by_name = {p.name: p for p in REGISTRY.values()}
    configs, plain = {}, {}
    for name, value in (primitives or {}).items():
        if name not in by_name:
            raise ConfigError(f"primitives: no primitive named {name!r} (registered: {', '.join(by_name)})")
        if isinstance(value, Mapping):
            value = from_mapping(by_name[name].config_cls, value, where=f"primitives.{name}")
        if not isinstance(value, by_name[name].config_cls):
            raise ConfigError(f"primitives.{name} must be a {by_name[name].config_cls.__name__} or a mapping, "
                              f"got {type(value).__name__}")
        configs[name], plain[name] = value, asdict(value)
    return configs, plain


def _extrapolations(pattern: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(targets, at_1b): the pattern grown to each preset, and what its 1B version costs.
    A target the pattern cannot reach (already larger than it) is {"error": message}."""
    method = paper_method(pattern)
    targets: dict[str, dict[str, Any]] = {}
    at_1b: dict[str, Any] = {}
    for name in TARGETS:
        try:
            grown = extrapolate(pattern, target=name, method=method)
        except ConfigError as exc:
            targets[name] = {"error": str(exc)}
            if name == "1b":
                at_1b = {"error": str(exc)}
            continue
        targets[name] = {"pattern": grown.pattern, "n_layers": grown.n_layers, "n_params": grown.n_params,
                         "method": grown.method}
        if name == "1b":
            cost = account(grown.model_config(), seq_len=COST_SEQ_LEN, contexts=CONTEXTS)
            at_1b = {
                "seq_len": COST_SEQ_LEN,
                "train_flops_per_token": cost.train_flops_per_token,  # FLOPs per training token at seq_len
                "state_bytes_per_token": {str(c): cost.state_bytes_per_token[c] for c in CONTEXTS},  # bf16 bytes
            }
    return targets, at_1b


def _check_scores(task_scores: Mapping[str, Sequence[float]], seeds: Sequence[int]) -> tuple[list[int], dict[str, list[float]]]:
    """The seeds (distinct, non-negative) and each task's scores (one number per seed), checked."""
    seeds = [_check_count("seed", s, minimum=0) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be a non-empty list of distinct integers, got {seeds!r}")
    if not isinstance(task_scores, Mapping) or not task_scores:
        raise ConfigError("task_scores must be a non-empty mapping of task name -> one score per seed")
    scores: dict[str, list[float]] = {}
    for task, values in task_scores.items():
        _check_text("task name", task)
        values = [] if isinstance(values, (str, bytes)) else list(values)
        if len(values) != len(seeds):
            raise ConfigError(f"task {task!r} has {len(values)} scores for {len(seeds)} seeds {seeds}")
        scores[task] = [_check_number(f"score of task {task!r}", v) for v in values]
    return seeds, scores


def _proxy_columns(pattern: str, *, d_model: int, vocab_size: int, seq_len: int,
                   primitives: Mapping[str, Any] | None) -> dict[str, Any]:
    """The searched model's size and cost at the proxy's width, vocabulary and sequence length."""
    configs, plain = _primitive_configs(primitives)
    try:
        model = ModelConfig(pattern=pattern, vocab_size=vocab_size, d_model=d_model, primitives=configs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"proxy model of {pattern!r}: {exc}") from None
    proxy = account(model, seq_len=seq_len)
    return {"d_model": proxy.d_model, "vocab_size": proxy.vocab_size, "seq_len": proxy.seq_len,
            "n_layers": proxy.n_layers, "n_params": proxy.n_params,
            "n_non_embedding_params": proxy.n_non_embedding_params,
            "train_flops_per_token": proxy.train_flops_per_token, "primitives": plain}


def architecture_record(
    pattern: str, *, search: str, strategy: str, role: str, aggregator: str | None,
    task_scores: Mapping[str, Sequence[float]], seeds: Sequence[int], proxy_d_model: int, proxy_vocab_size: int,
    seq_len: int, evaluator: str, run_dir: str | None = None, primitives: Mapping[str, Any] | None = None,
    needle: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One architecture row, every derived column computed here. JSON-ready.

    task_scores: task name -> one accuracy per seed, in the order of `seeds`.
    Fields: kind, schema, pattern, search, strategy, role, aggregator, evaluator, run_dir, created
    (ISO 8601 UTC), seeds;
      tasks            {task: {"mean", "std" (population, over seeds), "n"}}
      score            {"mean": mean over tasks of the task means, "std": population std over seeds of
                        each seed's mean over tasks, "n": seeds}
      attention_share  attention layers / layers
      proxy            the searched model: d_model, vocab_size, seq_len, n_layers, n_params,
                       n_non_embedding_params, train_flops_per_token (at seq_len), primitives
      targets          {"350m"|"1b"|"3b": {"pattern", "n_layers", "n_params", "method"} or {"error"}}
                       method: scaling.extrapolate.paper_method (stack below 16 layers, stretch from 16)
      at_1b            {"seq_len": 2048, "train_flops_per_token", "state_bytes_per_token":
                        {"4096", "32768"} (bf16 inference state / context)} or {"error"}
      full_runs        {}: a placeholder for full-pretraining results, filled by later tools
      needle@<m>x      only when `needle` is given (a needle_accuracy result): the fraction of
                       needle probes retrieved exactly at m × the training context
    """
    pattern = parse_pattern(pattern)
    if role not in ROLES:
        raise ConfigError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if role == "aggregate" and not aggregator:
        raise ConfigError("an 'aggregate' record needs its aggregator (e.g. 'N0')")
    for name, value in (("search", search), ("strategy", strategy), ("evaluator", evaluator)):
        _check_text(name, value)
    _check_text("aggregator", aggregator, optional=True)
    _check_text("run_dir", run_dir, optional=True)
    seeds, scores = _check_scores(task_scores, seeds)
    per_seed = [statistics.fmean(v[i] for v in scores.values()) for i in range(len(seeds))]  # mean over tasks
    tasks = {task: stats(values) for task, values in scores.items()}
    needle_scores = _check_needle(needle)
    targets, at_1b = _extrapolations(pattern)
    return {
        "kind": "architecture",
        "schema": SCHEMA,
        "pattern": pattern,
        "search": search,
        "strategy": strategy,
        "role": role,
        "aggregator": aggregator,
        "evaluator": evaluator,
        "run_dir": run_dir,
        "created": _now(),
        "seeds": seeds,
        "tasks": tasks,
        "score": {"mean": statistics.fmean(t["mean"] for t in tasks.values()),
                  "std": statistics.pstdev(per_seed), "n": len(seeds)},
        "attention_share": pattern.count("*") / len(pattern),
        "proxy": _proxy_columns(pattern, d_model=proxy_d_model, vocab_size=proxy_vocab_size, seq_len=seq_len,
                                primitives=primitives),
        "targets": targets,
        "at_1b": at_1b,
        "full_runs": {},
        **needle_scores,
    }


def search_record(
    *, search: str, strategy: str, evaluator: str, storage: str, run_dir: str,
    curve: Sequence[tuple[int, float]], n_evaluations: int, n_failed: int, space: Mapping[str, Any],
) -> dict[str, Any]:
    """One search's row. JSON-ready.

    curve: (evaluation index from 1, that evaluation's score), indices increasing; failed
    evaluations may be absent. Fields: kind, schema, the inputs (curve as [index, score] pairs),
    created (ISO 8601 UTC) and best_so_far: [index, running max of the score] at each curve point.
    """
    for name, value in (("search", search), ("strategy", strategy), ("evaluator", evaluator),
                        ("storage", storage), ("run_dir", run_dir)):
        _check_text(name, value)
    points: list[list[float | int]] = []
    for item in curve:
        if not isinstance(item, Sequence) or len(item) != 2:
            raise ConfigError(f"curve points are (index, score) pairs, got {item!r}")
        index = _check_count("curve index", item[0], minimum=1)
        if points and index <= points[-1][0]:
            raise ConfigError(f"curve indices must increase, got {index} after {points[-1][0]}")
        points.append([index, _check_number(f"score of evaluation {index}", item[1])])
    best_so_far, best = [], -math.inf
    for index, score in points:
        best = max(best, score)
        best_so_far.append([index, best])
    try:
        space = json.loads(json.dumps(space, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"space must be JSON-serialisable: {exc}") from None
    return {
        "kind": "search",
        "schema": SCHEMA,
        "search": search,
        "strategy": strategy,
        "evaluator": evaluator,
        "storage": storage,
        "run_dir": run_dir,
        "created": _now(),
        "n_evaluations": _check_count("n_evaluations", n_evaluations, minimum=0),
        "n_failed": _check_count("n_failed", n_failed, minimum=0),
        "space": space,
        "curve": points,
        "best_so_far": best_so_far,
    }


def pretrain_record(summary: Mapping[str, Any], *, run_dir: str) -> dict[str, Any]:
    """One full pretraining run (a `composer-pretrain` summary): quality, efficiency and the probe.

    Fields: kind, schema, pattern, name, run_dir, created, n_params, world_size, step, tokens,
    val_loss, bits_per_byte, tokens_per_s, mfu (None off known GPUs), peak_memory_gib, impl,
    gpu, and needle@<m>x when the probe ran. The key is run_dir: a rerun replaces the row.
    """
    final = summary.get("final") or {}
    record = {
        "kind": "pretrain", "schema": SCHEMA, "pattern": parse_pattern(summary["pattern"]), "name": summary.get("name"),
        "run_dir": run_dir, "created": _now(), "n_params": summary.get("n_params"),
        "world_size": summary.get("world_size"), "step": summary.get("step"), "tokens": summary.get("tokens"),
        "val_loss": final.get("loss"), "bits_per_byte": final.get("bits_per_byte"),
        "tokens_per_s": summary.get("tokens_per_s"), "mfu": summary.get("mfu"),
        "peak_memory_gib": summary.get("peak_memory_gib"), "impl": summary.get("impl"),
        "gpu": (summary.get("environment") or {}).get("cuda"),
    }
    return {**record, **_check_needle(summary.get("needle"))}


def record_key(record: Mapping[str, Any]) -> tuple[str, ...]:
    """What a record is the latest version of: ("architecture", search, role, pattern) or ("search", search)."""
    kind = record.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"record kind must be one of {', '.join(KINDS)}, got {kind!r}")
    fields = {"architecture": ("search", "role", "pattern"), "search": ("search",), "pretrain": ("run_dir",)}[kind]
    for name in fields:
        if not isinstance(record.get(name), str):
            raise ConfigError(f"{kind} record without a {name!r} string")
    if kind == "architecture" and not isinstance(record.get("score"), Mapping):
        raise ConfigError("architecture record without a 'score' object")
    return (kind, *(record[name] for name in fields))
