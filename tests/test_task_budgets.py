"""benchmarks/task_budgets.py on real SQLite studies written by the search's own trial loop: each task at its
own budget, read from runs already scored."""

import json
import subprocess
import sys
from pathlib import Path

import optuna

from search.study import open_study, run_trials
from tests.conftest import cli_env

SCRIPT = Path(__file__).parents[1] / "benchmarks/task_budgets.py"
PATTERNS = ["*-*-", "M-M-", "*M*M", "MM--", "-*-*", "M*-M", "**MM", "-MM*"]


def _study(path: Path, tasks: dict[str, list[float]]) -> Path:
    """A study in `path/study.db` holding one evaluation per pattern: task -> its score per pattern."""
    study = open_study(name="s", storage=None, run_dir=path, sampler=optuna.samplers.RandomSampler(seed=0))
    queue = iter(PATTERNS)

    def evaluate(pattern: str) -> dict:
        i = PATTERNS.index(pattern)
        scores = {task: values[i] for task, values in tasks.items()}
        return {"score": sum(scores.values()) / len(scores), "tasks": scores, "seed": 0}

    run_trials(study, propose=lambda trial: next(queue), evaluate=evaluate, n_trials=len(PATTERNS))
    return path / "study.db"


def test_mixes_are_read_from_the_studies_cheapest_first_with_flat_tasks_named(tmp_path):
    # the proxy: A and B rank the patterns, C barely varies; the reference is the mean of all three
    full = _study(tmp_path / "full", {"A": [0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4],
                                      "B": [0.5, 0.1, 0.45, 0.15, 0.4, 0.2, 0.35, 0.25],
                                      "C": [0.30, 0.31, 0.30, 0.31, 0.30, 0.31, 0.30, 0.31]})
    # A at a quarter still ranks as at full; B at a quarter has learned nothing (flat)
    quarter = _study(tmp_path / "quarter", {"A": [0.85, 0.05, 0.75, 0.15, 0.65, 0.25, 0.55, 0.35],
                                            "B": [0.1] * 8})
    out = tmp_path / "mix.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--proxy", str(full), "--budget", f"quarter=0.25:{quarter}",
                           "--tasks", "A,B", "--bootstrap", "200", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=cli_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["n_patterns"] == 8
    rows = {(r["task"], r["budget"]): r for r in result["per_task"]}
    assert rows[("A", "quarter")]["spearman_own_full"] == 1.0 and rows[("B", "quarter")]["spearman_own_full"] is None
    costs = [m["cost"] for m in result["mixes"]]
    assert costs == sorted(costs) and costs[0] == 0.25  # both at a quarter: B flat, A alone ranks as the proxy
    cheapest = result["mixes"][0]
    assert cheapest["mix"] == {"A": "quarter", "B": "quarter"} and cheapest["flat"] == ["B"]
    assert {"A": "quarter", "B": "full"} in [m["mix"] for m in result["mixes"]]
    assert all(m["spearman"]["value"] >= 0.95 for m in result["mixes"])
    assert "in effect left out: B" in proc.stdout


def test_a_missing_database_is_one_line_and_nothing_is_written(tmp_path):
    out = tmp_path / "mix.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--proxy", str(tmp_path / "none.db"), "--tasks", "A",
                           "--out", str(out)], capture_output=True, text=True, timeout=300, env=cli_env())
    assert proc.returncode == 1 and proc.stderr.strip() == f"task_budgets: no study database at {tmp_path / 'none.db'}"
    assert not out.exists()
