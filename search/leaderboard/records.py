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
KINDS = ("architecture", "search", "pretrain", "fidelity", "bench")
BASELINE = "baseline"  # the role of a reference pattern a search evaluated beside its candidates (not found by it)
ROLES = ("aggregate", "best_single", "candidate", BASELINE)
FIDELITY_SCHEMA = 1  # the version of composer-fidelity's fidelity.json that fidelity_record reads
FIDELITY_ROLES = ("top", "aggregate", "best_single", "baseline", "random", "given")  # why a pattern is in a study
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
        if grown.n_active_params != grown.n_params:  # MoE layers: what one token runs through
            targets[name]["n_active_params"] = grown.n_active_params
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
            "train_flops_per_token": proxy.train_flops_per_token, "primitives": plain,
            **({"n_active_params": proxy.n_active_params} if proxy.n_active_params != proxy.n_params else {})}


def architecture_record(
    pattern: str, *, search: str, strategy: str, role: str, aggregator: str | None,
    task_scores: Mapping[str, Sequence[float]], seeds: Sequence[int], proxy_d_model: int, proxy_vocab_size: int,
    seq_len: int, evaluator: str, run_dir: str | None = None, primitives: Mapping[str, Any] | None = None,
    needle: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One architecture row, every derived column computed here. JSON-ready.

    role: "aggregate" (needs its aggregator), "best_single", "candidate" (one of the top), or "baseline":
    a reference pattern the search evaluated beside its candidates (no aggregator; ranked with the
    others, marked in every format, never on the report's Pareto front).
    task_scores: task name -> one accuracy per seed, in the order of `seeds`.
    Fields: kind, schema, pattern, search, strategy, role, aggregator, evaluator, run_dir, created
    (ISO 8601 UTC), seeds;
      tasks            {task: {"mean", "std" (population, over seeds), "n"}}
      score            {"mean": mean over tasks of the task means, "std": population std over seeds of
                        each seed's mean over tasks, "n": seeds}
      attention_share  attention layers / layers
      proxy            the searched model: d_model, vocab_size, seq_len, n_layers, n_params,
                       n_non_embedding_params, train_flops_per_token (at seq_len), primitives; with
                       MoE layers also n_active_params
      targets          {"350m"|"1b"|"3b": {"pattern", "n_layers", "n_params", "method"} or {"error"}};
                       with MoE layers also n_active_params (what one token runs through, < n_params)
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
    if role == BASELINE and aggregator is not None:
        raise ConfigError(f"a 'baseline' record has no aggregator (it was not aggregated), got {aggregator!r}")
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


# ------------------------------------------------------------------------------------------ rank fidelity
# A fidelity result is nested; every check names its field by path (`patterns[3].rungs['r1'].mean`), so
# a bad fidelity.json is one line that says where.

def _at(path: str, field: str) -> str:
    """The path of a named field: `rungs[0]` + `name` -> `rungs[0].name`."""
    return f"{path}.{field}" if path else field


def _item(path: str, key: Any) -> str:
    """The path of a mapping's entry (a rung, a seed, a pattern): `noise_floor` + `r1` -> `noise_floor['r1']`."""
    return f"{path}[{key!r}]"


def _mapping(path: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"fidelity {path} must be a mapping, got {type(value).__name__}")
    return value


def _list(path: str, value: Any, *, empty: bool = True) -> list[Any]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise ConfigError(f"fidelity {path} must be a list, got {type(value).__name__}")
    if not value and not empty:
        raise ConfigError(f"fidelity {path} must not be empty")
    return list(value)


def _get(path: str, mapping: Any, key: str) -> Any:
    """mapping[key]; a missing key is an error naming `path.key`."""
    mapping = _mapping(path or "result", mapping)
    if key not in mapping:
        raise ConfigError(f"fidelity {_at(path, key)} is missing")
    return mapping[key]


def _optional_number(path: str, value: Any, *, lo: float | None = None, hi: float | None = None) -> float | None:
    if value is None:
        return None
    value = _check_number(f"fidelity {path}", value)
    slack = 1e-9  # a correlation computed in floating point may land a rounding error past ±1
    if (lo is not None and value < lo - slack) or (hi is not None and value > hi + slack):
        bounds = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise ConfigError(f"fidelity {path} must be {bounds}, got {value}")
    return value


def _fidelity_pattern(path: str, value: Any) -> str:
    try:
        return parse_pattern(value)
    except ConfigError as exc:
        raise ConfigError(f"fidelity {path}: {exc}") from None


def _fidelity_roles(path: str, value: Any) -> list[str]:
    roles = _list(path, value, empty=False)
    for i, role in enumerate(roles):
        if role not in FIDELITY_ROLES:
            raise ConfigError(f"fidelity {path}[{i}] must be one of {', '.join(FIDELITY_ROLES)}, got {role!r}")
    return roles


def _fidelity_rungs(value: Any) -> dict[str, list[int]]:
    """The rungs, checked; returns rung name -> its seeds."""
    seeds_of: dict[str, list[int]] = {}
    for i, rung in enumerate(_list("rungs", value, empty=False)):
        path = f"rungs[{i}]"
        name = _check_text(f"fidelity {path}.name", _get(path, rung, "name"))
        if name in seeds_of:
            raise ConfigError(f"fidelity {path}.name {name!r} appears twice")
        for key in ("d_model", "target_non_embedding_params", "tokens"):
            _check_count(f"fidelity {path}.{key}", _get(path, rung, key), minimum=1)
        if _check_number(f"fidelity {path}.tokens_per_param", _get(path, rung, "tokens_per_param")) <= 0:
            raise ConfigError(f"fidelity {path}.tokens_per_param must be positive, got {rung['tokens_per_param']}")
        seeds = [_check_count(f"fidelity {path}.seeds[{k}]", s, minimum=0)
                 for k, s in enumerate(_list(f"{path}.seeds", _get(path, rung, "seeds"), empty=False))]
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"fidelity {path}.seeds must be distinct, got {seeds}")
        _check_text(f"fidelity {path}.method", _get(path, rung, "method"))
        seeds_of[name] = seeds
    return seeds_of


def _check_rung_name(path: str, name: Any, seeds_of: Mapping[str, list[int]], *, proxy: bool = False) -> str:
    valid = (["proxy"] if proxy else []) + list(seeds_of)
    if name not in valid:
        raise ConfigError(f"fidelity {path} must name {'the proxy or ' if proxy else ''}a rung "
                          f"({', '.join(valid)}), got {name!r}")
    return name


def _fidelity_patterns(value: Any, seeds_of: Mapping[str, list[int]]) -> list[str]:
    """The patterns' entries, checked; returns the patterns."""
    seen: list[str] = []
    for i, entry in enumerate(_list("patterns", value)):
        path = f"patterns[{i}]"
        pattern = _fidelity_pattern(f"{path}.pattern", _get(path, entry, "pattern"))
        if pattern in seen:
            raise ConfigError(f"fidelity {path}.pattern {pattern!r} appears twice")
        seen.append(pattern)
        _fidelity_roles(f"{path}.roles", _get(path, entry, "roles"))
        _optional_number(f"{path}.proxy", _get(path, entry, "proxy"))
        for rung, result in _mapping(f"{path}.rungs", _get(path, entry, "rungs")).items():
            at = _item(f"{path}.rungs", rung)
            _check_rung_name(at, rung, seeds_of)
            _fidelity_pattern(f"{at}.grown", _get(at, result, "grown"))
            _check_count(f"fidelity {at}.n_non_embedding_params", _get(at, result, "n_non_embedding_params"), minimum=1)
            for seed, bpb in _mapping(f"{at}.bits_per_byte", _get(at, result, "bits_per_byte")).items():
                where = _item(f"{at}.bits_per_byte", seed)
                if not isinstance(seed, str) or not seed.isdigit() or int(seed) not in seeds_of[rung]:
                    raise ConfigError(f"fidelity {where}: {seed!r} is not one of rung {rung!r}'s seeds "
                                      f"{seeds_of[rung]} (as a string)")
                if _check_number(f"fidelity {where}", bpb) < 0:
                    raise ConfigError(f"fidelity {where} must be >= 0, got {bpb}")
            _optional_number(f"{at}.mean", _get(at, result, "mean"), lo=0)
    return seen


def _fidelity_correlations(value: Any, seeds_of: Mapping[str, list[int]], *, field: str = "correlations",
                           ranking: str | None = "x") -> None:
    """Rank correlations of one ranking against another: `ranking` names the key of what ranks, "x" (the proxy
    or a rung, against y: a rung; `correlations`), "letter" (a primitive's share, against y: the proxy or a rung;
    `composition`) or None (the caller's: a task subset, against y: the proxy or a rung)."""
    for i, item in enumerate(_list(field, value)):
        path = f"{field}[{i}]"
        if ranking == "letter":
            letter = _get(path, item, "letter")
            if not isinstance(letter, str) or len(letter) != 1:
                raise ConfigError(f"fidelity {path}.letter must be one primitive's letter, got {letter!r}")
        elif ranking == "x":
            _check_rung_name(f"{path}.x", _get(path, item, "x"), seeds_of, proxy=True)
        _check_rung_name(f"{path}.y", _get(path, item, "y"), seeds_of, proxy=ranking != "x")
        _check_count(f"fidelity {path}.n", _get(path, item, "n"), minimum=0)
        for name in ("spearman", "kendall"):
            at = f"{path}.{name}"
            for key in ("value", "low", "high"):
                _optional_number(f"{at}.{key}", _get(at, _get(path, item, name), key), lo=-1, hi=1)
            _check_count(f"fidelity {at}.n", _get(at, item[name], "n"), minimum=0)
        _optional_number(f"{path}.decision_accuracy", _get(path, item, "decision_accuracy"), lo=0, hi=1)


def _fidelity_task_subsets(value: Any, seeds_of: Mapping[str, list[int]]) -> None:
    """`task_subsets` (search/fidelity/subsets.py): None, or the proxy's tasks, the smallest subset ranking as
    the proxy, and rows (a subset kept, its correlations), with the same subset at other budgets (`budgets`)."""
    if value is None:
        return
    field = "task_subsets"
    _mapping(field, value)
    tasks = _list(f"{field}.tasks", _get(field, value, "tasks"))
    if not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise ConfigError(f"fidelity {field}.tasks must be a list of task names, got {tasks!r}")

    def subset(path: str, keep: Any, *, optional: bool = False) -> None:
        if keep is None and optional:
            return
        if not isinstance(keep, list) or not keep or any(t not in tasks for t in keep):
            raise ConfigError(f"fidelity {path} must be a non-empty list of the study's tasks ({', '.join(tasks)}), "
                              f"got {keep!r}")

    _check_count(f"fidelity {field}.n_patterns", _get(field, value, "n_patterns"), minimum=0)
    _optional_number(f"{field}.agreement", _get(field, value, "agreement"), lo=-1, hi=1)
    subset(f"{field}.smallest", _get(field, value, "smallest"), optional=True)
    for key in ("rows", "budgets"):
        for i, row in enumerate(_list(f"{field}.{key}", value.get(key, []))):
            path = f"{field}.{key}[{i}]"
            subset(f"{path}.keep", _get(path, row, "keep"))
            if key == "budgets":
                _check_text(f"fidelity {path}.name", _get(path, row, "name"))
            _fidelity_correlations(_get(path, row, "correlations"), seeds_of, field=f"{path}.correlations", ranking=None)


def _fidelity_noise(value: Any, seeds_of: Mapping[str, list[int]]) -> None:
    for rung, floor in _mapping("noise_floor", value).items():
        path = _item("noise_floor", rung)
        _check_rung_name(path, rung, seeds_of)
        for key in ("n_patterns", "n_seeds"):
            _check_count(f"fidelity {path}.{key}", _get(path, floor, key), minimum=0)
        for key, lo in (("neighbour_swap_rate", 0), ("seed_spearman", -1), ("seed_decision_accuracy", 0)):
            _optional_number(f"{path}.{key}", _get(path, floor, key), lo=lo, hi=1)
        _optional_number(f"{path}.std", _get(path, floor, "std"), lo=0)


def _fidelity_placement(value: Any, patterns: Sequence[str], seeds_of: Mapping[str, list[int]]) -> None:
    for pattern, place in _mapping("placement", value).items():
        path = _item("placement", pattern)
        if pattern not in patterns:
            raise ConfigError(f"fidelity {path}: {pattern!r} is not one of the study's patterns")
        _fidelity_roles(f"{path}.roles", _get(path, place, "roles"))
        _get(path, place, "proxy_rank")
        for key, rank in place.items():
            if not isinstance(key, str) or not key.endswith("_rank"):
                continue
            _check_rung_name(f"{path}.{key}", key.removesuffix("_rank"), seeds_of, proxy=True)
            if rank is not None:
                _check_count(f"fidelity {path}.{key}", rank, minimum=1)


FIDELITY_FIELDS = ("name", "search", "run_dir", "created", "proxy", "rungs", "patterns", "correlations",
                   "noise_floor", "placement")


def fidelity_record(result: Mapping[str, Any]) -> dict[str, Any]:
    """One rank-fidelity study (`composer-fidelity`'s fidelity.json): does the proxy rank architectures
    as larger training does? Every field is checked; a bad one is a one-line ConfigError naming it by
    path (`patterns[3].rungs['r1'].mean`). JSON-ready; the key is run_dir, so a rerun replaces the row.

    Fields: kind ("fidelity"), schema (the leaderboard's), and fidelity.json's FIDELITY_FIELDS, as given:
      name, search (str or None), run_dir, created (ISO 8601)
      proxy         {"evaluator", "d_model", "seed"}
      rungs         [{"name", "d_model", "target_non_embedding_params", "tokens", "tokens_per_param",
                      "seeds", "method"}], names distinct
      patterns      [{"pattern", "roles" (FIDELITY_ROLES), "proxy" (score, higher is better, or None),
                      "rungs": {rung: {"grown", "n_non_embedding_params", "bits_per_byte": {seed: bpb},
                      "mean" (or None)}}}]
      correlations  [{"x": "proxy" or a rung, "y": a rung, "n", "spearman"/"kendall": {"value", "low",
                      "high" (in [-1, 1] or None), "n"}, "decision_accuracy" (in [0, 1] or None)}]
      composition   (optional) as correlations, with "letter" (a primitive) for x and the proxy or a rung
                    for y: how one primitive's share of a pattern alone ranks it
      task_subsets  (optional, None) {"tasks", "n_patterns", "agreement", "smallest" (tasks or None), "rows":
                    [{"keep": tasks, "correlations": as composition's, without x}], "budgets" (optional):
                    [{"name", "keep", "correlations"}]}: which of the proxy's tasks rank as all of them
      noise_floor   {rung: {"n_patterns", "n_seeds", "neighbour_swap_rate", "seed_spearman",
                      "seed_decision_accuracy", "std"}}
      placement     {pattern: {"roles", "proxy_rank", "<rung>_rank" (from 1, or None)}}
    Other top-level keys of fidelity.json stay in the run folder and are left out.
    """
    _mapping("result", result)
    if _get("", result, "kind") != "fidelity":
        raise ConfigError(f"fidelity kind must be 'fidelity', got {result['kind']!r}")
    schema = _get("", result, "schema")
    if isinstance(schema, bool) or schema != FIDELITY_SCHEMA:
        raise ConfigError(f"fidelity schema must be {FIDELITY_SCHEMA} (the version this leaderboard reads), "
                          f"got {schema!r}")
    for key in ("name", "run_dir"):
        _check_text(f"fidelity {key}", _get("", result, key))
    _check_text("fidelity search", _get("", result, "search"), optional=True)
    created = _get("", result, "created")
    try:
        datetime.fromisoformat(created)
    except (TypeError, ValueError):
        raise ConfigError(f"fidelity created must be an ISO 8601 time, got {created!r}") from None
    proxy = _get("", result, "proxy")
    _check_text("fidelity proxy.evaluator", _get("proxy", proxy, "evaluator"))
    _check_count("fidelity proxy.d_model", _get("proxy", proxy, "d_model"), minimum=1)
    _check_count("fidelity proxy.seed", _get("proxy", proxy, "seed"), minimum=0)
    seeds_of = _fidelity_rungs(_get("", result, "rungs"))
    patterns = _fidelity_patterns(_get("", result, "patterns"), seeds_of)
    _fidelity_correlations(_get("", result, "correlations"), seeds_of)
    _fidelity_correlations(result.get("composition", []), seeds_of, field="composition", ranking="letter")  # absent before 2026-12-04
    _fidelity_noise(_get("", result, "noise_floor"), seeds_of)
    _fidelity_placement(_get("", result, "placement"), patterns, seeds_of)
    _fidelity_task_subsets(result.get("task_subsets"), seeds_of)  # absent before 2026-12-05
    record = {"kind": "fidelity", "schema": SCHEMA, **{key: result[key] for key in FIDELITY_FIELDS},
              "composition": result.get("composition", []), "task_subsets": result.get("task_subsets")}
    try:  # a plain copy: nothing shared with the caller's objects, no NaN in the fields not checked above
        return json.loads(json.dumps(record, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"fidelity result is not JSON-serialisable: {exc}") from None


# ------------------------------------------------------------------------------------------ measured speed
# composer-bench's figures (composer/evals/bench.py `figures`): per model, scalars and per-context mappings.

BENCH_SCHEMA = 1  # the version of composer-bench's bench.json that bench_record reads
BENCH_SCALARS = ("n_params", "train_tokens_per_s", "mfu", "train_memory_bytes")
BENCH_PER_CONTEXT = ("prefill_tokens_per_s", "decode_b1_tokens_per_s", "decode_b1_memory_bytes",
                     "decode_tokens_per_s", "decode_memory_bytes", "decode_batch")
BENCH_ROLES = {"model": "model", "reference": "llama"}  # record field -> bench.json's role


def _bench_figures(path: str, value: Any, contexts: Sequence[int], *, counts: bool = True) -> dict[str, Any]:
    """One model's figures (or the ratios, `counts=False`), checked: every scalar and every context's value
    positive and finite, or None (out of memory, or no GPU peak for MFU); decode_batch a count."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"bench {path} must be a mapping, got {type(value).__name__}")
    keys = [*BENCH_SCALARS, *BENCH_PER_CONTEXT]
    if set(value) != set(keys):
        missing, extra = sorted(set(keys) - set(value)), sorted(set(value) - set(keys))
        raise ConfigError(f"bench {path} must hold {', '.join(keys)}"
                          + (f"; missing {', '.join(missing)}" if missing else "") + (f"; unknown {', '.join(extra)}" if extra else ""))

    def number(where: str, v: Any, *, count: bool) -> float | int | None:
        if v is None:
            return None
        if count:
            return _check_count(f"bench {where}", v, minimum=1)
        if _check_number(f"bench {where}", v) <= 0:
            raise ConfigError(f"bench {where} must be positive, got {v}")
        return v

    out: dict[str, Any] = {k: number(f"{path}.{k}", value[k], count=counts and k == "n_params") for k in BENCH_SCALARS}
    for k in BENCH_PER_CONTEXT:
        per = value[k]
        if not isinstance(per, Mapping) or set(per) != {str(c) for c in contexts}:
            raise ConfigError(f"bench {path}.{k} must map each context ({', '.join(map(str, contexts))}) to a value, "
                              f"got {per!r}")
        out[k] = {str(c): number(f"{path}.{k}[{str(c)!r}]", per[str(c)], count=counts and k == "decode_batch")
                  for c in contexts}
    return out


def bench_record(result: Mapping[str, Any], *, run_dir: str) -> dict[str, Any]:
    """One composer-bench run (its bench.json): the measured speed of a pattern and of the Llama layout of its
    size on one device, every field checked (a bad one is a one-line ConfigError naming it). JSON-ready; the
    key is (pattern, size, device), so a rerun on the same device replaces the row.

    Fields: kind ("bench"), schema, pattern (measured), source_pattern (as given, before any growth),
    reference_pattern (the Llama layout), size (a preset's name, or "export:<folder>"), device (e.g. "NVIDIA
    H200", or "cpu"), device_type, dtype, decode_graph (whether decoding replayed CUDA graphs) and its
    reason when not, contexts, run_dir, created;
      model, reference  {n_params, train_tokens_per_s, mfu (None off known GPUs), train_memory_bytes, and per
                        context (str): prefill_tokens_per_s, decode_b1_tokens_per_s, decode_b1_memory_bytes,
                        decode_tokens_per_s, decode_memory_bytes and decode_batch (the largest batch that fit)};
                        None where that measurement ran out of memory
      ratios            model / reference, the same shape (None where either is missing)
    """
    if not isinstance(result, Mapping):
        raise ConfigError(f"bench result must be a mapping, got {type(result).__name__}")
    if result.get("schema") != BENCH_SCHEMA or isinstance(result.get("schema"), bool):
        raise ConfigError(f"bench schema must be {BENCH_SCHEMA} (the version this leaderboard reads), "
                          f"got {result.get('schema')!r}")
    patterns = {}
    for key in ("pattern", "source_pattern", "reference_pattern"):
        try:
            patterns[key] = parse_pattern(result.get(key))
        except ConfigError as exc:
            raise ConfigError(f"bench {key}: {exc}") from None
    for key in ("size", "device", "dtype"):
        _check_text(f"bench {key}", result.get(key))
    if result.get("device_type") not in ("cuda", "cpu"):
        raise ConfigError(f"bench device_type must be cuda or cpu, got {result.get('device_type')!r}")
    if not isinstance(result.get("decode_graph"), bool):
        raise ConfigError(f"bench decode_graph must be true or false, got {result.get('decode_graph')!r}")
    _check_text("bench decode_graph_reason", result.get("decode_graph_reason"), optional=True)
    contexts = (result.get("config") or {}).get("contexts")
    if isinstance(contexts, (str, bytes)) or not isinstance(contexts, Sequence) or not contexts:
        raise ConfigError(f"bench config.contexts must be a non-empty list, got {contexts!r}")
    contexts = [_check_count("bench context", c, minimum=1) for c in contexts]
    figures = result.get("figures")
    if not isinstance(figures, Mapping):
        raise ConfigError(f"bench figures must be a mapping of role -> figures, got {figures!r}")
    record = {
        "kind": "bench", "schema": SCHEMA, **patterns, "size": result["size"], "device": result["device"],
        "device_type": result["device_type"], "dtype": result["dtype"], "decode_graph": result["decode_graph"],
        "decode_graph_reason": result.get("decode_graph_reason"), "contexts": contexts,
        "run_dir": _check_text("bench run_dir", run_dir), "created": _now(),
        **{field: _bench_figures(f"figures.{role}", figures.get(role), contexts) for field, role in BENCH_ROLES.items()},
        "ratios": _bench_figures("ratios", result.get("ratios"), contexts, counts=False),
    }
    if record["model"]["n_params"] is None or record["reference"]["n_params"] is None:
        raise ConfigError("bench figures.<role>.n_params must be given")
    return record


def record_key(record: Mapping[str, Any]) -> tuple[str, ...]:
    """What a record is the latest version of: ("architecture", search, role, pattern), ("search", search),
    ("pretrain", run_dir), ("fidelity", run_dir) or ("bench", pattern, size, device)."""
    kind = record.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"record kind must be one of {', '.join(KINDS)}, got {kind!r}")
    fields = {"architecture": ("search", "role", "pattern"), "search": ("search",), "pretrain": ("run_dir",),
              "fidelity": ("run_dir",), "bench": ("pattern", "size", "device")}[kind]
    for name in fields:
        if not isinstance(record.get(name), str):
            raise ConfigError(f"{kind} record without a {name!r} string")
    if kind == "architecture" and not isinstance(record.get("score"), Mapping):
        raise ConfigError("architecture record without a 'score' object")
    return (kind, *(record[name] for name in fields))
