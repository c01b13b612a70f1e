"""Fewer proxy tasks: which of a multi-task proxy's tasks it could do without and still rank the same.

Each MAD task trains a proxy of its own and the score is the mean over tasks, equally weighted, so the
score of an evaluator that ran only a subset of the tasks is the mean of those tasks' scores: exactly
what that evaluator would give, at the same seed, with no training. A task left out saves its run (every
task of the default preset trains the same tokens, so a run is its share of the GPU time).

    task_subsets(tasks, reference, axes, agreement=0.95, bootstrap=2000, seed=0)

tasks: pattern -> {task: score}; reference: pattern -> the full proxy's score; axes: other rankings to
report each subset against (a rung's pattern -> minus its bits per byte). Every subset is tried (up to
MAX_EXHAUSTIVE tasks; leave-one-out rows only above that); the answer is the smallest whose Spearman against
the full proxy is at least `agreement` (the most agreeing one of that size), with its bootstrap interval,
beside each task left out alone. Higher is better everywhere (stats.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

from search.fidelity import stats

MAX_EXHAUSTIVE = 10  # 1,023 subsets: point estimates only, so this is cheap


def subset_score(tasks: Mapping[str, float], keep: Sequence[str]) -> float:
    """The score of an evaluator that runs only `keep`: the mean of those tasks' scores."""
    return sum(tasks[t] for t in keep) / len(keep)


def against(keep: Sequence[str], tasks: Mapping[str, Mapping[str, float]], axes: Mapping[str, Mapping[str, float]], *,
            bootstrap: int, seed: int) -> list[dict[str, Any]]:
    """The subset's ranking (pattern -> the mean of its `keep` tasks) against each axis, over the patterns both
    score (at least 3): Spearman and Kendall with intervals, and decision accuracy."""
    out = []
    for axis, by in axes.items():
        both = [p for p in tasks if p in by]
        if len(both) < 3:
            continue
        out.append({"y": axis, **stats.agreement([subset_score(tasks[p], keep) for p in both], [by[p] for p in both],
                                                 bootstrap=bootstrap, seed=seed)})
    return out


def task_subsets(tasks: Mapping[str, Mapping[str, float]], reference: Mapping[str, float],
                 axes: Mapping[str, Mapping[str, float]] | None = None, *, agreement: float = 0.95, bootstrap: int = 2000,
                 seed: int = 0) -> dict[str, Any] | None:
    """The smallest subset of tasks ranking as the full proxy does (see the module docstring), and each task
    left out alone; None where there is nothing to choose (fewer than 2 tasks or 3 patterns scored on all)."""
    names = sorted(set().union(*tasks.values()))  # a pattern without one of them is left out, not the task
    scored = {p: {n: float(tasks[p][n]) for n in names} for p in tasks if p in reference and set(names) <= set(tasks[p])}
    if len(names) < 2 or len(scored) < 3:
        return None
    ref = [reference[p] for p in scored]

    def agreeing(keep: tuple[str, ...]) -> float | None:
        return stats.spearman([subset_score(t, keep) for t in scored.values()], ref)

    smallest = None
    if len(names) <= MAX_EXHAUSTIVE:
        for k in range(1, len(names)):
            found = [(rho, keep) for keep in combinations(names, k) if (rho := agreeing(keep)) is not None and rho >= agreement]
            if found:
                smallest = list(max(found, key=lambda f: (f[0], [-names.index(t) for t in f[1]]))[1])
                break
    keeps = [[n for n in names if n != out] for out in names]
    if smallest is not None and smallest not in keeps:
        keeps.insert(0, smallest)
    all_axes = {"proxy": dict(reference), **(axes or {})}
    rows = [{"keep": keep, "left_out": [n for n in names if n not in keep], "runs": len(keep), "of": len(names),
             "correlations": against(keep, scored, all_axes, bootstrap=bootstrap, seed=seed)} for keep in keeps]
    return {"tasks": names, "n_patterns": len(scored), "agreement": agreement, "smallest": smallest, "rows": rows}


def report_lines(out: Mapping[str, Any]) -> list[str]:
    """The terminal lines of `task_subsets`' answer."""
    def spearman(row: Mapping[str, Any], axis: str) -> str:
        c = next((c for c in row["correlations"] if c["y"] == axis), None)
        if c is None or c["spearman"]["value"] is None:
            return "-"
        s = c["spearman"]
        return f"{s['value']:+.2f}" + (f" [{s['low']:+.2f}, {s['high']:+.2f}]" if s["low"] is not None else "") + f" (n={c['n']})"

    axes = list(dict.fromkeys(c["y"] for row in out["rows"] for c in row["correlations"]))
    lines = []
    if out["smallest"] is None:
        lines.append(f"  fewer tasks: no subset of the {len(out['tasks'])} ranks as the proxy does at Spearman >= "
                     f"{out['agreement']} (n={out['n_patterns']})")
    else:
        row = next(r for r in out["rows"] if r["keep"] == out["smallest"])
        lines.append(f"  fewer tasks: {', '.join(row['keep'])} ({row['runs']} of {row['of']} runs) rank as the proxy: "
                     + "; ".join(f"{axis} {spearman(row, axis)}" for axis in axes) + " (Spearman)")
    for row in out["rows"]:
        if len(row["left_out"]) == 1:
            lines.append(f"    without {row['left_out'][0]}: " + "; ".join(f"{axis} {spearman(row, axis)}" for axis in axes))
    for budget in out.get("budgets", []):
        lines.append(f"    at budget {budget['name']} on those tasks: "
                     + "; ".join(f"{axis} {spearman(budget, axis)}" for axis in axes))
    return lines
