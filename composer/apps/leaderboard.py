"""`composer-leaderboard`: print or export the architectures found by composer-search.

    composer-leaderboard                          # the table of outputs/leaderboard.jsonl, then the
                                                  # pretraining runs and the rank-fidelity studies
    composer-leaderboard --format md --top 10     # or csv, json
    composer-leaderboard --html report.html       # the HTML report
    composer-leaderboard --html report.html --pareto-x decode   # its Pareto plot against measured decode speed
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from composer.apps.common import run_command
from composer.errors import ConfigError
from search.leaderboard.formats import (
    FORMATS,
    bench_text,
    fidelity_text,
    full_runs_text,
    rows,
    sort_key,
    to_csv,
    to_json,
    to_markdown,
    to_text,
)
from search.leaderboard.store import DEFAULT_PATH, load

PROG = "composer-leaderboard"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Show the architectures found by composer-search.")
    parser.add_argument("--file", type=Path, default=DEFAULT_PATH, help=f"leaderboard file (default: {DEFAULT_PATH})")
    parser.add_argument("--format", choices=FORMATS, help="output format (default: text)")
    parser.add_argument("--output", type=Path, help="write the table to this file instead of stdout")
    parser.add_argument("--html", type=Path, help="write the HTML report to this file")
    parser.add_argument("--pareto-x", choices=("state", "decode"), default="state",
                        help="the HTML report's Pareto cost axis: state (inference state per token at 1B, the "
                             "default) or decode (composer-bench's measured decode tokens/s)")
    parser.add_argument("--search", help="only this search's architectures")
    parser.add_argument("--top", type=int, help="only the N best architectures")
    return parser


def _select(records: list[dict[str, Any]], *, search: str | None, top: int | None) -> list[dict[str, Any]]:
    """The records to show: one search's (if named), the `top` best architectures, then the other records
    (searches, pretraining runs, fidelity studies, and every composer-bench run: they belong to patterns,
    not to searches)."""
    if search is not None:
        known = sorted({r["search"] for r in records if isinstance(r.get("search"), str)})
        if search not in known:
            raise ConfigError(f"unknown search {search!r} (known searches: {', '.join(known) or 'none'})")
        records = [r for r in records if r.get("search") == search or r["kind"] == "bench"]
    if top is not None and top < 1:
        raise ConfigError(f"--top must be a positive integer, got {top}")
    archs = sorted((r for r in records if r["kind"] == "architecture"), key=sort_key)[:top]
    return archs + [r for r in records if r["kind"] != "architecture"]


def _render(records: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return to_json(records)
    table = rows(records)
    out = {"text": to_text, "csv": to_csv, "md": to_markdown}[fmt](table)
    return out + full_runs_text(records) + fidelity_text(records) + bench_text(records) if fmt == "text" else out


def _show(args: argparse.Namespace) -> None:
    if not args.file.is_file():
        raise ConfigError(f"no leaderboard at {args.file} (run composer-search first)")
    records = _select(load(args.file), search=args.search, top=args.top)
    if args.html is not None:
        from search.leaderboard import html

        html.write(records, args.html, pareto_x=args.pareto_x)
        print(args.html)
    if args.html is None or args.format is not None or args.output is not None:
        text = _render(records, args.format or "text")
        if args.output is not None:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(text, encoding="utf-8")
            print(args.output)
        else:
            sys.stdout.write(text)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command(PROG, lambda: _show(args), also=(OSError,))


if __name__ == "__main__":
    sys.exit(main())
