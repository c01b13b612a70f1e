"""The leaderboard as a table: `rows` flattens the current architecture records; text, markdown,
csv and JSON render them (html.py draws the same rows as a page). Baselines (role "baseline") are
rows like the others, ranked by score; the text and markdown tables show their rank in parentheses.
`full_runs_text`, `fidelity_text` and `bench_text` summarise the pretraining runs, the rank-fidelity studies
and the composer-bench runs; a row that a bench measured gets MEASURED_COLUMNS."""

from __future__ import annotations

import csv
import io
import json
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from search.leaderboard.records import BASELINE, TARGETS, needle_multiple
from search.leaderboard.store import current

FORMATS = ("text", "csv", "json", "md")
# composer-bench's measured figures for a row, at the largest context it measured (only when the leaderboard
# holds bench records): the device and size, decode tokens/s at the largest batch that fit and that batch,
# at batch 1 and its memory, prefill and training tokens/s, MFU, and decode tokens/s over the Llama layout's.
MEASURED_COLUMNS = ("bench_device", "bench_size", "bench_context", "decode_tps", "decode_batch", "decode_b1_tps",
                    "decode_memory", "prefill_tps", "train_tps", "train_mfu", "decode_vs_llama")
BASE_COLUMNS = ("rank", "pattern", "search", "strategy", "role", "aggregator", "score", "score_std", "n_seeds")
COST_COLUMNS = ("attention_share", "proxy_params", "params_350m", "params_1b", "params_3b", "active_params_1b",
                "layers_1b",
                "flops_1b", "state_4k", "state_32k", "created")


def sort_key(record: Mapping[str, Any]) -> tuple:
    return (-record["score"]["mean"], record["pattern"], record["search"], record["role"])


def rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per current architecture record, best score first (ties by pattern).

    Columns: BASE_COLUMNS, one `task:<name>` mean per task seen, one `needle@<m>x` per probe multiple
    seen (None where a record has none), COST_COLUMNS. Units: params in
    parameters (active_params_1b: those one token runs through, fewer than params_1b with MoE layers), flops_1b in training FLOPs per token at seq_len 2048, state_* in bytes per token of
    context at 4K / 32K tokens, all of the 1B extrapolation; None where it does not exist. When the records
    hold composer-bench runs, also MEASURED_COLUMNS (`measured`: tokens/s, bytes, MFU as a fraction)."""
    records = current(records)
    archs = sorted((r for r in records if r["kind"] == "architecture"), key=sort_key)
    benches = [r for r in records if r["kind"] == "bench"]
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
            "score_std": score.get("std") if (score.get("n") or 0) > 1 else None,  # one seed has no spread
            "n_seeds": score.get("n"),
            **{f"task:{t}": r.get("tasks", {}).get(t, {}).get("mean") for t in tasks},
            **{k: _fraction(r.get(k)) for k in needles},
            "attention_share": r.get("attention_share"),
            "proxy_params": r.get("proxy", {}).get("n_params"),
            **{f"params_{t}": targets.get(t, {}).get("n_params") for t in TARGETS},
            "active_params_1b": targets.get("1b", {}).get("n_active_params"),
            "layers_1b": targets.get("1b", {}).get("n_layers"),
            "flops_1b": at_1b.get("train_flops_per_token"),
            "state_4k": state.get("4096"),
            "state_32k": state.get("32768"),
            "created": r.get("created"),
            **(measured(r, benches) if benches else {}),
        })
    return out


def _bench_for(arch: Mapping[str, Any], benches: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any], str] | None:
    """The bench record that measured this architecture, and which side of it ("model", or "reference" when
    the row is the Llama layout a bench compared against): its pattern as searched, as grown to the bench's
    size (the record's targets), or as given to composer-bench before growing. Ties: a 1B bench, the
    pattern itself over the reference, the newest."""
    best = None
    for b in benches:
        grown = (arch.get("targets") or {}).get(b["size"], {}).get("pattern")
        names = {arch["pattern"], grown} - {None}
        if b["pattern"] in names or b.get("source_pattern") == arch["pattern"]:
            side = "model"
        elif b["reference_pattern"] in names:
            side = "reference"
        else:
            continue
        key = (b["size"] == "1b", side == "model", b.get("created") or "")
        if best is None or key > best[0]:
            best = (key, b, side)
    return None if best is None else best[1:]


def measured(arch: Mapping[str, Any], benches: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """MEASURED_COLUMNS of one architecture row (all None when no bench measured it)."""
    found = _bench_for(arch, benches)
    if found is None:
        return dict.fromkeys(MEASURED_COLUMNS)
    b, side = found
    c = str(max(b["contexts"]))
    figs = b[side]
    return {"bench_device": b["device"], "bench_size": b["size"], "bench_context": int(c),
            "decode_tps": figs["decode_tokens_per_s"][c], "decode_batch": figs["decode_batch"][c],
            "decode_b1_tps": figs["decode_b1_tokens_per_s"][c], "decode_memory": figs["decode_b1_memory_bytes"][c],
            "prefill_tps": figs["prefill_tokens_per_s"][c], "train_tps": figs["train_tokens_per_s"],
            "train_mfu": figs["mfu"],
            "decode_vs_llama": b["ratios"]["decode_tokens_per_s"][c] if side == "model" else 1.0}


def has_measured(table: Sequence[Mapping[str, Any]]) -> bool:
    """Whether any row has composer-bench figures."""
    return any(r.get("bench_device") is not None for r in table)


def short_device(name: str | None) -> str:
    """'NVIDIA H200' -> 'H200'; '-' for None."""
    return "-" if name is None else name.removeprefix("NVIDIA ").strip()


def format_context(tokens: int | None) -> str:
    """32768 -> '32K', 4096 -> '4K', 100 -> '100'."""
    if tokens is None:
        return "-"
    return f"{tokens // 1024}K" if tokens >= 1024 and tokens % 1024 == 0 else str(tokens)


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def bench_text(records: Iterable[Mapping[str, Any]]) -> str:
    """The composer-bench runs ('' when there are none): per run and context, the model and its Llama
    reference, each figure with the device named; decode 'max' is the largest batch that fit."""
    benches = [r for r in current(records) if r.get("kind") == "bench"]
    if not benches:
        return ""
    header = ["pattern", "size", "device", "ctx", "train/s", "MFU", "prefill/s", "decode/s b1", "memory b1",
              "decode/s max", "batch", "decode vs Llama"]
    table = [header]
    for b in benches:
        for side in ("model", "reference"):
            figs, pattern = b[side], b["pattern" if side == "model" else "reference_pattern"]
            for c in map(str, b["contexts"]):
                ratio = b["ratios"]["decode_tokens_per_s"][c] if side == "model" else None
                table.append([_short_pattern(pattern) + ("" if side == "model" else " (Llama)"), b["size"],
                              short_device(b["device"]) + ("" if b["decode_graph"] else " eager"),
                              format_context(int(c)), format_count(figs["train_tokens_per_s"]),
                              _number(figs["mfu"], ".1%"), format_count(figs["prefill_tokens_per_s"][c]),
                              format_count(figs["decode_b1_tokens_per_s"][c]),
                              format_bytes(figs["decode_b1_memory_bytes"][c]),
                              format_count(figs["decode_tokens_per_s"][c]),
                              _number(figs["decode_batch"][c], "d"), format_ratio(ratio) if side == "model" else ""])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in table]
    note = ("tokens/s; b1: batch 1; max: the largest batch that fit (out of memory: -); eager: decoding without "
            "CUDA graphs")
    return ("\nMeasured speed (composer-bench)\n" + "\n".join(lines[:1] + ["  ".join("-" * w for w in widths)] + lines[1:])
            + "\n" + note + "\n")


def _short_pattern(pattern: str, n: int = 24) -> str:
    return pattern if len(pattern) <= n else pattern[: n - 1] + "…"


def _fraction(value: Any) -> float | None:
    return float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else None


def task_columns(table: Sequence[Mapping[str, Any]]) -> list[str]:
    return [k for k in (table[0] if table else {}) if k.startswith("task:")]


def needle_columns(table: Sequence[Mapping[str, Any]]) -> list[str]:
    """The table's `needle@<m>x` columns, in order of m; [] when no record has the probe."""
    return [k for k in (table[0] if table else {}) if needle_multiple(k) is not None]


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


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_interval(stat: Mapping[str, Any]) -> str:
    """A correlation with its interval: '0.91 [0.80, 0.97]'; '-' when there is no value."""
    if stat.get("value") is None:
        return "-"
    bounds = (stat.get("low"), stat.get("high"))
    return f"{stat['value']:.2f}" + ("" if None in bounds else f" [{bounds[0]:.2f}, {bounds[1]:.2f}]")


def correlation_text(c: Mapping[str, Any]) -> str:
    """'proxy -> r1: Spearman 0.91 [0.80, 0.97], Kendall 0.78 [0.62, 0.90], decisions 85%, n=16'."""
    return (f"{c['x']} -> {c['y']}: Spearman {format_interval(c['spearman'])}, "
            f"Kendall {format_interval(c['kendall'])}, decisions {_number(c.get('decision_accuracy'), '.0%')}, n={c['n']}")


def noise_text(rung: str, floor: Mapping[str, Any]) -> str:
    """'noise floor r1: seed Spearman 0.95, seed decisions 92%, neighbour swaps 6%, std 0.004
    (16 patterns, 2 seeds)', on one line; '-' for what the study could not measure."""
    return (f"noise floor {rung}: seed Spearman {_number(floor.get('seed_spearman'), '.2f')}, "
            f"seed decisions {_number(floor.get('seed_decision_accuracy'), '.0%')}, "
            f"neighbour swaps {_number(floor.get('neighbour_swap_rate'), '.0%')}, "
            f"std {_number(floor.get('std'), '.3g')} ({floor['n_patterns']} patterns, {floor['n_seeds']} seeds)")


def rung_text(rung: Mapping[str, Any]) -> str:
    """'r1: d_model 128, 20M params, 400M tokens (20 per param), seeds 0 1, stack'."""
    return (f"{rung['name']}: d_model {rung['d_model']}, {format_count(rung['target_non_embedding_params'])} params, "
            f"{format_count(rung['tokens'])} tokens ({rung['tokens_per_param']:g} per param), "
            f"seeds {' '.join(map(str, rung['seeds']))}, {rung['method']}")


def fidelity_records(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The current rank-fidelity records, oldest first."""
    return sorted((r for r in current(records) if r.get("kind") == "fidelity"),
                  key=lambda r: (r["created"], r["run_dir"]))


def task_subset_rows(subsets: Mapping[str, Any] | None, *, smallest_only: bool = False) -> list[dict[str, Any]]:
    """The correlation rows of a study's task subsets, each named as a ranking ("tasks without memorization"):
    the smallest agreeing subset, each task left out, and the smallest at the proxy's other budgets; with
    `smallest_only`, the smallest subset's rows alone."""
    if not subsets:
        return []
    n, rows = len(subsets["tasks"]), []
    for row in subsets["rows"]:
        smallest = row["keep"] == subsets["smallest"]
        if smallest_only and not smallest:
            continue
        left_out = [t for t in subsets["tasks"] if t not in row["keep"]]
        name = (f"tasks without {left_out[0]}" if len(left_out) == 1 and not smallest
                else f"tasks {', '.join(row['keep'])} ({len(row['keep'])} of {n})")
        rows += [{**c, "x": name} for c in row["correlations"]]
    for budget in () if smallest_only else subsets.get("budgets", []):
        rows += [{**c, "x": f"{budget['name']} on {len(budget['keep'])} of {n} tasks"} for c in budget["correlations"]]
    return rows


def fidelity_text(records: Iterable[Mapping[str, Any]]) -> str:
    """The rank-fidelity studies: per study its rungs, one line per correlation, the noise floor per rung
    ('' when there are none)."""
    blocks = []
    for r in fidelity_records(records):
        proxy = r["proxy"]
        origin = f"search {r['search']}, " if r.get("search") else ""
        lines = [f"\nRank fidelity: {r['name']} ({origin}proxy {proxy['evaluator']} at d_model {proxy['d_model']}; "
                 f"{r['run_dir']})"]
        lines += [f"  rung {rung_text(rung)}" for rung in r["rungs"]]
        lines += [f"  {correlation_text(c)}" for c in r["correlations"]]
        # the fewest tasks that rank as all of them
        lines += [f"  {correlation_text(c)}" for c in task_subset_rows(r.get("task_subsets"), smallest_only=True)]
        lines += [f"  {noise_text(rung, floor)}" for rung, floor in r["noise_floor"].items()]
        blocks.append("\n".join(lines) + "\n")
    return "".join(blocks)


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


def _rank(row: Mapping[str, Any]) -> str:
    """A baseline's rank in parentheses: ranked with the others, but not a search result."""
    return f"({row['rank']})" if row["role"] == BASELINE else str(row["rank"])


def _role(row: Mapping[str, Any]) -> str:
    return f"{row['role']} ({row['aggregator']})" if row.get("aggregator") else str(row["role"])


# (header, cell text, right-aligned) of the text and markdown tables; markdown adds the task columns.
Column = tuple[str, Callable[[Mapping[str, Any]], str], bool]
DISPLAY: list[Column] = [
    ("#", _rank, True),
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


ACTIVE_DISPLAY: Column = ("1B active", lambda r: format_count(r.get("active_params_1b")), True)
MEASURED_DISPLAY: list[Column] = [  # composer-bench's figures, at the largest context measured
    ("measured on", lambda r: "-" if r.get("bench_device") is None else
     f"{short_device(r['bench_device'])} {r['bench_size']} @{format_context(r['bench_context'])}", False),
    ("decode/s", lambda r: format_count(r.get("decode_tps")), True),
    ("batch", lambda r: _number(r.get("decode_batch"), "d"), True),
    ("vs Llama", lambda r: format_ratio(r.get("decode_vs_llama")), True),
    ("memory b1", lambda r: format_bytes(r.get("decode_memory")), True),
    ("prefill/s", lambda r: format_count(r.get("prefill_tps")), True),
    ("train/s", lambda r: format_count(r.get("train_tps")), True),
]


def has_experts(table: Sequence[Mapping[str, Any]]) -> bool:
    """Whether any row's 1B model has fewer active than total parameters (MoE layers): then the
    tables show the active ones beside the total."""
    return any(r.get("active_params_1b") not in (None, r.get("params_1b")) for r in table)


def _cost_columns(table: Sequence[Mapping[str, Any]]) -> list[Column]:
    """DISPLAY's cost columns, with the 1B active parameters after the 1B total when any row has MoE layers
    and the measured ones before the role when any row has composer-bench figures."""
    return (DISPLAY[4:7] + ([ACTIVE_DISPLAY] if has_experts(table) else []) + DISPLAY[7:10]
            + (MEASURED_DISPLAY if has_measured(table) else []) + DISPLAY[10:])


def _text_columns(table: Sequence[Mapping[str, Any]]) -> list[Column]:
    """DISPLAY, with the needle columns after the seeds when any record has them."""
    return DISPLAY[:4] + [_needle_display(c) for c in needle_columns(table)] + _cost_columns(table)


BASELINE_NOTE = "ranks in (): baselines, reference patterns evaluated beside the search's candidates"


def to_text(table: Sequence[Mapping[str, Any]]) -> str:
    """An aligned table for the terminal (a readable subset of the columns); baselines' ranks in
    parentheses, explained by a line under the table."""
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
    if any(r["role"] == BASELINE for r in table):
        lines.append(BASELINE_NOTE)
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(table: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub-flavoured markdown table: the text columns plus one column per task mean."""
    needles = [_needle_display(c) for c in needle_columns(table)]
    columns = DISPLAY[:4] + [_task_display(c) for c in task_columns(table)] + needles + _cost_columns(table)
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
    table order, then the searches, pretraining runs and fidelity studies), not the flat rows; pass
    rows to get rows."""
    return json.dumps(list(items), indent=2, allow_nan=False) + "\n"
