"""Each task at its own budget: which mixes of cheaper per-task budgets still rank as the proxy does (issue 17).

A MAD evaluation's score is the mean of its tasks' scores, each from a proxy trained on that task alone, so an
evaluator that trains task A at half its tokens and task B at all of them scores a pattern exactly as the mean of
A's score at half and B's at full, at the same seed: every mix is read from runs already trained, as
`composer-fidelity`'s "fewer tasks" reads task subsets. Inputs are optuna study databases of evaluations (the
fidelity study's proxy, and its `proxies` budgets, each training some tasks at a fraction of the tokens).

    python benchmarks/task_budgets.py --proxy benchmarks/results/issue17-2026-12-05/budget/study.db \
        --proxy benchmarks/results/issue15-2026-12-03/search/study.db \
        --budget half=0.5:benchmarks/results/issue17-2026-12-05/budget/proxies/half/study.db ... \
        --tasks noisy_in_context_recall,selective_copying,compression --out /tmp/mix.json

--proxy: the reference (every task at full tokens; several databases are read as one, the first result of a
pattern counting). The reference ranking is the mean over all the proxy's tasks; a mix keeps `--tasks`, each at
full tokens or at one budget that trained it. Cost is the mix's tokens over those of `--tasks` at full (a run's time
follows its tokens). Printed: every task's ranking at each budget against its own at full and its spread across
patterns (a budget where a task does not learn scores every pattern alike: keeping it there is leaving it out), then
every mix reaching `--agreement` (Spearman) with its bootstrap interval, cheapest first, naming the tasks it keeps at a
budget where they are flat (spread under 5% of their spread at full).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

import optuna

from search.fidelity import stats
from search.study import completed_results

FULL = "full"
FLAT = 0.05  # a task at a budget whose spread across patterns is below this share of its spread at full learns nothing there


def read_tasks(paths: list[Path], seed: int) -> dict[str, dict[str, float]]:
    """pattern -> {task: score} of the evaluations at `seed` in every study of these databases (first one wins)."""
    out: dict[str, dict[str, float]] = {}
    for path in paths:
        if not path.is_file():
            sys.exit(f"task_budgets: no study database at {path}")
        storage = f"sqlite:///{path}"
        for summary in optuna.get_all_study_summaries(storage):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            for pattern, result in completed_results(study).items():
                if result.get("seed", 0) == seed and result.get("tasks"):
                    out.setdefault(pattern, dict(result["tasks"]))
    return out


def mixes(full: dict[str, dict[str, float]], budgets: dict[str, tuple[float, dict[str, dict[str, float]]]],
          tasks: list[str], *, agreement: float, bootstrap: int, seed: int) -> dict:
    """Per-task rows and every mix reaching `agreement`, over the patterns every budget scored."""
    patterns = sorted(p for p in full if all(p in b for _, b in budgets.values()) and set(tasks) <= set(full[p]))
    if len(patterns) < 4:
        sys.exit(f"task_budgets: {len(patterns)} patterns scored at every budget; at least 4 are needed")
    reference = [statistics.fmean(full[p].values()) for p in patterns]
    levels = {FULL: (1.0, full), **budgets}
    per_task = []
    options = {}  # task -> the budgets that trained it
    for task in tasks:
        options[task] = [name for name, (_, scores) in levels.items() if all(task in scores[p] for p in patterns)]
        own = [full[p][task] for p in patterns]
        for name in options[task]:
            values = [levels[name][1][p][task] for p in patterns]
            per_task.append({"task": task, "budget": name, "spread": statistics.pstdev(values),
                             "mean": statistics.fmean(values), "spearman_own_full": stats.spearman(values, own)})
    spread = {(r["task"], r["budget"]): r["spread"] for r in per_task}
    flat = {key for key, s in spread.items() if s < FLAT * spread[(key[0], FULL)]}
    found = []
    for combo in itertools.product(*(options[t] for t in tasks)):
        scores = [statistics.fmean(levels[b][1][p][t] for t, b in zip(tasks, combo)) for p in patterns]
        rho = stats.spearman(scores, reference)
        if rho is not None and rho >= agreement:
            found.append({"mix": dict(zip(tasks, combo)), "cost": sum(levels[b][0] for b in combo) / len(tasks),
                          "flat": [t for t, b in zip(tasks, combo) if (t, b) in flat],
                          **stats.agreement(scores, reference, bootstrap=bootstrap, seed=seed)})
    found.sort(key=lambda m: (m["cost"], -m["spearman"]["value"]))
    return {"n_patterns": len(patterns), "agreement": agreement, "tasks": tasks, "per_task": per_task, "mixes": found}


def _budget(text: str) -> tuple[str, float, list[Path]]:
    try:
        name, rest = text.split("=", 1)
        fraction, paths = rest.split(":", 1)
        return name, float(fraction), [Path(p) for p in paths.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--budget {text!r}: expected NAME=FRACTION:DB[,DB...]") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proxy", type=Path, action="append", required=True, help="the full budget's databases")
    parser.add_argument("--budget", type=_budget, action="append", default=[], help="NAME=FRACTION:DB[,DB...]")
    parser.add_argument("--tasks", required=True, help="the tasks a mix keeps, comma-separated")
    parser.add_argument("--agreement", type=float, default=0.95)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0, help="the evaluations' seed")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    full = read_tasks(args.proxy, args.seed)
    budgets = {name: (fraction, read_tasks(paths, args.seed)) for name, fraction, paths in args.budget}
    out = mixes(full, budgets, args.tasks.split(","), agreement=args.agreement, bootstrap=args.bootstrap,
                seed=args.seed)
    print(f"{out['n_patterns']} patterns; each task at each budget: spread across patterns, Spearman against its own "
          "ranking at full tokens")
    for row in out["per_task"]:
        rho = row["spearman_own_full"]
        print(f"  {row['task']:<26} {row['budget']:<10} spread {row['spread']:.4f}  mean {row['mean']:.3f}  "
              f"{'constant' if rho is None else f'{rho:+.2f}'}")
    print(f"mixes ranking as the proxy (Spearman >= {args.agreement}), cheapest first:")
    for m in out["mixes"]:
        s = m["spearman"]
        print(f"  cost {m['cost']:.3f}  Spearman {s['value']:+.3f} [{s['low']:+.2f}, {s['high']:+.2f}]  "
              f"decisions {m['decision_accuracy']:.0%}  {' '.join(f'{t}={b}' for t, b in m['mix'].items())}"
              + (f"  (flat, in effect left out: {', '.join(m['flat'])})" if m["flat"] else ""))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
