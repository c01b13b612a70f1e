"""`composer-bench`: measured training, prefill and decode speed of a pattern at a preset size (or of an
exported model), against the Llama layout of the same size, on the device at hand.

    composer-bench pattern='M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-' preset=1b
    composer-bench pattern='**----' grow=fit preset=1b          # a searched pattern, grown first
    composer-bench export=outputs/pretrain/demo/model           # an exported model at its own width
    composer-bench pattern='*MW-GE' preset=tiny bench.contexts=[64,128] bench.max_batch=4   # on a CPU

composer/evals/bench.py measures; this command prints a short table, writes bench.json into the run folder
and appends the figures to the leaderboard (`leaderboard=`; null: none), where the pattern's row gets them
beside its analytic costs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra

from composer.apps.common import hydra_job, run_hydra
from composer.errors import ConfigError

PROG = "composer-bench"


def subjects_from_config(cfg: dict[str, Any]) -> tuple[list, dict[str, Any]]:
    """The model to measure and its Llama reference (composer.evals.bench.Subject), and where they come
    from: {"size", "source_pattern", "grow", "export"}. Every input is checked here, before anything runs."""
    from composer.evals.bench import Subject, bench_preset, llama_layout
    from composer.pattern import parse_pattern
    from scaling.presets import preset_model_config, reference_pattern

    pattern, export, grow = cfg["pattern"], cfg["export"], cfg["grow"]
    if (pattern is None) == (export is None):
        raise ConfigError("give one of pattern=<pattern> (at preset=<size>) or export=<folder written by "
                          f"composer-export>, got {'both' if pattern is not None else 'neither'}")
    if export is not None:
        from composer.evals.export import WEIGHTS, model_config_from_export, read_config

        if grow is not None:
            raise ConfigError(f"grow={grow} grows a pattern; an export is measured as it is")
        folder = Path(export).expanduser().resolve()
        model = model_config_from_export(read_config(folder))
        if not (folder / WEIGHTS).is_file():
            raise ConfigError(f"no exported model at {folder}: {WEIGHTS} is missing")
        subjects = [Subject(role="model", model=model, export=folder), Subject(role="llama", model=llama_layout(model))]
        return subjects, {"size": f"export:{folder}", "source_pattern": model.pattern, "grow": None,
                          "export": str(folder)}
    preset = bench_preset(cfg["preset"])
    source = parse_pattern(str(pattern))
    measured = source
    if grow is not None:
        from scaling.extrapolate import extrapolate

        measured = extrapolate(source, target=preset, method=grow).pattern
    subjects = [Subject(role="model", model=preset_model_config(preset, measured)),
                Subject(role="llama", model=preset_model_config(preset, reference_pattern(preset)))]
    return subjects, {"size": preset.name, "source_pattern": source, "grow": grow, "export": None}


CPU_SIZE = 50_000_000  # parameters above which a CPU run is hours, not minutes


def _large_on_cpu(subjects: list, bench_cfg: Any) -> str | None:
    """A warning where a preset sized for a GPU is about to be measured on a CPU."""
    from composer.evals.bench import resolve_device
    from scaling.accounting import count_parameters

    n = max(count_parameters(s.model)["n_params"] for s in subjects)
    if resolve_device(bench_cfg.device).type != "cpu" or n <= CPU_SIZE:
        return None
    return (f"measuring {n / 1e9:.2f}B-parameter models on the CPU: training steps of {bench_cfg.train_batch} x "
            f"{bench_cfg.train_seq_len} tokens and prefills of up to {max(bench_cfg.contexts):,} tokens take hours here; "
            "preset=tiny (with bench.contexts=[64,128]) is the CPU's size")


def bench_from_config(cfg: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The `composer-bench` job: measure, print the table, write bench.json, append the leaderboard record."""
    from composer.config import from_mapping
    from composer.evals.bench import BenchConfig, run_bench
    from composer.records import write_json

    bench_cfg = from_mapping(BenchConfig, cfg["bench"], where="bench")
    subjects, source = subjects_from_config(cfg)
    if (note := _large_on_cpu(subjects, bench_cfg)) is not None:
        logging.getLogger(PROG).warning(note)
    result = run_bench(subjects, bench_cfg)
    result = {**result, "pattern": subjects[0].model.pattern, "reference_pattern": subjects[1].model.pattern,
              **source, "run_dir": str(run_dir)}
    write_json(run_dir / "bench.json", result)
    if cfg["leaderboard"]:
        from search.leaderboard.records import bench_record
        from search.leaderboard.store import append

        append(bench_record(result, run_dir=str(run_dir)), cfg["leaderboard"])
    print(bench_table(result, run_dir))
    return result


def bench_table(r: dict[str, Any], run_dir: Path) -> str:
    """The short table: each figure for the model and the Llama layout, and their ratio."""
    from search.leaderboard.formats import format_bytes, format_context, format_count

    model, llama, ratio = r["figures"]["model"], r["figures"]["llama"], r["ratios"]
    checks = r["results"]

    def num(v: Any, fmt: str = ",.0f") -> str:
        return "oom" if v is None else format(v, fmt)

    rows = [("parameters", format_count(model["n_params"]), format_count(llama["n_params"]), ratio["n_params"]),
            ("train tokens/s", num(model["train_tokens_per_s"]), num(llama["train_tokens_per_s"]),
             ratio["train_tokens_per_s"]),
            ("train MFU", "-" if model["mfu"] is None else f"{model['mfu']:.1%}",
             "-" if llama["mfu"] is None else f"{llama['mfu']:.1%}", ratio["mfu"])]
    for c in map(str, r["config"]["contexts"]):
        at = f"@{format_context(int(c))}"
        rows += [
            (f"prefill tokens/s {at}", num(model["prefill_tokens_per_s"][c]), num(llama["prefill_tokens_per_s"][c]),
             ratio["prefill_tokens_per_s"][c]),
            (f"decode tokens/s {at} b1", num(model["decode_b1_tokens_per_s"][c]),
             num(llama["decode_b1_tokens_per_s"][c]), ratio["decode_b1_tokens_per_s"][c]),
            (f"memory {at} b1", _bytes(model["decode_b1_memory_bytes"][c], format_bytes),
             _bytes(llama["decode_b1_memory_bytes"][c], format_bytes), ratio["decode_b1_memory_bytes"][c]),
            (f"decode tokens/s {at} max", num(model["decode_tokens_per_s"][c]), num(llama["decode_tokens_per_s"][c]),
             ratio["decode_tokens_per_s"][c]),
            (f"decode batch {at} max", num(model["decode_batch"][c], "d"), num(llama["decode_batch"][c], "d"),
             ratio["decode_batch"][c]),
            (f"memory {at} max", _bytes(model["decode_memory_bytes"][c], format_bytes),
             _bytes(llama["decode_memory_bytes"][c], format_bytes), ratio["decode_memory_bytes"][c]),
        ]
    header = ("", "model", "Llama", "model/Llama")
    cells = [header] + [(name, a, b, "-" if q is None else f"{q:.2f}") for name, a, b, q in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    graph = "CUDA graphs" if r["decode_graph"] else f"eager ({r['decode_graph_reason']})"
    diffs = ", ".join(f"{role} {checks[role]['check']['relative']:.1e}" for role in ("model", "llama"))
    return "\n".join([
        f"{r['pattern']!r} ({r['size']}) against the Llama layout {r['reference_pattern']!r} on {r['device']}, "
        f"{r['dtype']}; decode {graph}",
        *lines,
        f"decode check: stateful logits within {diffs} of the full forward's (relative; tolerance {r['tolerance']:g})",
        f"wrote {run_dir / 'bench.json'}",
    ])


def _bytes(value: float | None, fmt) -> str:
    return "oom" if value is None else fmt(value)


@hydra.main(config_path="pkg://configs", config_name="bench", version_base=None)
def _app(cfg) -> None:
    hydra_job(PROG, cfg, bench_from_config)


def main(argv: list[str] | None = None) -> int:
    return run_hydra(_app, PROG, argv)


if __name__ == "__main__":
    raise SystemExit(main())
