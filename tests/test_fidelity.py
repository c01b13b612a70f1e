"""`composer-fidelity` as a user runs it: real subprocesses, real SQLite, real training on a small text
corpus (tests/test_evaluator_lm.py's), tiny proxies and rungs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import scipy.stats

from search.fidelity.study import _jobs, analyse, fidelity_config_from_mapping, report
from search.fidelity.rungs import RungConfig
from tests.conftest import cli_env
from tests.test_evaluator_lm import write_corpus
from tests.test_search_cli import TINY_SEARCH


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("fidelity") / "corpus")


def rung_args(corpus: Path) -> list[str]:
    return [f"data.path={corpus}", "data.val_tokens=4096", "seq_len=32", "rungs.0.d_model=32", "rungs.0.n_blocks=4",
            "rungs.0.tokens_per_param=1", "rungs.0.n_heads=2", "rungs.0.mamba_head_dim=8", "rungs.0.mamba_d_state=8",
            "rungs.0.mamba_chunk_size=8", "bootstrap=300"]


def lm_proxy(corpus: Path) -> list[str]:
    return ["space.length=4", "evaluator=lm", f"evaluator.corpus.path={corpus}", "evaluator.seq_len=32",
            "evaluator.val_tokens=4096", "evaluator.trainer.max_tokens=40000", "evaluator.model.d_model=32"]


def fidelity(tmp_path: Path, *args: str, name: str = "f", timeout: float = 600, env: dict | None = None):
    argv = [sys.executable, "-m", "composer.apps.fidelity", f"hydra.run.dir={tmp_path / name}",
            f"leaderboard={tmp_path / 'leaderboard.jsonl'}", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env or cli_env())


def test_a_known_ordering_is_recovered_and_the_figures_match_scipy(tmp_path, corpus):
    # On text whose words repeat within a document, reading the context is worth most: no token mixer,
    # then one Mamba-2 layer, then two. Proxy and rung agree on that order.
    proc = fidelity(tmp_path, "patterns=['M-M-','----','M---']", "random=0", "baselines=[]", *lm_proxy(corpus),
                    *rung_args(corpus))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "f" / "fidelity.json").read_text())
    points = {p["pattern"]: p for p in out["patterns"]}
    assert [out["placement"][p]["proxy_rank"] for p in ("M-M-", "M---", "----")] == [1, 2, 3]
    assert [out["placement"][p]["r1_rank"] for p in ("M-M-", "M---", "----")] == [1, 2, 3]
    (corr,) = out["correlations"]
    assert corr["x"] == "proxy" and corr["y"] == "r1" and corr["n"] == 3
    assert corr["spearman"]["value"] == 1.0 and corr["kendall"]["value"] == 1.0 and corr["decision_accuracy"] == 1.0
    assert corr["spearman"]["low"] is None  # three points: no interval

    # every pattern grown to the rung's size, both seeds trained once, each a run folder
    rung = out["rungs"][0]
    assert rung["tokens"] == rung["target_non_embedding_params"] == 65_824  # "*-" x 4 at 32 wide, 1 token a parameter
    for p in points.values():
        at = p["rungs"]["r1"]
        assert sorted(at["bits_per_byte"]) == ["0", "1"] and at["mean"] == pytest.approx(sum(at["bits_per_byte"].values()) / 2)
        assert abs(at["n_non_embedding_params"] - rung["target_non_embedding_params"]) / rung["target_non_embedding_params"] < 0.25
    assert len(list((tmp_path / "f" / "rungs" / "r1").glob("*/summary.json"))) == 6
    floor = out["noise_floor"]["r1"]
    assert floor["n_patterns"] == 3 and floor["n_seeds"] == 2 and 0 <= floor["neighbour_swap_rate"] <= 1
    assert (tmp_path / "f" / "fidelity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "proxy -> r1" in proc.stdout and "Spearman +1.00" in proc.stdout

    # the leaderboard holds the study (the HTML report's "Rank fidelity" section)
    records = [json.loads(line) for line in (tmp_path / "leaderboard.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["fidelity"] and records[0]["correlations"] == out["correlations"]

    # the same command again trains nothing and gives the same figures
    again = fidelity(tmp_path, "patterns=['M-M-','----','M---']", "random=0", "baselines=[]", *lm_proxy(corpus),
                     *rung_args(corpus))
    assert again.returncode == 0 and "0 to train" in again.stdout and "bits/byte  " not in again.stdout
    assert json.loads((tmp_path / "f" / "fidelity.json").read_text())["patterns"] == out["patterns"]

    # the rung under other settings is refused: its runs would be read back as if they were comparable
    other = fidelity(tmp_path, "patterns=['M-M-','----','M---']", "random=0", "baselines=[]", *lm_proxy(corpus),
                     *rung_args(corpus), "rungs.0.tokens_per_param=2")
    assert other.returncode == 2 and other.stderr.strip().count("\n") == 0
    assert "rung 'r1'" in other.stderr and "rung.tokens_per_param=1" in other.stderr and "this run has 2" in other.stderr


def test_analysis_against_scipy_on_fixed_points():
    rungs = (RungConfig(name="a", d_model=8, n_blocks=1), RungConfig(name="b", d_model=8, n_blocks=1))
    proxy = [0.1, 0.4, 0.3, 0.9, 0.5, 0.2]
    a = [[2.0, 2.1], [1.5, 1.6], [1.7, 1.5], [1.0, 1.1], [1.4, 1.45], [1.9, 2.0]]  # bits per byte by seed
    b = [[1.8], [1.2], [1.4], [0.9], [1.1], [1.6]]
    points = {f"p{i}": {"roles": ["given"], "proxy": proxy[i],
                        "rungs": {"a": {"bits_per_byte": {"0": a[i][0], "1": a[i][1]}, "mean": sum(a[i]) / 2},
                                  "b": {"bits_per_byte": {"0": b[i][0]}, "mean": b[i][0]}}} for i in range(6)}
    out = analyse(points, rungs, bootstrap=500, seed=0)
    by = {(c["x"], c["y"]): c for c in out["correlations"]}
    assert set(by) == {("proxy", "a"), ("proxy", "b"), ("a", "b")}
    minus_a = [-sum(v) / 2 for v in a]
    assert by[("proxy", "a")]["spearman"]["value"] == pytest.approx(scipy.stats.spearmanr(proxy, minus_a)[0])
    assert by[("proxy", "a")]["kendall"]["value"] == pytest.approx(scipy.stats.kendalltau(proxy, minus_a)[0])
    assert by[("proxy", "b")]["spearman"]["value"] == pytest.approx(1.0)  # b orders exactly as the proxy
    assert by[("proxy", "b")]["decision_accuracy"] == 1.0
    assert by[("proxy", "b")]["spearman"]["low"] <= 1.0 <= by[("proxy", "b")]["spearman"]["high"] + 1e-12
    assert out["noise_floor"]["a"]["n_seeds"] == 2 and out["noise_floor"]["b"]["neighbour_swap_rate"] is None
    assert out["placement"]["p3"] == {"roles": ["given"], "proxy_rank": 1, "a_rank": 1, "b_rank": 1}


def test_each_primitive_s_share_is_ranked_against_every_axis_as_scipy_does():
    # What a proxy must beat: if the share of one letter alone ranks a rung as well, the proxy adds nothing.
    rungs = (RungConfig(name="r1", d_model=8, n_blocks=1),)
    bpb = {"MM-*": 1.20, "M--*": 1.25, "---*": 1.40, "*-*-": 1.30, "MMM-": 1.10}
    proxy = {"MM-*": 0.7, "M--*": 0.8, "---*": 0.2, "*-*-": 0.5, "MMM-": 0.6}
    points = {p: {"roles": ["given"], "proxy": proxy[p], "rungs": {"r1": {"bits_per_byte": {"0": v}, "mean": v}}}
              for p, v in bpb.items()}
    out = analyse(points, rungs, bootstrap=300, seed=0)
    by = {(c["letter"], c["y"]): c for c in out["composition"]}
    assert set(by) == {(letter, axis) for letter in "*-M" for axis in ("proxy", "r1")}
    share_m = [p.count("M") / 4 for p in bpb]
    assert by[("M", "r1")]["spearman"]["value"] == pytest.approx(scipy.stats.spearmanr(share_m, [-v for v in bpb.values()])[0])
    assert by[("M", "r1")]["spearman"]["value"] > 0.95 and by[("M", "r1")]["n"] == 5  # two share no M: a tie
    assert by[("-", "proxy")]["kendall"]["value"] == pytest.approx(
        scipy.stats.kendalltau([p.count("-") / 4 for p in bpb], list(proxy.values()))[0])
    text = report({"name": "t", "patterns": list(points), "proxy": {"evaluator": "mad", "d_model": 8}, "seconds": 0,
                   "rungs": [], **out}, Path("f"))
    assert "share of a primitive -> r1: '*' " in text and "'M' +0.97 [" in text


def test_each_proxy_task_is_ranked_against_each_rung_and_a_saturated_one_says_so():
    # What the per-task scores say about a proxy that falls short: which tasks carry its ranking.
    rungs = (RungConfig(name="r1", d_model=8, n_blocks=1),)
    bpb = [1.20, 1.25, 1.40, 1.30, 1.10]
    recall = [1.0, 1.0, 1.0, 1.0, 1.0]
    copying = [0.5, 0.4, 0.1, 0.3, 0.45]
    points = {f"p{i}": {"roles": ["given"], "proxy": 0.5, "tasks": {"recall": recall[i], "copying": copying[i]},
                        "rungs": {"r1": {"bits_per_byte": {"0": bpb[i]}, "mean": bpb[i]}}} for i in range(5)}
    points["p5"] = {"roles": ["given"], "proxy": 0.4, "tasks": None, "rungs": {"r1": {"bits_per_byte": {}, "mean": None}}}
    out = analyse(points, rungs, bootstrap=300, seed=0)
    by = {c["task"]: c for c in out["tasks"]}
    assert by["recall"] == {"task": "recall", "y": "r1", "n": 5, "constant": 1.0}
    assert by["copying"]["n"] == 5 and by["copying"]["spearman"]["value"] == pytest.approx(
        scipy.stats.spearmanr(copying, [-b for b in bpb])[0])
    text = report({"name": "t", "patterns": list(points), "proxy": {"evaluator": "mad", "d_model": 8}, "seconds": 0,
                   "rungs": [], **out}, Path("f"))
    assert "proxy tasks -> r1: copying +0.90 [" in text and "recall 1.00 for all (Spearman)" in text


def test_the_plot_labels_marked_points_and_plain_ones_where_there_is_room():
    from search.fidelity.plot import labelled

    points = [("agg", 0.76, 1.285, True), ("near", 0.761, 1.286, False), ("nearer", 0.759, 1.2851, False),
              ("far", 0.50, 1.34, False), ("base", 0.60, 1.42, True), ("close-x-far-y", 0.762, 1.40, False)]
    sides = labelled(points)
    assert set(sides) == {"agg", "base", "far", "close-x-far-y"}  # the two beside the aggregate are not
    assert sides["far"] == "right"
    assert set(labelled([("a", 0.1, 1.0, False), ("b", 0.1, 1.0, False)])) == {"a"}  # one of two on one spot
    assert labelled([]) == {}
    # long labels: a plain point whose label would cross another label, on either side, gets none
    row = [("M*-*-M**M*-*M**-", 0.50, 1.30, True), ("M*-*MM**M*-*M*M-", 0.58, 1.302, False),
           ("-M-*M*MM*M--MM**", 0.62, 1.40, False), ("*-*-*-*-*-*-*-*-", 0.30, 1.42, True)]
    sides = labelled(row)
    assert "M*-*MM**M*-*M*M-" not in sides and sides["M*-*-M**M*-*M**-"] == "right"
    assert sides["-M-*M*MM*M--MM**"] == "left"  # at the right edge: its label goes left, inside the axes


def test_the_headline_is_the_aggregate_s_gap_to_each_baseline_in_seed_spreads():
    rungs = (RungConfig(name="r1", d_model=8, n_blocks=1, seeds=(0, 1)), RungConfig(name="r2", d_model=8, n_blocks=1))
    runs = {"M*-*": (["aggregate"], {"0": 1.28, "1": 1.29}), "*-*-": (["baseline"], {"0": 1.43, "1": 1.40}),
            "----": (["baseline"], {"0": 1.27}), "M---": (["random"], {"0": 1.1, "1": 1.2})}
    points = {p: {"roles": roles, "proxy": 0.5, "rungs": {"r1": {"bits_per_byte": b, "mean": sum(b.values()) / len(b)}}}
              for p, (roles, b) in runs.items()}
    out = analyse(points, rungs, bootstrap=100, seed=0)["headline"]
    assert [(h["rung"], h["pattern"], h["baseline"]) for h in out] == [("r1", "M*-*", "*-*-"), ("r1", "M*-*", "----")]
    llama, mlp = out
    assert llama["gap"] == pytest.approx(1.415 - 1.285) and llama["spread"] == pytest.approx(0.03)
    assert llama["gap_over_spread"] == pytest.approx(0.13 / 0.03) and llama["seeds"] == [2, 2]
    assert mlp["gap"] == pytest.approx(1.27 - 1.285) and mlp["spread"] is None  # one seed: no spread
    text = report({"name": "t", "patterns": list(points), "proxy": {"evaluator": "mad", "d_model": 8}, "seconds": 0,
                   "rungs": [], "correlations": [], "noise_floor": {}, "placement": {p: {"roles": []} for p in points},
                   "headline": out}, Path("f"))
    assert ("headline r1: aggregate M*-* 1.2850 against baseline *-*- 1.4150 bits/byte (2 and 2 seeds): "
            "0.1300 ahead, 4.3x the seed spread (0.0300)\n") in text
    assert "against baseline ---- 1.2700 bits/byte (2 and 1 seeds): 0.0150 behind\n" in text


def test_a_search_s_patterns_are_taken_with_their_roles_and_its_scores_read_back(tmp_path, corpus):
    search = subprocess.run([sys.executable, "-m", "composer.apps.search", *TINY_SEARCH, "name=s", "n_trials=5",
                             "strategy=random", f"hydra.run.dir={tmp_path / 's'}", "leaderboard=null"],
                            capture_output=True, text=True, timeout=600, env=cli_env())
    assert search.returncode == 0, search.stderr[-3000:]
    result = json.loads((tmp_path / "s" / "result.json").read_text())
    proc = fidelity(tmp_path, f"search_dir={tmp_path / 's'}", "top_k=2", "random=1", "rungs.0.seeds=[0]",
                    *rung_args(corpus))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "f" / "fidelity.json").read_text())
    roles = {p["pattern"]: p["roles"] for p in out["patterns"]}
    assert "aggregate" in roles[result["architecture"]] and roles["*-*"] == ["baseline"]
    assert sum("top" in r for r in roles.values()) == 2 and sum(r == ["random"] for r in roles.values()) == 1
    assert out["search"] == "s" and out["proxy"]["evaluator"] == "mad_cpu"
    # the search's scores are read back; only the random draw is evaluated here, at the search's settings
    scored = {**{r["pattern"]: r["score"] for r in result["top"]},
              **{e["pattern"]: e["seeds"]["0"]["score"] for e in result["entries"]},
              **{b["pattern"]: b["seeds"]["0"]["score"] for b in result["baselines"]}}
    for p in out["patterns"]:
        if p["roles"] != ["random"]:
            assert p["proxy"] == pytest.approx(scored[p["pattern"]])
    here = json.loads(json.dumps([line for line in (tmp_path / "f" / "trials").glob("*/*/summary.json")], default=str))
    assert len({Path(p).parent.parent.name for p in here}) == 1  # one pattern trained at the proxy: the random one
    assert "aggregate" in proc.stdout and "baseline" in proc.stdout
    # which tasks could go: over every pattern scored with its tasks, the search's and the study's
    fewer = out["task_subsets"]
    assert fewer["tasks"] == ["in_context_recall", "selective_copying"] and fewer["n_patterns"] >= len(out["patterns"])
    assert sorted(r["left_out"][0] for r in fewer["rows"] if len(r["left_out"]) == 1) == fewer["tasks"]
    assert "fewer tasks: " in proc.stdout and "    without selective_copying: proxy " in proc.stdout
    # the fewer-tasks check of a search alone: no rung, nothing trained, read from the search's scores
    alone = fidelity(tmp_path, f"search_dir={tmp_path / 's'}", "top_k=2", "random=0", "rungs=[]", name="tasks-only")
    assert alone.returncode == 0, alone.stderr[-3000:]
    only = json.loads((tmp_path / "tasks-only" / "fidelity.json").read_text())
    # the search's patterns: all of the first study's but its random draw (unless the search had scored it too)
    assert only["rungs"] == [] and only["task_subsets"]["n_patterns"] in (fewer["n_patterns"] - 1, fewer["n_patterns"])
    assert not list((tmp_path / "tasks-only").glob("trials/*")) and "fewer tasks: " in alone.stdout


def test_the_headline_trains_first_at_every_seed_then_the_rest_seed_major():
    # A study stopped early should already hold the comparison it exists for: the aggregate against its
    # baselines with a seed spread; after that, every pattern at its first seed before any at its second.
    rung = {"name": "r1", "d_model": 32, "n_blocks": 4, "n_heads": 2, "mamba_head_dim": 8, "mamba_d_state": 8,
            "mamba_chunk_size": 8, "seeds": [0, 1]}
    cfg = fidelity_config_from_mapping({"patterns": ["M---"], "rungs": [rung, {**rung, "name": "r2", "d_model": 48}]})
    roles = {"-M--": ["top"], "M-M-": ["aggregate", "top"], "M---": ["random"], "*-*-": ["baseline"]}
    jobs, grown = _jobs(cfg, roles, 256)
    assert jobs[:8] == [(0, "M-M-", 0), (0, "*-*-", 0), (0, "M-M-", 1), (0, "*-*-", 1),
                        (0, "-M--", 0), (0, "M---", 0), (0, "-M--", 1), (0, "M---", 1)]
    assert jobs[8:] == [(1, p, s) for _, p, s in jobs[:8]]  # each rung in the same order
    assert set(grown) == {(r, p) for r in ("r1", "r2") for p in roles}


def test_killed_mid_study_the_same_command_trains_only_what_is_left(tmp_path, corpus):
    args = ["patterns=['-*--','*---','--*-']", "random=0", "baselines=[]", *lm_proxy(corpus), *rung_args(corpus),
            "rungs.0.tokens_per_param=2", "trainer.ckpt_every=5"]
    argv = [sys.executable, "-m", "composer.apps.fidelity", f"hydra.run.dir={tmp_path / 'f'}", "leaderboard=null", *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env(),
                            start_new_session=True)
    runs = tmp_path / "f" / "rungs" / "r1"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(runs.glob("*/summary.json"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p: p.stat().st_mtime_ns for p in runs.glob("*/summary.json")
            if json.loads(p.read_text()).get("status") == "completed"}
    assert 2 <= len(done) < 6, "the kill should land mid-study"

    partial = fidelity(tmp_path, *args, "train=false")  # the figures so far, training nothing
    assert partial.returncode == 0, partial.stderr[-3000:]
    assert f"PARTIAL: {6 - len(done)} rung run(s) not finished" in partial.stdout
    out = json.loads((tmp_path / "f" / "fidelity.json").read_text())
    assert out["unfinished_runs"] == 6 - len(done)
    assert sum(len(p["rungs"]["r1"]["bits_per_byte"]) for p in out["patterns"]) == len(done)
    assert all(p["proxy"] is not None for p in out["patterns"])  # read back from the killed run's study
    assert len(list(runs.glob("*/summary.json"))) == len(done) and "bits/byte  " not in partial.stdout + partial.stderr

    again = fidelity(tmp_path, *args, "workers=2")  # resumed by two processes: what is left, shared
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"6 rung runs, {6 - len(done)} to train, 2 worker(s)" in again.stdout
    log = again.stdout + again.stderr
    assert log.count("bits/byte  ") == 6 - len(done)  # one progress line per run trained, each run once
    assert "] w1 [" in log and "- w0 [" in log  # both workers trained
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # finished runs were read back, not retrained
    out = json.loads((tmp_path / "f" / "fidelity.json").read_text())
    assert all(len(p["rungs"]["r1"]["bits_per_byte"]) == 2 for p in out["patterns"])


def test_train_roles_trains_only_those_roles_runs_and_the_next_call_the_rest(tmp_path, corpus):
    # On a GPU whose Mamba-2 kernels are still building, the Llama baseline can train alone first.
    args = ["patterns=['-*--','M---']", "random=0", *lm_proxy(corpus), *rung_args(corpus)]  # baseline: *-*-
    first = fidelity(tmp_path, *args, "train_roles=[baseline]")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "train_roles=baseline: 4 unfinished run(s) of other roles are left for a later call" in first.stdout + first.stderr
    out = json.loads((tmp_path / "f" / "fidelity.json").read_text())
    trained = {p["pattern"]: sorted(p["rungs"]["r1"]["bits_per_byte"]) for p in out["patterns"]}
    assert trained == {"-*--": [], "M---": [], "*-*-": ["0", "1"]} and out["unfinished_runs"] == 4
    assert "PARTIAL: 4 rung run(s) not finished" in first.stdout
    again = fidelity(tmp_path, *args)  # the rest; the baseline's runs are read back
    assert again.returncode == 0, again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("bits/byte  ") == 4
    assert json.loads((tmp_path / "f" / "fidelity.json").read_text())["unfinished_runs"] == 0


@pytest.mark.parametrize("args, message", [
    (["patterns=['*-*-','M-Q-']"], "patterns[1]: unknown primitive 'Q' at position 2"),
    (["search_dir=/no/such/search"], "search_dir=/no/such/search: not a composer-search run folder (no search.json in it)"),
    (["rungs.0.method=grow"], "rungs.r1.method must be one of auto, stack, stretch, match, fit, got 'grow'"),
    (["rungs.0.n_blocks=1", "patterns=['*-*-*-','M-M-M-','*-M-*-']", "random=0"], "rungs.r1: pattern '*-*-*-'"),
    (["patterns=['*-*-*-*-','M-M-M-']"], "patterns[0] '*-*-*-*-' has 8 layers; the search's patterns have 6"),
    (["patterns=['*-']", "random=0", "baselines=[]", "space.length=2"], "1 pattern(s) to compare"),
    (["+rungs.0.trainer.max_tokens=10"], "rungs.r1.trainer.max_tokens: a rung's budget is tokens_per_param"),
    (["proxies=[{evaluator:{}}]"], "proxies[0] must be {name: ..., evaluator: {overrides}}"),
    (["proxies=[{name:r1}]"], "rung and proxy names must be distinct"),
    (["proxies=[{name:fast,evaluator:{trainer:{bogus:1}}}]"], "proxies.fast: "),
    (["train_roles=[baseline,winner]"], "train_roles: unknown role 'winner' (roles: aggregate, best_single, baseline"),
    (["rungs=[]"], "rungs is empty: give at least one rung"),
])
def test_bad_input_is_one_line(tmp_path, corpus, args, message):
    proc = fidelity(tmp_path, *rung_args(corpus), *args, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr[-2000:]
    assert message in proc.stderr


def three_runs(corpus):
    """A one-rung study of tiny runs and its three (rung, pattern, seed) jobs, for `_train` called directly."""
    from search.fidelity import study

    cfg = study.fidelity_config_from_mapping({
        "data": {"path": str(corpus), "val_tokens": 4096}, "seq_len": 32, "trainer": {"progress": False},
        "rungs": [{"name": "r1", "d_model": 32, "n_blocks": 4, "tokens_per_param": 1, "n_heads": 2, "seeds": [0]}]})
    return cfg, [(0, p, 0) for p in ("*-*-", "----", "-*--")]


def test_a_run_out_of_gpu_memory_is_left_unfinished_and_the_next_call_resumes_it(tmp_path, corpus, monkeypatch):
    # Out of memory is not the pattern's fault (workers sharing a GPU): the worker goes on with its other
    # runs, says in one line which it left, and the same call again trains only those.
    import torch

    from composer.errors import ComposerError
    from search.fidelity import study

    cfg, jobs = three_runs(corpus)
    real, calls = study.train_run, []

    def short_of_memory(rung, grown, **kw):
        calls.append(grown.source_pattern)
        if grown.source_pattern == "----" and calls.count("----") == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB")
        return real(rung, grown, **kw)

    monkeypatch.setattr(study, "train_run", short_of_memory)
    with pytest.raises(ComposerError, match=r"1 run\(s\) ran out of GPU memory \(r1 ---- seed 0\): rerun"):
        study._train(cfg, tmp_path, jobs, worker=0)
    assert calls == ["*-*-", "----", "-*--"]  # the runs after it were trained
    assert len(list(tmp_path.glob("rungs/r1/*/summary.json"))) == 2
    study._train(cfg, tmp_path, jobs, worker=0)
    assert calls[3:] == ["----"] and len(list(tmp_path.glob("rungs/r1/*/summary.json"))) == 3


def test_a_run_that_runs_out_of_memory_is_freed_before_the_next_starts(tmp_path, corpus, monkeypatch):
    # A failed run's model, optimizer and CUDA graph sit in reference cycles and in its traceback; a worker
    # that kept them ran every later run out of memory too. Garbage collection is off here, so only the
    # worker's own collection frees them.
    import gc
    import weakref

    import torch

    from composer.errors import ComposerError
    from search.fidelity import study

    cfg, jobs = three_runs(corpus)
    real, alive = study.train_run, []

    class Held:  # stands for the run's model: reachable only from its frame and from itself
        def __init__(self):
            self.me = self

    def short_of_memory(rung, grown, **kw):
        assert not any(ref() for ref in alive), "the last run's objects are still alive"
        held = Held()
        alive.append(weakref.ref(held))
        if grown.source_pattern == "*-*-":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB")
        return real(rung, grown, **kw)

    monkeypatch.setattr(study, "train_run", short_of_memory)
    gc.disable()
    try:
        with pytest.raises(ComposerError, match=r"1 run\(s\) ran out of GPU memory \(r1 \*-\*- seed 0\)"):
            study._train(cfg, tmp_path, jobs, worker=0)
    finally:
        gc.enable()
    assert len(alive) == 3 and not any(ref() for ref in alive)


def test_a_budget_of_fewer_tasks_is_also_read_against_the_proxy_on_those_tasks():
    from search.fidelity.study import SAME_TASKS, compare_proxies

    proxy = {"a": {"noisy": 0.9, "copy": 0.1}, "b": {"noisy": 0.5, "copy": 0.5}, "c": {"noisy": 0.2, "copy": 0.6},
             "d": {"noisy": 0.1, "copy": 0.2}}
    points = {p: {"proxy": (t["noisy"] + t["copy"]) / 2, "tasks": t, "rungs": {}} for p, t in proxy.items()}
    noisy = {"a": 0.8, "b": 0.6, "c": 0.3, "d": 0.2}  # noisy recall alone at a cheaper budget
    variant = {"evaluator": {}, "scores": noisy, "tasks": {p: {"noisy": v} for p, v in noisy.items()},
               "seconds_per_evaluation": 1.0}
    (out,) = compare_proxies(points, {"noisy_half": variant}, (), bootstrap=50, seed=0)
    by_axis = {c["y"]: c for c in out["correlations"]}
    assert by_axis[SAME_TASKS]["spearman"]["value"] == pytest.approx(1.0)  # as noisy recall ranks at full
    full = scipy.stats.spearmanr(list(noisy.values()), [points[p]["proxy"] for p in noisy]).statistic
    assert by_axis["proxy"]["spearman"]["value"] == pytest.approx(full) and full < 0.99  # the two-task mean
    gaps = {p: abs(noisy[p] - proxy[p]["noisy"]) for p in proxy}
    assert out["score_difference"]["tasks"] == ["noisy"]
    assert out["score_difference"]["mean_abs"] == pytest.approx(sum(gaps.values()) / 4)
    # a budget of the same tasks is read against the proxy as before
    same = {**variant, "tasks": {p: {"noisy": 0.0, "copy": 0.0} for p in noisy}}
    (out,) = compare_proxies(points, {"s": same}, (), bootstrap=50, seed=0)
    assert out["score_difference"]["tasks"] is None and [c["y"] for c in out["correlations"]] == ["proxy"]


@pytest.mark.parametrize("workers, gpus, share", [(1, 1, None), (2, 2, None), (1, 0, None), (3, 0, None),
                                                  (2, 1, 0.475), (5, 1, 0.19), (3, 2, 0.475), (8, 2, 0.237)])
def test_workers_sharing_a_gpu_each_get_a_bounded_share_of_its_memory(workers, gpus, share):
    from search.runner import gpu_share

    assert gpu_share(workers, gpus) == share


def test_another_budget_of_the_proxy_is_ranked_against_it_without_rungs(tmp_path, corpus):
    # issue 17's budget study: the same patterns at the proxy and at a cheaper budget, compared
    proc = fidelity(tmp_path, "patterns=['M-M-','----','M---','*-*-']", "random=0", "baselines=[]", *lm_proxy(corpus),
                    "rungs=[]", "proxies=[{name:quarter,evaluator:{trainer:{max_tokens:10000}}}]", "bootstrap=200")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "f" / "fidelity.json").read_text())
    (quarter,) = out["proxies"]
    assert quarter["name"] == "quarter" and quarter["evaluator"] == {"trainer": {"max_tokens": 10000}}
    assert set(quarter["scores"]) == {"M-M-", "----", "M---", "*-*-"} and quarter["seconds_per_evaluation"] > 0
    (against,) = quarter["correlations"]
    proxy = {p["pattern"]: p["proxy"] for p in out["patterns"]}
    x = [quarter["scores"][p] for p in proxy]
    assert against["y"] == "proxy" and against["n"] == 4
    assert against["spearman"]["value"] == pytest.approx(scipy.stats.spearmanr(x, list(proxy.values())).statistic)
    # how far its scores lie from the proxy's, pattern by pattern
    gaps = {p: abs(quarter["scores"][p] - proxy[p]) for p in proxy}
    worst = max(gaps, key=gaps.get)
    assert quarter["score_difference"] == {"n": 4, "mean_abs": pytest.approx(sum(gaps.values()) / 4),
                                           "max_abs": pytest.approx(gaps[worst]), "max_pattern": worst, "tasks": None}
    assert f"quarter - proxy: |score difference| mean {sum(gaps.values()) / 4:.4f}" in proc.stdout
    # its own runs, trained at its budget: nothing read back from the proxy's runs of the same patterns
    runs = list((tmp_path / "f" / "proxies" / "quarter" / "trials").glob("*/lm-*/summary.json"))
    assert len(runs) == 4 and all(json.loads(r.read_text())["tokens"] <= 10000 for r in runs)  # the proxy: 40,000
    assert out["rungs"] == [] and not (tmp_path / "f" / "fidelity.png").exists()
    assert "quarter -> proxy  Spearman" in proc.stdout and "s per evaluation" in proc.stdout


def test_each_run_goes_to_the_first_free_worker_and_a_killed_calls_claims_hold_nothing_back(tmp_path, corpus, monkeypatch):
    # Workers claim runs one at a time (a file per run in the call's claims folder), so one that draws
    # short runs takes the next instead of idling on a fixed share while another works through long ones.
    from search.fidelity import study

    cfg, jobs = three_runs(corpus)
    real, calls = study.train_run, []
    monkeypatch.setattr(study, "train_run", lambda rung, grown, **kw: calls.append(grown.source_pattern) or real(rung, grown, **kw))
    killed = tmp_path / ".claims-killed"
    killed.mkdir()
    assert study._claim(killed, 2) and not study._claim(killed, 2)  # another worker holds run 2 now
    study._train(cfg, tmp_path, jobs, worker=0, claims=killed)
    assert calls == ["*-*-", "-*--"]
    fresh = tmp_path / ".claims-next"  # the next call: its own folder, so run 2 (never finished) is free again
    fresh.mkdir()
    study._train(cfg, tmp_path, jobs, worker=0, claims=fresh)
    assert calls == ["*-*-", "-*--", "----"] and len(list(tmp_path.glob("rungs/r1/*/summary.json"))) == 3
