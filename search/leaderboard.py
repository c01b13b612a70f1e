"""The leaderboard: every architecture the searches found, in one file, with what it costs at size.

Storage is one JSON Lines file (`DEFAULT_PATH`, relative to the working directory), one record per
line, of two kinds:

  architecture  a pattern a search produced (its aggregate, its best single candidate, or one of
                its top candidates), its proxy scores per task and seed, its proxy size, and its
                extrapolations to 350M, 1B and 3B with the 1B training FLOPs and inference state
  search        one search: strategy, evaluator, storage, evaluation counts, best-so-far curve

A record is updated by appending a new version of it: a later line with the same key replaces the
earlier one (architecture: search, role, pattern; search: search). Each append is one `write()` of
one line to a file opened with O_APPEND, so concurrent writers never interleave or lose lines.

The builders (`architecture_record`, `search_record`) take what a search knows and compute every
derived column, so the writer and the readers never disagree on a formula. `rows` flattens the
current architecture records into the table that `composer-leaderboard` prints (text, csv, json,
markdown) and that search/report.py renders as HTML. Imports no torch.

Long-context probe: an architecture record may carry `needle@<m>x` fields (composer/needle.py's
exact-match retrieval accuracy at m × the training context, a fraction); the table then gets one
column per multiple seen, in order of m, e.g. `needle@1x`, `needle@2x`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import numbers
import os
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from composer.config import ModelConfig, from_mapping
from composer.errors import ComposerError, ConfigError
from composer.pattern import parse_pattern
from primitives import REGISTRY
from scaling.accounting import account
from scaling.extrapolate import extrapolate, paper_method

PROG = "composer-leaderboard"
DEFAULT_PATH = Path("outputs/leaderboard.jsonl")
SCHEMA = 1  # bumped when a field changes meaning; readers of older lines use .get
KINDS = ("architecture", "search", "pretrain")
ROLES = ("aggregate", "best_single", "candidate")
TARGETS = ("350m", "1b", "3b")  # presets every architecture is extrapolated to
COST_SEQ_LEN = 2048  # training sequence length of the 1B FLOPs column
CONTEXTS = (4096, 32768)  # decoding contexts of the 1B inference-state columns
FORMATS = ("text", "csv", "json", "md")
NEEDLE_PREFIX = "needle@"  # record fields and table columns of the long-context probe: needle@1x, needle@2x


# ------------------------------------------------------------------------------------------ records

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
    """The `needle@<m>x` entries of a `composer.needle.needle_accuracy` result (its other entries,
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
    per_seed = [statistics.fmean(v[i] for v in scores.values()) for i in range(len(seeds))]  # mean over tasks
    tasks = {task: stats(values) for task, values in scores.items()}

    configs, plain = _primitive_configs(primitives)
    try:
        model = ModelConfig(pattern=pattern, vocab_size=proxy_vocab_size, d_model=proxy_d_model, primitives=configs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"proxy model of {pattern!r}: {exc}") from None
    proxy = account(model, seq_len=seq_len)
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
        "proxy": {
            "d_model": proxy.d_model, "vocab_size": proxy.vocab_size, "seq_len": proxy.seq_len,
            "n_layers": proxy.n_layers, "n_params": proxy.n_params,
            "n_non_embedding_params": proxy.n_non_embedding_params,
            "train_flops_per_token": proxy.train_flops_per_token, "primitives": plain,
        },
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


def full_runs_text(records: Iterable[Mapping[str, Any]]) -> str:
    """The pretraining runs as an aligned table ('' when there are none), newest last."""
    runs = [r for r in current(records) if r.get("kind") == "pretrain"]
    if not runs:
        return ""
    needles = sorted({k for r in runs for k in r if needle_multiple(k) is not None}, key=needle_multiple)
    header = ["pattern", "params", "tokens", "GPUs", "val bpb", "tokens/s", "MFU", *needles]

    def cells(r: Mapping[str, Any]) -> list[str]:
        def num(v: Any, f: str) -> str:
            return "-" if v is None else format(v, f)

        return [r["pattern"], format_count(r.get("n_params")), format_count(r.get("tokens")), num(r.get("world_size"), "d"),
                num(r.get("bits_per_byte"), ".3f"), num(r.get("tokens_per_s"), ",.0f"), num(r.get("mfu"), ".1%"),
                *(num(r.get(k), ".2f") for k in needles)]

    table = [header] + [cells(r) for r in runs]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in table]
    return "\nFull pretraining runs\n" + "\n".join(lines[:1] + ["  ".join("-" * w for w in widths)] + lines[1:]) + "\n"


# ------------------------------------------------------------------------------------------ storage

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


def append(record: Mapping[str, Any], path: str | Path = DEFAULT_PATH) -> None:
    """Append one record as one line: a single write() with O_APPEND, safe with concurrent writers."""
    record_key(record)
    try:
        line = json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n"
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"leaderboard record is not JSON-serialisable: {exc}") from None
    data, path = line.encode(), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
    finally:
        os.close(fd)
    if written != len(data):  # a full disk: say so rather than leave half a line unnoticed
        raise OSError(f"{path}: wrote {written} of {len(data)} bytes of a leaderboard record")


def read_records(path: str | Path = DEFAULT_PATH) -> list[dict[str, Any]]:
    """Every record in the file, in file order, versions included; [] when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ConfigError(f"a record is a JSON object, got {type(record).__name__}")
                record_key(record)
            except (ValueError, ConfigError) as exc:  # JSONDecodeError is a ValueError
                raise ConfigError(f"{path} line {number}: malformed leaderboard record: {exc}") from None
            records.append(record)
    return records


def current(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The latest version of each record (by `record_key`), in order of first appearance."""
    latest: dict[tuple[str, ...], dict[str, Any]] = {}
    for record in records:
        latest[record_key(record)] = dict(record)
    return list(latest.values())


def load(path: str | Path = DEFAULT_PATH) -> list[dict[str, Any]]:
    """The current records of the leaderboard at `path`; [] when the file does not exist."""
    return current(read_records(path))


# ------------------------------------------------------------------------------------------ the table

BASE_COLUMNS = ("rank", "pattern", "search", "strategy", "role", "aggregator", "score", "score_std", "n_seeds")
COST_COLUMNS = ("attention_share", "proxy_params", "params_350m", "params_1b", "params_3b", "layers_1b",
                "flops_1b", "state_4k", "state_32k", "created")


def _sort_key(record: Mapping[str, Any]) -> tuple:
    return (-record["score"]["mean"], record["pattern"], record["search"], record["role"])


def rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per current architecture record, best score first (ties by pattern).

    Columns: BASE_COLUMNS, one `task:<name>` mean per task seen, one `needle@<m>x` per probe multiple
    seen (None where a record has none), COST_COLUMNS. Units: params in
    parameters, flops_1b in training FLOPs per token at seq_len 2048, state_* in bytes per token of
    context at 4K / 32K tokens, all of the 1B extrapolation; None where it does not exist."""
    archs = sorted((r for r in current(records) if r["kind"] == "architecture"), key=_sort_key)
    tasks = sorted({task for r in archs for task in r.get("tasks", {})})
    needles = sorted({k for r in archs for k in r if needle_multiple(k) is not None}, key=needle_multiple)
    out = []
    for rank, r in enumerate(archs, start=1):
        score, targets, at_1b = r["score"], r.get("targets", {}), r.get("at_1b", {})
        state = at_1b.get("state_bytes_per_token", {})
        out.append({
            "rank": rank,
            "pattern": r["pattern"],
            "search": r["search"],
            "strategy": r.get("strategy"),
            "role": r["role"],
            "aggregator": r.get("aggregator"),
            "score": score.get("mean"),
            "score_std": score.get("std"),
            "n_seeds": score.get("n"),
            **{f"task:{t}": r.get("tasks", {}).get(t, {}).get("mean") for t in tasks},
            **{k: _fraction(r.get(k)) for k in needles},
            "attention_share": r.get("attention_share"),
            "proxy_params": r.get("proxy", {}).get("n_params"),
            **{f"params_{t}": targets.get(t, {}).get("n_params") for t in TARGETS},
            "layers_1b": targets.get("1b", {}).get("n_layers"),
            "flops_1b": at_1b.get("train_flops_per_token"),
            "state_4k": state.get("4096"),
            "state_32k": state.get("32768"),
            "created": r.get("created"),
        })
    return out


def _fraction(value: Any) -> float | None:
    return float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else None


def task_columns(table: Sequence[Mapping[str, Any]]) -> list[str]:
    return [k for k in (table[0] if table else {}) if k.startswith("task:")]


def needle_columns(table: Sequence[Mapping[str, Any]]) -> list[str]:
    """The table's `needle@<m>x` columns, in order of m; [] when no record has the probe."""
    return [k for k in (table[0] if table else {}) if needle_multiple(k) is not None]


# ------------------------------------------------------------------------------------------ formatting

def format_count(n: float | None, *, units: Sequence[str] = ("", "K", "M", "B", "T")) -> str:
    """1234567 -> '1.2M', 350e6 -> '350M', 1.1e9 -> '1.1B'; '-' for None."""
    if n is None:
        return "-"
    value, k = float(n), 0
    while k < len(units) - 1 and abs(value) >= 999.5:
        value, k = value / 1000, k + 1
    if k == 0:
        return f"{value:.0f}"
    return f"{value:.1f}{units[k]}" if abs(value) < 9.95 else f"{value:.0f}{units[k]}"


def format_flops(n: float | None) -> str:
    """FLOPs with SI prefixes: 7.6e9 -> '7.6G'."""
    return format_count(n, units=("", "K", "M", "G", "T", "P"))


def format_bytes(n: float | None) -> str:
    """Binary units: 512 -> '512 B', 12288 -> '12 KiB', 1.5 * 2**20 -> '1.5 MiB', 2**20 -> '1.0 MiB'; '-' for None."""
    if n is None:
        return "-"
    value, units, k = float(n), ("B", "KiB", "MiB", "GiB", "TiB"), 0
    while k < len(units) - 1 and abs(value) >= 1023.5:
        value, k = value / 1024, k + 1
    if abs(value) >= 9.95 or (k == 0 and value == int(value)):
        return f"{value:.0f} {units[k]}"
    return f"{value:.1f} {units[k]}"


def format_score(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def format_share(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.0f}%"


def _role(row: Mapping[str, Any]) -> str:
    return f"{row['role']} ({row['aggregator']})" if row.get("aggregator") else str(row["role"])


# (header, cell text, right-aligned) of the text and markdown tables; markdown adds the task columns.
Column = tuple[str, Callable[[Mapping[str, Any]], str], bool]
DISPLAY: list[Column] = [
    ("#", lambda r: str(r["rank"]), True),
    ("pattern", lambda r: r["pattern"], False),
    ("score", lambda r: format_score(r["score"], r["score_std"] if (r.get("n_seeds") or 0) > 1 else None), True),
    ("seeds", lambda r: str(r["n_seeds"]), True),
    ("attn", lambda r: format_share(r["attention_share"]), True),
    ("proxy params", lambda r: format_count(r["proxy_params"]), True),
    ("1B params", lambda r: format_count(r["params_1b"]), True),
    ("1B layers", lambda r: "-" if r["layers_1b"] is None else str(r["layers_1b"]), True),
    ("1B FLOPs/tok", lambda r: format_flops(r["flops_1b"]), True),
    ("1B state/tok@32K", lambda r: format_bytes(r["state_32k"]), True),
    ("role", _role, False),
    ("search", lambda r: str(r["search"]), False),
]


def _task_display(column: str) -> Column:
    return (column.removeprefix("task:"), lambda r: format_score(r[column]), True)


def _needle_display(column: str) -> Column:
    return (column, lambda r: format_score(r[column]), True)


def _text_columns(table: Sequence[Mapping[str, Any]]) -> list[Column]:
    """DISPLAY, with the needle columns after the seeds when any record has them."""
    return DISPLAY[:4] + [_needle_display(c) for c in needle_columns(table)] + DISPLAY[4:]


def to_text(table: Sequence[Mapping[str, Any]]) -> str:
    """An aligned table for the terminal (a readable subset of the columns)."""
    if not table:
        return "(no architectures)\n"
    columns = _text_columns(table)
    cells = [[header for header, _, _ in columns]] + [[cell(r) for _, cell, _ in columns] for r in table]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for n, row in enumerate(cells):
        parts = [text.rjust(w) if right else text.ljust(w) for text, w, (_, _, right) in zip(row, widths, columns)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(table: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub-flavoured markdown table: the text columns plus one column per task mean."""
    needles = [_needle_display(c) for c in needle_columns(table)]
    columns = DISPLAY[:4] + [_task_display(c) for c in task_columns(table)] + needles + DISPLAY[4:]
    lines = ["| " + " | ".join(_md(h) for h, _, _ in columns) + " |",
             "|" + "|".join("---:" if right else "---" for _, _, right in columns) + "|"]
    for r in table:
        cells = [f"`{cell(r)}`" if header == "pattern" else _md(cell(r)) for header, cell, _ in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table: Sequence[Mapping[str, Any]]) -> str:
    """Every flat column of `rows`, header first; None is an empty cell."""
    fields = list(table[0]) if table else [*BASE_COLUMNS, *COST_COLUMNS]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return out.getvalue()


def to_json(items: Iterable[Mapping[str, Any]]) -> str:
    """A JSON list of what is given, unchanged. The CLI gives the full records (architectures in
    table order, then searches), not the flat rows; pass rows to get rows."""
    return json.dumps(list(items), indent=2, allow_nan=False) + "\n"


# ------------------------------------------------------------------------------------------ CLI

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Show the architectures found by composer-search.")
    parser.add_argument("--file", type=Path, default=DEFAULT_PATH, help=f"leaderboard file (default: {DEFAULT_PATH})")
    parser.add_argument("--format", choices=FORMATS, help="output format (default: text)")
    parser.add_argument("--output", type=Path, help="write the table to this file instead of stdout")
    parser.add_argument("--html", type=Path, help="write the HTML report to this file")
    parser.add_argument("--search", help="only this search's architectures")
    parser.add_argument("--top", type=int, help="only the N best architectures")
    return parser


def _select(records: list[dict[str, Any]], *, search: str | None, top: int | None) -> list[dict[str, Any]]:
    """The records to show: one search's (if named), the `top` best architectures, then the searches."""
    if search is not None:
        known = sorted({r["search"] for r in records if "search" in r})
        if search not in known:
            raise ConfigError(f"unknown search {search!r} (known searches: {', '.join(known) or 'none'})")
        records = [r for r in records if r.get("search") == search]
    if top is not None and top < 1:
        raise ConfigError(f"--top must be a positive integer, got {top}")
    archs = sorted((r for r in records if r["kind"] == "architecture"), key=_sort_key)[:top]
    return archs + [r for r in records if r["kind"] != "architecture"]


def _render(records: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return to_json(records)
    table = rows(records)
    out = {"text": to_text, "csv": to_csv, "md": to_markdown}[fmt](table)
    return out + full_runs_text(records) if fmt == "text" else out


def main(argv: Sequence[str] | None = None) -> int:
    """composer-leaderboard: print or export the leaderboard; user errors are one line and exit 2."""
    args = _parser().parse_args(argv)
    try:
        if not args.file.is_file():
            raise ConfigError(f"no leaderboard at {args.file} (run composer-search first)")
        records = _select(load(args.file), search=args.search, top=args.top)
        if args.html is not None:
            from search import report  # report imports this module: import it only when asked for

            report.write(records, args.html)
            print(args.html)
        if args.html is None or args.format is not None or args.output is not None:
            text = _render(records, args.format or "text")
            if args.output is not None:
                args.output.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(text, encoding="utf-8")
                print(args.output)
            else:
                sys.stdout.write(text)
    except (ComposerError, OSError) as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0


def cli() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
