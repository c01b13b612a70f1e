"""Baselines in every search and `strategy=list`, as a user runs them: real subprocesses, real SQLite.

Tiny 3-layer proxies on two tiny MAD tasks (tests/test_search_cli.py's settings, ~1 s a trial)."""

from __future__ import annotations

import json
from collections import Counter

import optuna
import pytest

from search.aggregate import summarise
from search.runner import SearchConfig, search_config_from_mapping
from tests.conftest import run_cli
from tests.test_search_cli import evaluated, load, search_args

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_the_default_baseline_is_the_llama_layout_of_the_searched_length():
    assert SearchConfig(name="s").baselines == ("*-*-*-",)
    assert search_config_from_mapping({"name": "s", "space": {"length": 5}}).baselines == ("*-*-*",)
    # incremental: the patterns of the last round are start + rounds × length long
    grown = search_config_from_mapping({"name": "s", "space": {"length": 2},
                                        "strategy": {"name": "end_layer", "rounds": 3, "start": "M-"}})
    assert grown.baselines == ("*-*-*-*-",)
    assert search_config_from_mapping({"name": "s", "space": {"alphabet": "*M"}}).baselines == ()  # no MLP letter
    assert search_config_from_mapping({"name": "s", "baselines": []}).baselines == ()


@pytest.mark.parametrize("baselines, message", [
    ("['*-*-']", "baselines[0] '*-*-' has 4 layers; the search's patterns have 3"),
    ("['*-*','-*Q']", "baselines[1]: unknown primitive 'Q' at position 2"),
])
def test_a_baseline_that_does_not_fit_the_space_is_refused_in_one_line(tmp_path, baselines, message):
    proc = run_cli(*search_args(tmp_path, f"baselines={baselines}"))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert message in proc.stderr


def test_a_baseline_outside_the_alphabet_is_refused_before_any_training(tmp_path):
    proc = run_cli(*search_args(tmp_path, "space.alphabet=M-", "baselines=['*-M']"))
    assert proc.returncode == 2 and "baselines[0] '*-M': '*' at position 0 is not in the space's alphabet 'M-'" in proc.stderr
    assert not (tmp_path / "t" / "study.db").exists()


def test_baselines_are_scored_like_candidates_marked_and_never_aggregated(tmp_path):
    # The list holds one baseline as a candidate would; the other baseline only the search evaluates.
    settings = ["strategy=list", "strategy.patterns=['*-*','M-M','-*M','**M']", "baselines=['*-*','--*']",
                "evaluator.top_k=1", "evaluator.reeval_seeds=[1]"]
    proc = run_cli(*search_args(tmp_path, *settings), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "t" / "result.json").read_text())

    # never aggregated: the top group, the aggregates, the best single and the top list leave them out
    assert {"*-*", "--*"}.isdisjoint(result["top_group"] + [r["pattern"] for r in result["top"]])
    assert result["best_single"] != "*-*" and sorted(r["pattern"] for r in result["top"]) == ["**M", "-*M", "M-M"]
    study = load(tmp_path)
    scores = {t.user_attrs["pattern"]: t.values[0] for t in study.get_trials() if t.user_attrs.get("role") == "evaluate"}
    assert result["aggregates"] == summarise({p: s for p, s in scores.items() if p != "*-*"}).by_method

    # marked in the study: the search's own trial of '*-*', the separate evaluation of '--*', the re-evaluation
    assert study.user_attrs["baselines"] == ["*-*", "--*"]
    assert [t.user_attrs.get("baseline") for t in study.get_trials() if t.user_attrs.get("pattern") == "*-*"] == [True]
    extra = load(tmp_path, study="t.baselines")
    assert evaluated(extra) == ["--*"] and extra.get_trials()[0].user_attrs["baseline"] is True
    reeval = load(tmp_path, study="t.seed1")
    assert {t.user_attrs["pattern"] for t in reeval.get_trials() if t.user_attrs.get("baseline")} == {"*-*", "--*"}

    # in the result: each baseline over both seeds, and the margins of the aggregate and the best single
    by = {b["pattern"]: b for b in result["baselines"]}
    assert set(by) == {"*-*", "--*"}
    for b in by.values():
        assert sorted(b["seeds"]) == ["0", "1"] and b["score"]["n"] == 2
        entry = next(e for e in result["entries"] if e["role"] == "aggregate")
        mean = sum(s["score"] for s in entry["seeds"].values()) / len(entry["seeds"])
        assert b["margins"]["aggregate"]["margin"] == pytest.approx(mean - b["score"]["mean"])
    assert "baseline     *-*" in proc.stdout and "baseline     --*" in proc.stdout
    assert ("beats it by" in proc.stdout or "trails it by" in proc.stdout) and "seed spreads" in proc.stdout

    # in the leaderboard: one record per baseline, role "baseline"
    lines = [json.loads(line) for line in (tmp_path / "leaderboard.jsonl").read_text().splitlines()]
    assert sorted(r["pattern"] for r in lines if r.get("role") == "baseline") == ["*-*", "--*"]


def test_the_list_strategy_scores_exactly_its_list_once_with_two_workers(tmp_path):
    shortlist = tmp_path / "shortlist.txt"
    shortlist.write_text("# a shortlist\n*-M\n\nM-*   # a comment\n-M*\n*-M\n")  # the repeat counts once
    proc = run_cli(*search_args(tmp_path, "strategy=list", f"strategy.patterns={shortlist}", "workers=2",
                                "n_trials=50", "baselines=[]"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = evaluated(load(tmp_path))
    assert sorted(runs) == ["*-M", "-M*", "M-*"] and max(Counter(runs).values()) == 1  # n_trials is the list
    assert json.loads((tmp_path / "t" / "result.json").read_text())["n_evaluations"] == 3


@pytest.mark.parametrize("setting, message", [
    ("strategy.patterns=['*-M','M-Q']", "strategy.patterns[1]: unknown primitive 'Q' at position 2"),
    ("strategy.patterns=['*-M','M-*-']", "strategy.patterns[1] 'M-*-' has 4 layers"),
    ("strategy.patterns=[]", "strategy.patterns: no patterns given"),
    ("strategy.patterns=/no/such/list.txt", "strategy.patterns: no such pattern file: /no/such/list.txt"),
])
def test_a_bad_list_is_refused_in_one_line(tmp_path, setting, message):
    proc = run_cli(*search_args(tmp_path, "strategy=list", setting))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert message in proc.stderr


def test_a_bad_line_of_a_pattern_file_is_named(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("*-M\n\nM-x\n")
    proc = run_cli(*search_args(tmp_path, "strategy=list", f"strategy.patterns={bad}"))
    assert proc.returncode == 2 and f"{bad} line 3: unknown primitive 'x' at position 2" in proc.stderr


def test_patterns_need_the_list_strategy(tmp_path):
    proc = run_cli(*search_args(tmp_path, "+strategy.patterns=['*-M']"))
    assert proc.returncode == 2 and "strategy.patterns is for strategy=list" in proc.stderr
