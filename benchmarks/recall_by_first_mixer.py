"""Which candidates a MAD proxy lets solve recall: patterns with attention, grouped by their first token mixer.

Reads `composer-search` logs (each finished evaluation's line: `[n/N] PATTERN  score (recall 1.00 ... noisy 0.19
...)`) and, for each recall task in them, counts the patterns with attention (`*`) that reach >= 0.9, split by the
first mixing letter of the pattern (`M`, `*`, `W`, `G`; MLP and MoE layers mix no tokens). A pattern seen in several
logs counts once (its last line). Fisher's exact test (scipy) says whether the two largest groups differ.

    python benchmarks/recall_by_first_mixer.py benchmarks/results/issue17-2026-12-0*/**/search.log --out /tmp/r.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from scipy.stats import fisher_exact

MIXERS = "*WMG"  # token mixers; '-' (MLP) and 'E' (MoE) act per position
RECALL = ("recall", "fuzzy", "noisy")  # the recall tasks as the search's log names them (search.runner._short)
LINE = re.compile(r"\[\d+/\d+\] (?P<pattern>\S+)\s+[\d.]+ \((?P<tasks>[^)]*)\)")


def read_scores(paths: list[Path]) -> dict[str, dict[str, float]]:
    """pattern -> {short task name: accuracy} from the evaluation lines of the logs."""
    scores: dict[str, dict[str, float]] = {}
    for path in paths:
        for match in LINE.finditer(path.read_text(errors="replace")):
            fields = match["tasks"].split()
            scores[match["pattern"]] = {name: float(value) for name, value in zip(fields[::2], fields[1::2])}
    return scores


def first_mixer(pattern: str) -> str | None:
    return next((letter for letter in pattern if letter in MIXERS), None)


def tally(scores: dict[str, dict[str, float]], threshold: float = 0.9) -> dict[str, dict]:
    """For each recall task: per first mixer, patterns with attention and how many reach `threshold`; with the
    odds ratio and p-value of Fisher's exact test between the two largest groups."""
    tasks = sorted({task for accuracies in scores.values() for task in accuracies if task in RECALL})
    out = {}
    for task in tasks:
        groups: dict[str, list[int]] = {}
        for pattern, accuracies in scores.items():
            if "*" in pattern and task in accuracies:
                counts = groups.setdefault(first_mixer(pattern), [0, 0])
                counts[0] += accuracies[task] >= threshold
                counts[1] += 1
        row = {letter: {"reach": reach, "patterns": n} for letter, (reach, n) in sorted(groups.items())}
        top = sorted(groups, key=lambda letter: -groups[letter][1])[:2]
        if len(top) == 2:
            table = [[groups[g][0], groups[g][1] - groups[g][0]] for g in top]
            odds, p = fisher_exact(table)
            row["fisher"] = {"groups": top, "odds_ratio": float(odds), "p": float(p)}
        out[task] = row
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", type=Path)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.logs if not p.is_file()]
    if missing:
        sys.exit(f"recall_by_first_mixer.py: no such log: {missing[0]}")
    scores = read_scores(args.logs)
    if not scores:
        sys.exit("recall_by_first_mixer.py: no evaluation lines in the logs given (composer-search's `[n/N] PATTERN`)")
    result = {"patterns": len(scores), "threshold": args.threshold, "tasks": tally(scores, args.threshold)}
    print(f"{len(scores)} patterns; with attention, reaching >= {args.threshold} by first token mixer:\n")
    print("| task | first mixer | reach | of | share |\n| --- | --- | ---: | ---: | ---: |")
    for task, row in result["tasks"].items():
        for letter, g in row.items():
            if letter != "fisher":
                print(f"| {task} | `{letter}` | {g['reach']} | {g['patterns']} | {g['reach'] / g['patterns']:.0%} |")
        if "fisher" in row:
            f = row["fisher"]
            print(f"| {task} | Fisher, `{f['groups'][0]}` vs `{f['groups'][1]}` | odds {f['odds_ratio']:.1f} | "
                  f"| p {f['p']:.1e} |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
