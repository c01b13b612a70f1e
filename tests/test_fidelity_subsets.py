"""Fewer proxy tasks (search/fidelity/subsets.py) on hand-made scores, against scipy and a brute force; and a
fidelity study's rung guard across an upgrade that added a setting."""

import json
from itertools import combinations

import pytest
import scipy.stats

from composer.errors import ConfigError
from search.fidelity import subsets
from search.fidelity.study import _guard_rungs, fidelity_config_from_mapping

# Eight patterns: `recall` saturates (1.0 everywhere), `copy` and `compress` order them, `noise` does not.
TASKS = {
    "p0": {"recall": 1.0, "copy": 0.10, "compress": 0.20, "noise": 0.5},
    "p1": {"recall": 1.0, "copy": 0.30, "compress": 0.25, "noise": 0.1},
    "p2": {"recall": 1.0, "copy": 0.20, "compress": 0.31, "noise": 0.9},
    "p3": {"recall": 1.0, "copy": 0.50, "compress": 0.30, "noise": 0.3},
    "p4": {"recall": 1.0, "copy": 0.45, "compress": 0.45, "noise": 0.7},
    "p5": {"recall": 1.0, "copy": 0.70, "compress": 0.40, "noise": 0.2},
    "p6": {"recall": 1.0, "copy": 0.65, "compress": 0.60, "noise": 0.8},
    "p7": {"recall": 1.0, "copy": 0.90, "compress": 0.55, "noise": 0.4},
}
FULL = {p: sum(t.values()) / len(t) for p, t in TASKS.items()}


def spearman(keep, patterns=TASKS, reference=FULL):
    if all(TASKS[p][t] == 1.0 for p in patterns for t in keep):
        return float("nan")  # the saturated task alone orders nothing
    return scipy.stats.spearmanr([subsets.subset_score(TASKS[p], keep) for p in patterns],
                                 [reference[p] for p in patterns]).statistic


def test_the_smallest_agreeing_subset_is_the_brute_force_answer_and_its_figures_are_scipy_s():
    rung = {f"p{i}": v for i, v in enumerate([0.1, 0.3, 0.2, 0.5, 0.4, 0.7, 0.6, 0.8])}  # a rung on six of them
    rung.pop("p0"), rung.pop("p1")
    out = subsets.task_subsets(TASKS, FULL, {"r1": rung}, agreement=0.95, bootstrap=200)
    assert out["tasks"] == ["compress", "copy", "noise", "recall"] and out["n_patterns"] == 8
    for k in range(1, 4):  # the brute force: the first size with an agreeing subset, its most agreeing one
        found = [(spearman(keep), keep) for keep in combinations(out["tasks"], k) if spearman(keep) >= 0.95]
        if found:
            assert out["smallest"] == list(max(found)[1])
            break
    row = out["rows"][0]
    assert row["keep"] == out["smallest"] and row["runs"] == len(out["smallest"]) and row["of"] == 4
    proxy, r1 = row["correlations"]
    assert proxy["y"] == "proxy" and proxy["n"] == 8
    assert proxy["spearman"]["value"] == pytest.approx(spearman(row["keep"]))
    assert r1["y"] == "r1" and r1["n"] == 6
    assert r1["spearman"]["value"] == pytest.approx(scipy.stats.spearmanr(
        [subsets.subset_score(TASKS[p], row["keep"]) for p in rung], list(rung.values())).statistic)
    # each task left out alone; leaving out the saturated one changes no ranking at all
    left_out = {r["left_out"][0]: r for r in out["rows"] if len(r["left_out"]) == 1}
    assert set(left_out) == set(out["tasks"])
    assert left_out["recall"]["correlations"][0]["spearman"] == pytest.approx({"value": 1.0, "low": 1.0, "high": 1.0, "n": 8})
    assert left_out["noise"]["correlations"][0]["spearman"]["value"] == pytest.approx(spearman(["compress", "copy", "recall"]))


def test_no_subset_agrees_when_every_task_carries_its_own_ranking():
    tasks = {f"p{i}": {"a": float(i), "b": float((3 * i) % 7), "c": float((5 * i) % 7)} for i in range(7)}
    full = {p: sum(t.values()) / 3 for p, t in tasks.items()}
    out = subsets.task_subsets(tasks, full, bootstrap=50, agreement=0.999)
    assert out["smallest"] is None and [len(r["keep"]) for r in out["rows"]] == [2, 2, 2]
    assert "fewer tasks: no subset of the 3 ranks as the proxy does at Spearman >= 0.999 (n=7)" in subsets.report_lines(out)[0]


def test_a_pattern_scored_on_fewer_tasks_is_left_out_not_the_task():
    tasks = {**TASKS, "p8": {"copy": 0.2, "compress": 0.3}}  # as from an evaluator of two tasks
    out = subsets.task_subsets(tasks, {**FULL, "p8": 0.25}, bootstrap=50)
    assert out["tasks"] == ["compress", "copy", "noise", "recall"] and out["n_patterns"] == 8


def test_nothing_to_choose_from_one_task_or_two_patterns():
    assert subsets.task_subsets({p: {"-bpb": FULL[p]} for p in TASKS}, FULL) is None  # the lm evaluator
    assert subsets.task_subsets({p: TASKS[p] for p in ("p0", "p1")}, FULL) is None


def test_the_report_names_the_subset_and_each_task_left_out():
    out = subsets.task_subsets(TASKS, FULL, bootstrap=100)
    out["budgets"] = [{"name": "half", "keep": out["smallest"], "correlations": subsets.against(
        out["smallest"], TASKS, {"proxy": FULL}, bootstrap=100, seed=0)}]
    lines = subsets.report_lines(out)
    assert lines[0].startswith(f"  fewer tasks: {', '.join(out['smallest'])} ({len(out['smallest'])} of 4 runs) rank as the proxy: proxy +")
    assert "    without recall: proxy +1.00 [+1.00, +1.00] (n=8)" in lines
    assert lines[-1].startswith("    at budget half on those tasks: proxy +")


def _rung_config(**trainer):
    return fidelity_config_from_mapping({"name": "f", "patterns": ["*-*-", "M-M-", "*-M-"], "random": 0,
                                         "rungs": [{"name": "r1", "d_model": 32, "n_blocks": 2}], "trainer": trainer})


def test_a_rung_trained_before_a_setting_existed_stays_readable_at_that_setting_s_default(tmp_path):
    _guard_rungs(_rung_config(lr=1e-3), tmp_path)  # writes rungs/r1/rung.json
    path = tmp_path / "rungs" / "r1" / "rung.json"
    saved = json.loads(path.read_text())
    assert saved["trainer.lr"] == 1e-3 and saved["trainer.profile_steps"] == 0
    del saved["trainer.profile_steps"]  # as a study from before composer had the setting
    path.write_text(json.dumps(saved))
    _guard_rungs(_rung_config(lr=1e-3), tmp_path)  # at its default: the same training
    with pytest.raises(ConfigError, match=r"was trained with trainer.profile_steps=None, this run has 3"):
        _guard_rungs(_rung_config(lr=1e-3, profile_steps=3), tmp_path)
    with pytest.raises(ConfigError, match=r"was trained with trainer.lr=0.001, this run has 0.002"):
        _guard_rungs(_rung_config(lr=2e-3), tmp_path)


def test_a_study_reads_its_subsets_from_the_search_its_patterns_and_its_other_budgets():
    """fewer_tasks: the search's results and the study's points together, rungs over the study's patterns,
    and the smallest subset at each other budget of the proxy that scored its tasks."""
    from search.fidelity.rungs import RungConfig
    from search.fidelity.study import fewer_tasks

    known = {p: {"values": [FULL[p]], "tasks": TASKS[p]} for p in ("p0", "p1", "p2", "p3", "p4")}
    points = {p: {"proxy": FULL[p], "tasks": TASKS[p], "rungs": {"r1": {"mean": 2.0 - FULL[p]}}}
              for p in ("p4", "p5", "p6", "p7")}
    half = {p: {k: v * 0.9 for k, v in TASKS[p].items()} for p in points}
    variants = {"half": {"scores": {}, "tasks": half}, "lm": {"scores": {}, "tasks": {}}}
    out = fewer_tasks(points, known, variants, (RungConfig(name="r1", d_model=32, n_blocks=2),), bootstrap=100, seed=0)
    assert out["n_patterns"] == 8  # p4 in both, counted once
    (budget,) = out["budgets"]  # the lm variant recorded no tasks: none
    assert budget["name"] == "half" and budget["keep"] == out["smallest"]
    proxy, r1 = budget["correlations"]
    assert (proxy["y"], proxy["n"], r1["y"], r1["n"]) == ("proxy", 4, "r1", 4)
    assert proxy["spearman"]["value"] == pytest.approx(spearman(out["smallest"], patterns=list(points)))
    row = out["rows"][0]
    assert [c["n"] for c in row["correlations"]] == [8, 4]  # the rung: the study's patterns only
