"""Rank-fidelity records on the leaderboard: fidelity_record's checks, the store, the text summary of
composer-leaderboard and the report's "Rank fidelity" section."""

from __future__ import annotations

import copy
import csv
import io
import json
import re

import pytest

from composer.apps import leaderboard as app
from composer.errors import ConfigError
from search.leaderboard import formats, html as report, records as rec, store

# pattern -> (roles, proxy score, {rung: [bits per byte of seed 0, seed 1]})
PATTERNS = {
    "M-*-M-": (["aggregate", "top"], 0.40, {"r1": [1.10, 1.12], "r2": [0.95, 0.97]}),
    "M-*-*-": (["top", "best_single"], 0.39, {"r1": [1.14, 1.13], "r2": [0.99, 1.00]}),
    "*-*-*-": (["baseline"], 0.36, {"r1": [1.20, 1.22], "r2": [1.02, 1.03]}),
    "MM--*-": (["random"], 0.33, {"r1": [1.25, 1.24], "r2": [1.08, 1.06]}),
    "*--**M": (["random"], 0.30, {"r1": [1.31, 1.29], "r2": [1.12, 1.13]}),
    "M--*MM": (["given"], None, {"r1": [1.28, 1.30]}),  # no proxy score: not in the scatters
}


def _stat(value: float | None, low: float | None, high: float | None, n: int) -> dict:
    return {"value": value, "low": low, "high": high, "n": n}


def fidelity_result(*, run_dir: str = "outputs/fidelity/f1", search: str | None = "s1") -> dict:
    """A fidelity.json as composer-fidelity writes it: two rungs of two seeds, six patterns."""
    rungs = [{"name": name, "d_model": d, "target_non_embedding_params": params, "tokens": 20 * params,
              "tokens_per_param": 20.0, "seeds": [0, 1], "method": "stack"}
             for name, d, params in (("r1", 128, 2_000_000), ("r2", 256, 8_000_000))]
    patterns = [{"pattern": p, "roles": roles, "proxy": proxy,
                 "rungs": {rung: {"grown": p * 2, "n_non_embedding_params": 2_000_000 if rung == "r1" else 8_000_000,
                                  "bits_per_byte": {str(s): v for s, v in enumerate(values)},
                                  "mean": sum(values) / len(values)} for rung, values in by_rung.items()}}
                for p, (roles, proxy, by_rung) in PATTERNS.items()]
    return {
        "kind": "fidelity", "schema": 1, "name": "f1", "search": search, "run_dir": run_dir,
        "created": "2026-12-01T10:00:00+00:00", "seconds": 3600.0,  # a key the leaderboard does not keep
        "proxy": {"evaluator": "mad_cpu", "d_model": 32, "seed": 0},
        "rungs": rungs,
        "patterns": patterns,
        "correlations": [
            {"x": "proxy", "y": "r1", "n": 5, "spearman": _stat(0.91, 0.80, 0.97, 5),
             "kendall": _stat(0.78, 0.62, 0.90, 5), "decision_accuracy": 0.85},
            {"x": "proxy", "y": "r2", "n": 5, "spearman": _stat(0.70, None, None, 5),
             "kendall": _stat(0.6, 0.2, 0.9, 5), "decision_accuracy": None},
            {"x": "r1", "y": "r2", "n": 6, "spearman": _stat(None, None, None, 6),
             "kendall": _stat(-0.2, -0.7, 0.4, 6), "decision_accuracy": 0.5},
        ],
        "composition": [
            {"letter": "M", "y": "r1", "n": 6, "spearman": _stat(0.66, 0.1, 0.95, 6),
             "kendall": _stat(0.5, 0.0, 0.9, 6), "decision_accuracy": 0.73},
        ],
        "noise_floor": {
            "r1": {"n_patterns": 6, "n_seeds": 2, "neighbour_swap_rate": 0.2, "seed_spearman": 0.94,
                   "seed_decision_accuracy": 0.93, "std": 0.0125},
            "r2": {"n_patterns": 5, "n_seeds": 2, "neighbour_swap_rate": None, "seed_spearman": None,
                   "seed_decision_accuracy": None, "std": None},
        },
        "placement": {p: {"roles": roles, "proxy_rank": None if proxy is None else i + 1, "r1_rank": i + 1,
                          "r2_rank": i + 1 if "r2" in by_rung else None}
                      for i, (p, (roles, proxy, by_rung)) in enumerate(PATTERNS.items())},
    }


def arch(pattern: str, score: float, *, role: str = "candidate", search: str = "s1") -> dict:
    return rec.architecture_record(
        pattern, search=search, strategy="random", role=role, aggregator="N0" if role == "aggregate" else None,
        task_scores={"recall": [score]}, seeds=[0], proxy_d_model=64, proxy_vocab_size=32, seq_len=64,
        evaluator="mad")


# ------------------------------------------------------------------------------------------ the record

def test_fidelity_record_keeps_the_study():
    result = fidelity_result()
    r = rec.fidelity_record(result)
    assert r["kind"] == "fidelity" and r["schema"] == rec.SCHEMA and "seconds" not in r
    assert rec.record_key(r) == ("fidelity", "outputs/fidelity/f1")
    assert r["rungs"] == result["rungs"] and r["patterns"] == result["patterns"]
    assert r["correlations"][0]["spearman"] == {"value": 0.91, "low": 0.8, "high": 0.97, "n": 5}
    result["patterns"][0]["proxy"] = 0.0  # the record is a copy: the caller's objects are not shared
    assert r["patterns"][0]["proxy"] == 0.4
    assert json.loads(json.dumps(r, allow_nan=False)) == r
    assert rec.fidelity_record(fidelity_result(search=None))["search"] is None
    assert r["composition"] == result["composition"]
    older = fidelity_result()  # written before composer-fidelity ranked by composition: read as none
    del older["composition"]
    assert rec.fidelity_record(older)["composition"] == []


def _set(result: dict, path: tuple, value) -> None:
    """result[path[0]][path[1]]... = value; value DELETE removes the key."""
    *parents, last = path
    target = result
    for key in parents:
        target = target[key]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value


DELETE = object()
R1 = ("patterns", 0, "rungs", "r1")


@pytest.mark.parametrize("path, value, message", [
    (("kind",), "search", "fidelity kind must be 'fidelity', got 'search'"),
    (("schema",), 2, "fidelity schema must be 1"),
    (("name",), DELETE, "fidelity name is missing"),
    (("run_dir",), "", "fidelity run_dir must be a non-empty string"),
    (("search",), 3, "fidelity search must be a non-empty string"),
    (("created",), "yesterday", "fidelity created must be an ISO 8601 time"),
    (("proxy", "d_model"), 0, "fidelity proxy.d_model must be an integer >= 1"),
    (("proxy", "evaluator"), DELETE, "fidelity proxy.evaluator is missing"),
    (("rungs",), [], "fidelity rungs must not be empty"),
    (("rungs", 1, "name"), "r1", "fidelity rungs[1].name 'r1' appears twice"),
    (("rungs", 0, "seeds"), [0, 0], "fidelity rungs[0].seeds must be distinct"),
    (("rungs", 1, "tokens_per_param"), 0, "fidelity rungs[1].tokens_per_param must be positive"),
    (("rungs", 0, "method"), DELETE, "fidelity rungs[0].method is missing"),
    (("patterns", 2, "pattern"), "*-X", "fidelity patterns[2].pattern: unknown primitive 'X' at position 2"),
    (("patterns", 1, "pattern"), "M-*-M-", "fidelity patterns[1].pattern 'M-*-M-' appears twice"),
    (("patterns", 1, "roles"), ["winner"], "fidelity patterns[1].roles[0] must be one of top, aggregate"),
    (("patterns", 1, "roles"), [], "fidelity patterns[1].roles must not be empty"),
    (("patterns", 0, "proxy"), "high", "fidelity patterns[0].proxy must be a finite number"),
    (("patterns", 0, "rungs", "r9"), {}, "fidelity patterns[0].rungs['r9'] must name a rung (r1, r2)"),
    ((*R1, "grown"), "", "fidelity patterns[0].rungs['r1'].grown: empty pattern"),
    ((*R1, "mean"), DELETE, "fidelity patterns[0].rungs['r1'].mean is missing"),
    ((*R1, "mean"), -1.0, "fidelity patterns[0].rungs['r1'].mean must be >= 0"),
    ((*R1, "bits_per_byte", "0"), float("nan"),
     "fidelity patterns[0].rungs['r1'].bits_per_byte['0'] must be a finite number"),
    ((*R1, "bits_per_byte", "7"), 1.0, "bits_per_byte['7']: '7' is not one of rung 'r1''s seeds [0, 1]"),
    ((*R1, "n_non_embedding_params"), 1.5, "n_non_embedding_params must be an integer >= 1"),
    (("correlations", 0, "x"), "r9", "fidelity correlations[0].x must name the proxy or a rung (proxy, r1, r2)"),
    (("correlations", 0, "y"), "proxy", "fidelity correlations[0].y must name a rung (r1, r2), got 'proxy'"),
    (("correlations", 0, "spearman", "high"), 1.2, "correlations[0].spearman.high must be between -1 and 1"),
    (("correlations", 2, "kendall", "n"), DELETE, "fidelity correlations[2].kendall.n is missing"),
    (("correlations", 1, "decision_accuracy"), 85, "correlations[1].decision_accuracy must be between 0 and 1"),
    (("composition", 0, "letter"), "MM", "fidelity composition[0].letter must be one primitive's letter, got 'MM'"),
    (("composition", 0, "y"), "r9", "fidelity composition[0].y must name the proxy or a rung (proxy, r1, r2)"),
    (("composition", 0, "kendall", "low"), -3, "composition[0].kendall.low must be between -1 and 1"),
    (("noise_floor", "r3"), {}, "fidelity noise_floor['r3'] must name a rung"),
    (("noise_floor", "r1", "std"), -0.1, "fidelity noise_floor['r1'].std must be >= 0"),
    (("noise_floor", "r2", "n_seeds"), DELETE, "fidelity noise_floor['r2'].n_seeds is missing"),
    (("placement", "**--"), {"roles": ["given"], "proxy_rank": 1},
     "placement['**--']: '**--' is not one of the study's patterns"),
    (("placement", "M-*-M-", "r9_rank"), 1, "placement['M-*-M-'].r9_rank must name the proxy or a rung"),
    (("placement", "M-*-M-", "r1_rank"), 0, "placement['M-*-M-'].r1_rank must be an integer >= 1"),
    (("placement", "M-*-M-", "proxy_rank"), DELETE, "placement['M-*-M-'].proxy_rank is missing"),
    (("patterns", 0, "note"), float("inf"), "fidelity result is not JSON-serialisable"),  # kept, so checked
    (("task_subsets", "tasks"), "recall", "fidelity task_subsets.tasks must be a list"),
    (("task_subsets", "smallest"), ["sorting"], "fidelity task_subsets.smallest must be a non-empty list of the "
                                                "study's tasks (compression, memorization, recall), got ['sorting']"),
    (("task_subsets", "rows", 1, "keep"), [], "fidelity task_subsets.rows[1].keep must be a non-empty list"),
    (("task_subsets", "rows", 0, "correlations", 1, "y"), "r9",
     "fidelity task_subsets.rows[0].correlations[1].y must name the proxy or a rung (proxy, r1, r2), got 'r9'"),
    (("task_subsets", "budgets", 0, "name"), "", "fidelity task_subsets.budgets[0].name must be a non-empty string"),
    (("task_subsets", "n_patterns"), -1, "fidelity task_subsets.n_patterns must be an integer >= 0"),
])
def test_fidelity_record_names_the_bad_field(path, value, message):
    result = _with_task_subsets()  # fidelity_result() and the optional task subsets
    _set(result, path, value)
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        rec.fidelity_record(result)
    assert "\n" not in str(caught.value)


def _with_task_subsets() -> dict:
    """fidelity_result() with a task-subsets block as composer-fidelity writes it (search/fidelity/subsets.py)."""
    def corr(y: str, value: float, n: int) -> dict:
        return {"y": y, "n": n, "spearman": _stat(value, value - 0.1, min(1.0, value + 0.05), n),
                "kendall": _stat(value - 0.1, None, None, n), "decision_accuracy": 0.9}

    result = fidelity_result()
    tasks = ["compression", "memorization", "recall"]
    result["task_subsets"] = {
        "tasks": tasks, "n_patterns": 12, "agreement": 0.95, "smallest": ["compression", "recall"],
        "rows": [{"keep": ["compression", "recall"], "left_out": ["memorization"], "runs": 2, "of": 3,
                  "correlations": [corr("proxy", 1.0, 12), corr("r1", 0.9, 5)]},
                 {"keep": ["memorization", "recall"], "left_out": ["compression"], "runs": 2, "of": 3,
                  "correlations": [corr("proxy", 0.8, 12)]}],
        "budgets": [{"name": "half", "keep": ["compression", "recall"], "correlations": [corr("proxy", 0.97, 5)]}],
    }
    return result


def test_fidelity_record_keeps_the_task_subsets_and_the_report_lists_them():
    result = _with_task_subsets()
    r = rec.fidelity_record(result)
    assert r["task_subsets"] == result["task_subsets"]
    assert rec.fidelity_record(fidelity_result())["task_subsets"] is None  # a study from before: none
    page = report.render([r])
    correlations = page[page.index('<table class="correlations">'):]
    body = _tag(correlations[:correlations.index("</table>")], r"<tr>(.*?)</tr>")[1:]
    cells = [_tag(row, r'<td data-value="[^"]*">([^<]*)</td>')[:4] for row in body][4:]
    assert cells == [["tasks compression, recall (2 of 3)", "proxy", "12", "1.00 [0.90, 1.00]"],
                     ["tasks compression, recall (2 of 3)", "r1", "5", "0.90 [0.80, 0.95]"],
                     ["tasks without compression", "proxy", "12", "0.80 [0.70, 0.85]"],
                     ["half on 2 of 3 tasks", "proxy", "5", "0.97 [0.87, 1.00]"]]
    text = formats.fidelity_text([r])  # composer-leaderboard's summary: the fewest tasks only
    assert "  tasks compression, recall (2 of 3) -> proxy: Spearman 1.00 [0.90, 1.00]" in text
    assert "  tasks compression, recall (2 of 3) -> r1: Spearman 0.90" in text and "without" not in text


def test_fidelity_record_rejects_a_non_mapping():
    with pytest.raises(ConfigError, match="fidelity result must be a mapping, got list"):
        rec.fidelity_record([])
    with pytest.raises(ConfigError, match="fidelity patterns must be a list, got dict"):
        rec.fidelity_record(fidelity_result() | {"patterns": {}})


# ------------------------------------------------------------------------------------------ store and formats

@pytest.fixture
def board() -> list[dict]:
    return [arch("M-*-M-", 0.40, role="aggregate"), arch("*-*-*-", 0.36, role="baseline"),
            rec.fidelity_record(fidelity_result())]


def test_fidelity_records_leave_the_tables_alone(tmp_path, board):
    path = tmp_path / "board.jsonl"
    for r in board:
        store.append(r, path)
    rerun = fidelity_result()
    rerun["correlations"][0]["spearman"]["value"] = 0.5
    store.append(rec.fidelity_record(rerun), path)  # the same run folder: replaces the first
    records = store.load(path)
    assert [r["kind"] for r in records] == ["architecture", "architecture", "fidelity"]
    assert records[2]["correlations"][0]["spearman"]["value"] == 0.5
    table = formats.rows(records)
    assert [r["pattern"] for r in table] == ["M-*-M-", "*-*-*-"]
    assert len(list(csv.DictReader(io.StringIO(formats.to_csv(table))))) == 2
    assert len(formats.to_markdown(table).splitlines()) == 4 and len(formats.to_text(table).splitlines()) == 5
    assert [r["kind"] for r in json.loads(formats.to_json(records))] == ["architecture", "architecture", "fidelity"]


def test_fidelity_text(board):
    text = formats.fidelity_text(board).splitlines()
    assert text == [
        "",
        "Rank fidelity: f1 (search s1, proxy mad_cpu at d_model 32; outputs/fidelity/f1)",
        "  rung r1: d_model 128, 2.0M params, 40M tokens (20 per param), seeds 0 1, stack",
        "  rung r2: d_model 256, 8.0M params, 160M tokens (20 per param), seeds 0 1, stack",
        "  proxy -> r1: Spearman 0.91 [0.80, 0.97], Kendall 0.78 [0.62, 0.90], decisions 85%, n=5",
        "  proxy -> r2: Spearman 0.70, Kendall 0.60 [0.20, 0.90], decisions -, n=5",
        "  r1 -> r2: Spearman -, Kendall -0.20 [-0.70, 0.40], decisions 50%, n=6",
        "  noise floor r1: seed Spearman 0.94, seed decisions 93%, neighbour swaps 20%, std 0.0125 "
        "(6 patterns, 2 seeds)",
        "  noise floor r2: seed Spearman -, seed decisions -, neighbour swaps -, std - (5 patterns, 2 seeds)",
    ]
    assert formats.fidelity_text(board[:2]) == ""


def test_cli_shows_the_fidelity_summary(tmp_path, board, monkeypatch, capsys):
    path = tmp_path / "board.jsonl"
    for r in [*board, rec.fidelity_record(fidelity_result(run_dir="outputs/fidelity/f2", search=None))]:
        store.append(r, path)
    assert app.main(["--file", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.index("M-*-M-") < out.index("Rank fidelity: f1") < out.index("Rank fidelity: f1 (proxy mad_cpu")
    assert out.count("proxy -> r1: Spearman 0.91 [0.80, 0.97]") == 2
    assert app.main(["--file", str(path), "--search", "s1"]) == 0  # a study of no search: neither an error nor shown
    out = capsys.readouterr().out
    assert out.count("Rank fidelity") == 1 and "ranks in (): baselines" in out
    assert app.main(["--file", str(path), "--format", "csv"]) == 0
    assert "Rank fidelity" not in capsys.readouterr().out
    assert app.main(["--file", str(path), "--format", "json", "--top", "1"]) == 0
    kinds = [r["kind"] for r in json.loads(capsys.readouterr().out)]
    assert kinds == ["architecture", "fidelity", "fidelity"]


# ------------------------------------------------------------------------------------------ the report

def _tag(page: str, pattern: str) -> list[str]:
    return re.findall(pattern, page)


def test_report_has_a_rank_fidelity_section(board):
    page = report.render(board)
    assert 'id="n-fidelity">1<' in page
    section = page[page.index('<section id="fidelity">'):]
    section = section[:section.index("</section>")]
    assert "<h2>Rank fidelity</h2>" in section and 'data-run-dir="outputs/fidelity/f1"' in section

    correlations = section[section.index('<table class="correlations">'):]
    body = _tag(correlations[:correlations.index("</table>")], r"<tr>(.*?)</tr>")[1:]
    cells = [_tag(row, r'<td data-value="[^"]*">([^<]*)</td>') for row in body]
    assert cells == [["proxy", "r1", "5", "0.91 [0.80, 0.97]", "0.78 [0.62, 0.90]", "85%"],
                     ["proxy", "r2", "5", "0.70", "0.60 [0.20, 0.90]", "-"],
                     ["r1", "r2", "6", "-", "-0.20 [-0.70, 0.40]", "50%"],
                     ["share of M", "r1", "6", "0.66 [0.10, 0.95]", "0.50 [0.00, 0.90]", "73%"]]
    noise = section[section.index('<table class="noise-floor">'):]
    body = _tag(noise[:noise.index("</table>")], r"<tr>(.*?)</tr>")[1:]
    assert [_tag(row, r'<td data-value="[^"]*">([^<]*)</td>') for row in body] == [
        ["r1", "6", "2", "0.94", "93%", "20%", "0.0125"], ["r2", "5", "2", "-", "-", "-", "-"]]

    scatters = _tag(section, r'<svg class="fidelity-scatter" id="([^"]+)" data-rung="([^"]+)"')
    assert scatters == [("fidelity-0-0", "r1"), ("fidelity-0-1", "r2")]
    r1 = section[section.index('data-rung="r1"'):section.index('data-rung="r2"')]
    marks = {pattern: mark for mark, pattern in _tag(r1, r'class="fid-point (\w+)" data-pattern="([^"]+)"')}
    assert marks == {"M-*-M-": "aggregate", "M-*-*-": "top", "*-*-*-": "baseline",
                                                "MM--*-": "plain", "*--**M": "plain"}  # M--*MM: no proxy score
    assert "1 pattern(s) without a proxy score or a r1 result are not plotted" in r1
    assert len(_tag(r1, r'<line class="seed-tick"')) == 2 * 5 and len(_tag(r1, r'<line class="seed-range"')) == 5
    assert sorted(_tag(r1, r'<text class="fid-label (\w+)"[^>]*>([^<]+)</text>')) == [
        ("aggregate", "M-*-M-"), ("baseline", "*-*-*-")]  # labelled; the rest have tooltips
    circles = {p: (float(cx), float(cy)) for p, cx, cy in
               _tag(r1, r'data-pattern="([^"]+)" data-proxy="[^"]+" data-bpb="[^"]+" cx="([\d.]+)" cy="([\d.]+)"')}
    # MM--*- scores higher on the proxy and lower (better) in bits per byte than *--**M: right of it, and
    # lower on the plot, since the y axis is bits per byte (lower is better), not inverted
    assert circles["MM--*-"][0] > circles["*--**M"][0] and circles["MM--*-"][1] > circles["*--**M"][1]
    assert "bits per byte (lower is better)" in r1 and "proxy score (higher is better)" in r1
    assert "proxy -&gt; r1: Spearman 0.91 [0.80, 0.97]" in r1  # the figure's caption

    assert 'id="fidelity"' not in report.render(board[:2]) and "n-fidelity" not in report.render(board[:2])


def test_fidelity_scatter_without_points_says_so():
    result = fidelity_result()
    for p in result["patterns"]:
        p["proxy"] = None
    page = report.render([rec.fidelity_record(result)])
    assert page.count("No pattern with a proxy score and a r") == 2 and 'class="fid-point' not in page


def test_the_fidelity_record_is_not_changed_by_rendering(board):
    before = copy.deepcopy(board)
    report.render(board)
    formats.fidelity_text(board)
    assert board == before
