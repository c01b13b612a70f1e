"""search.leaderboard and composer-leaderboard: record builders, the JSON Lines store, the table and its exports, the CLI."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from composer.config import ModelConfig
from composer.errors import ConfigError
from scaling.accounting import account, count_parameters
from scaling.extrapolate import extrapolate
from composer.apps import leaderboard as app
from search.leaderboard import formats, records as rec, store

REPO = Path(__file__).parents[1]


def arch(pattern: str, *, scores: dict[str, list[float]] | None = None, search: str = "s1",
         role: str = "candidate", aggregator: str | None = None) -> dict:
    scores = scores or {"recall": [0.5, 0.7], "copy": [0.9, 0.9]}
    n_seeds = len(next(iter(scores.values())))
    return rec.architecture_record(
        pattern, search=search, strategy="random", role=role, aggregator=aggregator, task_scores=scores,
        seeds=list(range(n_seeds)), proxy_d_model=64, proxy_vocab_size=32, seq_len=64, evaluator="mad",
    )


def searched(name: str = "s1", *, curve=((1, 0.2), (2, 0.1), (3, 0.5), (5, 0.4)), n_evaluations: int = 5) -> dict:
    return rec.search_record(search=name, strategy="random", evaluator="mad", storage="sqlite:///study.db",
                            run_dir=f"outputs/search/{name}", curve=list(curve), n_evaluations=n_evaluations,
                            n_failed=1, space={"n_layers": 4, "letters": ["*", "-", "M"]})


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """composer-leaderboard as a user runs it, through its console-script function."""
    return subprocess.run([sys.executable, "-c", "from composer.apps.leaderboard import main; raise SystemExit(main())", *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd)


# ------------------------------------------------------------------------------------------ builders

def test_architecture_record_derived_columns():
    r = arch("*-M-", role="aggregate", aggregator="N0")
    assert r["kind"] == "architecture" and r["pattern"] == "*-M-" and r["seeds"] == [0, 1]
    assert r["tasks"]["recall"] == pytest.approx({"mean": 0.6, "std": 0.1, "n": 2})  # population std
    assert r["tasks"]["copy"] == pytest.approx({"mean": 0.9, "std": 0.0, "n": 2})
    # per-seed means over tasks: 0.7 and 0.8 -> std 0.05; the mean of the task means is 0.75
    assert r["score"] == pytest.approx({"mean": 0.75, "std": 0.05, "n": 2})
    assert r["attention_share"] == 0.25 and r["full_runs"] == {}
    model = ModelConfig(pattern="*-M-", vocab_size=32, d_model=64)
    assert r["proxy"]["n_params"] == count_parameters(model)["n_params"]
    assert r["proxy"]["train_flops_per_token"] == account(model, seq_len=64).train_flops_per_token
    assert r["proxy"]["n_layers"] == 4 and r["proxy"]["d_model"] == 64
    for target in ("350m", "1b", "3b"):
        grown = extrapolate("*-M-", target=target, method="stack")
        assert r["targets"][target] == {"pattern": grown.pattern, "n_layers": grown.n_layers,
                                        "n_params": grown.n_params, "method": "stack"}
    one_b = account(extrapolate("*-M-", target="1b", method="stack").model_config(), seq_len=2048)
    assert r["at_1b"]["train_flops_per_token"] == one_b.train_flops_per_token
    assert r["at_1b"]["state_bytes_per_token"] == {"4096": one_b.state_bytes_per_token[4096],
                                                   "32768": one_b.state_bytes_per_token[32768]}
    assert json.loads(json.dumps(r, allow_nan=False)) == r  # JSON-ready, string keys


def test_llama_block_extrapolates_to_llama_sizes():
    """'*-' stacked to 1B is Llama 3.2 1B itself: 32 layers, 1,235,814,400 parameters, and a KV cache of
    16 layers x (K, V) x 8 kv heads x 64 x 2 bytes = 32 KiB per token at any context."""
    r = arch("*-", scores={"recall": [0.8]})
    assert r["targets"]["1b"] == {"pattern": "*-" * 16, "n_layers": 32, "n_params": 1_235_814_400, "method": "stack"}
    assert r["targets"]["350m"]["n_layers"] == 28 and r["targets"]["3b"]["n_layers"] == 56
    assert r["at_1b"]["state_bytes_per_token"] == {"4096": 32768.0, "32768": 32768.0}
    assert r["score"] == {"mean": 0.8, "std": 0.0, "n": 1}  # one seed: std 0
    assert r["attention_share"] == 0.5


def test_long_patterns_stretch_and_unreachable_targets_keep_their_error():
    r = arch("**-----**---*---")  # 16 layers: stretched (the published 29 layers at 1B)
    assert {t["method"] for t in r["targets"].values()} == {"stretch"}
    assert r["targets"]["1b"]["n_layers"] == 29
    big = arch("*-" * 20)  # 40 layers: larger than the 350M and 1B references
    assert "already larger" in big["targets"]["350m"]["error"] and "error" in big["targets"]["1b"]
    assert "error" in big["at_1b"] and big["targets"]["3b"]["method"] == "stretch"
    (row,) = formats.rows([big])
    assert row["params_1b"] is None and row["state_32k"] is None and row["params_3b"] > 3e9


@pytest.mark.parametrize("change, message", [
    ({"role": "winner"}, "role must be one of"),
    ({"role": "aggregate", "aggregator": None}, "needs its aggregator"),
    ({"role": "baseline", "aggregator": "N0"}, "a 'baseline' record has no aggregator"),
    ({"task_scores": {"recall": [0.5]}}, "1 scores for 2 seeds"),
    ({"task_scores": {"recall": [0.5, float("nan")]}}, "finite number"),
    ({"seeds": [3, 3]}, "distinct"),
    ({"pattern": "*-X"}, "unknown primitive 'X' at position 2"),
    ({"proxy_d_model": 0}, "d_model"),
    ({"primitives": {"attention": {"n_heads": 3, "typo": 1}}}, "unknown key primitives.attention.typo"),
])
def test_architecture_record_rejects_bad_input(change, message):
    args = dict(pattern="*-M-", search="s", strategy="random", role="candidate", aggregator=None,
                task_scores={"recall": [0.5, 0.6]}, seeds=[0, 1], proxy_d_model=64, proxy_vocab_size=32,
                seq_len=64, evaluator="mad") | change
    with pytest.raises(ConfigError, match=message):
        rec.architecture_record(args.pop("pattern"), **args)


def test_primitive_settings_as_mappings_change_the_proxy():
    small = arch("*-")
    wide = rec.architecture_record("*-", search="s", strategy="random", role="candidate", aggregator=None,
                                  task_scores={"t": [0.5]}, seeds=[0], proxy_d_model=64, proxy_vocab_size=32,
                                  seq_len=64, evaluator="mad", primitives={"mlp": {"hidden": 512}})
    assert wide["proxy"]["n_params"] - small["proxy"]["n_params"] == 3 * 64 * (512 - 256)  # SwiGLU: 3 matrices
    assert wide["proxy"]["primitives"]["mlp"]["hidden"] == 512


def test_search_record_best_so_far():
    s = searched()
    assert s["kind"] == "search" and s["n_evaluations"] == 5 and s["n_failed"] == 1
    assert s["curve"] == [[1, 0.2], [2, 0.1], [3, 0.5], [5, 0.4]]
    assert s["best_so_far"] == [[1, 0.2], [2, 0.2], [3, 0.5], [5, 0.5]]
    with pytest.raises(ConfigError, match="must increase"):
        searched(curve=[(2, 0.1), (2, 0.3)])
    with pytest.raises(ConfigError, match="integer >= 1"):
        searched(curve=[(0, 0.1)])
    with pytest.raises(ConfigError, match="JSON-serialisable"):
        rec.search_record(search="s", strategy="r", evaluator="mad", storage="x", run_dir="o", curve=[],
                         n_evaluations=0, n_failed=0, space={"bad": object()})


# ------------------------------------------------------------------------------------------ storage

def test_later_records_replace_earlier_ones_by_key(tmp_path):
    path = tmp_path / "deep" / "board.jsonl"  # parent folders are created
    store.append(arch("*-M-", scores={"recall": [0.5]}), path)
    store.append(arch("*-M-", scores={"recall": [0.6]}, role="best_single"), path)  # another key: kept
    store.append(arch("*-M-", scores={"recall": [0.6]}, search="s2"), path)  # another search: kept
    store.append(searched(n_evaluations=3), path)
    store.append(arch("*-M-", scores={"recall": [0.9]}), path)  # replaces the first
    store.append(searched(n_evaluations=7), path)  # replaces the search record
    assert len(store.read_records(path)) == 6
    records = store.load(path)
    assert [rec.record_key(r) for r in records] == [
        ("architecture", "s1", "candidate", "*-M-"), ("architecture", "s1", "best_single", "*-M-"),
        ("architecture", "s2", "candidate", "*-M-"), ("search", "s1")]
    assert records[0]["score"]["mean"] == 0.9 and records[3]["n_evaluations"] == 7
    table = formats.rows(store.read_records(path))  # rows take the latest versions themselves
    assert [(r["rank"], r["role"], r["score"]) for r in table] == [
        (1, "candidate", 0.9), (2, "best_single", 0.6), (3, "candidate", 0.6)]
    assert store.load(tmp_path / "missing.jsonl") == []


def test_concurrent_appends_keep_every_line_whole(tmp_path):
    """Four processes append 40 records of ~20 KB each at once: every line parses, none is lost."""
    path, go = tmp_path / "board.jsonl", tmp_path / "go"
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from search.leaderboard.records import search_record
        from search.leaderboard.store import append
        worker = int(sys.argv[1])
        records = [search_record(search=f"w{{worker}}-{{i}}", strategy="random", evaluator="mad", storage="x",
                                 run_dir="o", curve=[(1, 0.5)], n_evaluations=1, n_failed=0,
                                 space={{"padding": str(worker) * 20000}}) for i in range(40)]
        while not Path({str(go)!r}).exists():
            time.sleep(0.005)
        for r in records:
            append(r, {str(path)!r})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(w)], cwd=REPO) for w in range(4)]
    go.touch()
    assert all(p.wait(timeout=60) == 0 for p in procs)
    lines = path.read_text().splitlines()
    assert len(lines) == 160
    records = [json.loads(line) for line in lines]  # no interleaved or torn line
    assert {r["search"] for r in records} == {f"w{w}-{i}" for w in range(4) for i in range(40)}
    assert all(r["space"]["padding"] == r["search"][1] * 20000 for r in records)


def test_malformed_lines_name_the_file_and_line(tmp_path):
    path = tmp_path / "board.jsonl"
    good = json.dumps(searched())
    for bad, why in [("{oops", "malformed"), ("[1, 2]", "JSON object"), ('{"kind": "model"}', "kind must be"),
                     ('{"kind": "architecture", "search": "s"}', "'role'")]:
        path.write_text(f"{good}\n\n{bad}\n{good}\n")  # the blank line 2 is skipped, not an error
        with pytest.raises(ConfigError, match=rf"board\.jsonl line 3: .*{why}"):
            store.load(path)
    with pytest.raises(ConfigError, match="kind must be"):
        store.append({"kind": "nope"}, path)


# ------------------------------------------------------------------------------------------ exports

@pytest.fixture
def board() -> list[dict]:
    return [arch("*-M-"), arch("M-M-", scores={"recall": [0.9, 0.9], "copy": [0.9, 0.8]}, role="aggregate",
                               aggregator="N0"),
            arch("**----", scores={"recall": [0.2, 0.3], "noise": [0.1, 0.1]}, search="s|2"), searched()]


def test_rows_are_ranked_and_flat(board):
    table = formats.rows(board)
    assert [r["pattern"] for r in table] == ["M-M-", "*-M-", "**----"]  # 0.875, 0.75, 0.175
    assert [r["rank"] for r in table] == [1, 2, 3]
    assert list(table[0]) == [*formats.BASE_COLUMNS, "task:copy", "task:noise", "task:recall", *formats.COST_COLUMNS]
    assert table[0]["task:noise"] is None and table[2]["task:noise"] == pytest.approx(0.1)
    assert table[1]["attention_share"] == 0.25 and table[1]["layers_1b"] == 32
    assert table[0]["aggregator"] == "N0" and table[1]["state_32k"] < table[1]["state_4k"]  # Mamba state amortises


def test_one_seed_has_no_spread_in_any_format():
    """A spread over one seed is undefined, not 0.000 (the HTML report's `± std` column showed 0.000)."""
    one, two = arch("*-M-", scores={"recall": [0.5], "copy": [0.9]}), arch("M-M-")
    table = {r["pattern"]: r for r in formats.rows([one, two])}
    assert table["*-M-"]["n_seeds"] == 1 and table["*-M-"]["score_std"] is None
    assert table["M-M-"]["n_seeds"] == 2 and table["M-M-"]["score_std"] == pytest.approx(0.05)


def test_csv_has_every_column_and_row(board):
    table = formats.rows(board)
    parsed = list(csv.DictReader(io.StringIO(formats.to_csv(table))))
    assert len(parsed) == 3 and list(parsed[0]) == list(table[0])
    assert [r["pattern"] for r in parsed] == ["M-M-", "*-M-", "**----"]
    assert float(parsed[1]["score"]) == pytest.approx(0.75) and parsed[0]["task:noise"] == ""
    assert list(csv.reader(io.StringIO(formats.to_csv([]))))[0][:2] == ["rank", "pattern"]  # header only


def test_markdown_and_text_tables(board):
    table = formats.rows(board)
    md = formats.to_markdown(table).splitlines()
    assert len(md) == 2 + 3 and md[0].startswith("| # | pattern | score |")
    assert set(md[1]) <= set("|-:") and md[1].count("|") == md[0].count("|")  # the header separator
    assert "`*-M-`" in md[3] and "s\\|2" in md[4]  # patterns in code spans, pipes escaped
    assert all(line.count("|") - line.count("\\|") == md[0].count("|") for line in md)
    text = formats.to_text(table).splitlines()
    assert text[0].split()[:3] == ["#", "pattern", "score"] and set(text[1]) <= {"-", " "}
    assert text[3].split()[:5] == ["2", "*-M-", "0.750", "±", "0.050"]
    assert len({len(line) for line in text[:2]}) == 1  # aligned
    assert "aggregate (N0)" in text[2] and "17 KiB" in text[3]  # 16,902 bytes/token at 32K
    assert formats.to_text([]) == "(no architectures)\n"


def test_json_is_the_full_records(board):
    assert json.loads(formats.to_json(board)) == board


# ------------------------------------------------------------------------------------------ baselines

def llama(score: float = 0.8, *, search: str = "s1") -> dict:
    """The Llama layout as a search's baseline: one '*-' block, scored like a candidate."""
    return arch("*-", scores={"recall": [score, score], "copy": [score, score]}, search=search, role="baseline")


def test_baselines_are_ranked_and_marked_in_every_format(board):
    assert "baseline" in rec.ROLES and llama()["role"] == "baseline" and llama()["aggregator"] is None
    board = [*board, llama(0.8)]
    table = formats.rows(board)
    assert [(r["pattern"], r["role"], r["rank"]) for r in table] == [  # ranked by score like the others
        ("M-M-", "aggregate", 1), ("*-", "baseline", 2), ("*-M-", "candidate", 3), ("**----", "candidate", 4)]
    text = formats.to_text(table).splitlines()
    assert [line.split()[0] for line in text[2:6]] == ["1", "(2)", "3", "4"]  # the baseline's rank in parentheses
    assert text[3].split()[1] == "*-" and text[3].split()[-2:] == ["baseline", "s1"]
    assert text[-1] == formats.BASELINE_NOTE and len(text) == 7
    assert formats.BASELINE_NOTE not in formats.to_text(formats.rows(board[:-1]))  # no baseline: no note
    md = formats.to_markdown(table).splitlines()
    assert md[3].startswith("| (2) | `*-` |") and "| baseline | s1 |" in md[3] and "baseline" not in md[2] + md[4]
    parsed = list(csv.DictReader(io.StringIO(formats.to_csv(table))))
    assert [(r["rank"], r["role"], r["aggregator"]) for r in parsed][1] == ("2", "baseline", "")
    assert [r.get("role") for r in json.loads(formats.to_json(board))].count("baseline") == 1


def test_report_marks_baselines_and_keeps_them_off_the_front():
    from search.leaderboard import html as report

    found = [arch("*-M-"), arch("*-*-", scores={"recall": [0.9, 0.9]})]  # 0.75 at 17 KiB, 0.9 at 32 KiB
    base = llama(0.99)  # Llama's 32 KiB per token: better than *-*- in score, as good in state
    table = formats.rows([*found, base])
    by_pattern = {r["pattern"]: r for r in table}
    points = [(by_pattern[p]["state_32k"], by_pattern[p]["score"]) for p in ("*-M-", "*-*-", "*-")]
    assert report.pareto_front(points) == [0, 2]  # counted in, the baseline would push *-*- off the front
    page = report.render([*found, base, searched(curve=[(1, 0.2), (3, 0.5)]), llama(0.7, search="no-record")])

    assert page.count('<tr class="arch baseline"') == 2 and page.count('<tr class="arch"') == 2
    row = page[page.index('<tr class="arch baseline" data-pattern="*-">'):]
    assert '<span class="badge"' in row[:row.index("</tr>")]
    pareto = page[page.index('<svg id="pareto"'):page.index("</svg>", page.index('<svg id="pareto"'))]
    front = re.findall(r'<circle class="point pareto" data-pattern="([^"]+)"', pareto)
    assert sorted(front) == ["*-*-", "*-M-"]  # the front is of the found architectures only
    assert pareto.count('<path class="baseline-point" data-pattern="*-"') == 2  # a diamond, not a circle
    assert 'circle class="point" data-pattern="*-"' not in pareto and ">*-</text>" in pareto  # labelled
    assert "White diamonds: baselines" in page

    curves = page[page.index('<svg id="curves"'):]
    curves = curves[:curves.index("</svg>")]
    (ref,) = re.findall(r'<line class="baseline-ref" data-search="s1" data-pattern="\*-" x1="[\d.]+" '
                        r'y1="([\d.]+)" x2="[\d.]+" y2="([\d.]+)"', curves)  # none for the search without a record
    (end,) = re.findall(r'<circle class="curve-end" cx="[\d.]+" cy="([\d.]+)"', curves)
    assert ref[0] == ref[1] and float(ref[0]) < float(end)  # horizontal, above the best score 0.5
    assert 'class="baseline-label"' in curves and ">*-<title>" in curves and "baselines (dashed)" in curves
    assert "Dashed lines: each search&#x27;s baselines" in page  # escaped, like every text

    plain = report.render([*found, searched()])
    assert "baseline" not in plain.split("</style>")[1]  # no baseline: no marks, no notes about them


# ------------------------------------------------------------------------------------------ long-context probe

def probed(pattern: str, needle: dict, **kwargs) -> dict:
    return rec.architecture_record(
        pattern, search="s1", strategy="random", role="candidate", aggregator=None, task_scores={"recall": [0.5]},
        seeds=[0], proxy_d_model=64, proxy_vocab_size=32, seq_len=64, evaluator="mad", needle=needle, **kwargs)


def test_needle_scores_are_record_fields():
    result = {"needle@1x": 0.9, "needle@2x": 0.25, "per_token@1x": 0.97, "lengths": {"1x": 64, "2x": 128},
              "by_depth": {"1x": {"0.5": 1.0}}, "n_probes": 20}  # a needle_accuracy result, as is
    r = probed("*-M-", result)
    assert r["needle@1x"] == 0.9 and r["needle@2x"] == 0.25
    assert "per_token@1x" not in r and "lengths" not in r  # only the leaderboard's columns are kept
    assert "needle@1x" not in arch("*-M-") and rec.needle_multiple("needle@1.5x") == 1.5
    assert rec.needle_multiple("needle@x") is None and rec.needle_multiple("task:needle@1x") is None
    for bad, message in [({"needle@1x": 1.5}, "between 0 and 1"), ({"needle@2x": float("nan")}, "finite"),
                         ({"per_token@1x": 0.5}, "no 'needle@<m>x'"), ([0.9], "must be a mapping")]:
        with pytest.raises(ConfigError, match=message):
            probed("*-M-", bad)


def test_needle_columns_appear_when_a_record_has_them(board):
    board = [*board, probed("*-*-", {"needle@2x": 0.25, "needle@1x": 0.875}),
             probed("MM--", {"needle@1x": 0.5, "needle@4x": 0.0})]
    table = formats.rows(board)
    assert list(table[0]) == [*formats.BASE_COLUMNS, "task:copy", "task:noise", "task:recall",
                              "needle@1x", "needle@2x", "needle@4x", *formats.COST_COLUMNS]  # in order of the multiple
    assert formats.needle_columns(table) == ["needle@1x", "needle@2x", "needle@4x"]
    by_pattern = {r["pattern"]: r for r in table}
    assert by_pattern["*-*-"]["needle@1x"] == 0.875 and by_pattern["*-*-"]["needle@4x"] is None
    assert by_pattern["M-M-"]["needle@1x"] is None  # no probe: an empty cell

    text = formats.to_text(table).splitlines()
    header = text[0].split()
    assert header[:7] == ["#", "pattern", "score", "seeds", "needle@1x", "needle@2x", "needle@4x"]
    row = next(line.split() for line in text if "*-*-" in line)
    assert row[4:7] == ["0.875", "0.250", "-"]
    md = formats.to_markdown(table).splitlines()
    assert "| recall | needle@1x | needle@2x | needle@4x | attn |" in md[0]
    assert all(line.count("|") - line.count("\\|") == md[0].count("|") for line in md)
    parsed = list(csv.DictReader(io.StringIO(formats.to_csv(table))))
    assert {r["pattern"]: r["needle@2x"] for r in parsed}["*-*-"] == "0.25"
    assert {r["pattern"]: r["needle@2x"] for r in parsed}["M-M-"] == ""
    assert json.loads(formats.to_json(board))[-1]["needle@4x"] == 0.0

    from search.leaderboard import html as report

    page = report.render(board)
    assert 'data-key="needle@1x"' in page and 'data-key="needle@4x"' in page
    assert 'data-key="needle@1x"' not in report.render(board[:4])  # no probe anywhere: no column
    assert "needle@" not in formats.to_text(formats.rows(board[:4])) + formats.to_markdown(formats.rows(board[:4]))


@pytest.mark.parametrize("value, text", [(1_234_567, "1.2M"), (350e6, "350M"), (1.1e9, "1.1B"), (999_999, "1.0M"),
                                         (512, "512"), (None, "-")])
def test_format_count(value, text):
    assert formats.format_count(value) == text


@pytest.mark.parametrize("value, text", [(512, "512 B"), (1536, "1.5 KiB"), (32768.0, "32 KiB"),
                                         (3 * 2**20, "3.0 MiB"), (40.25, "40 B"), (4.5, "4.5 B"), (None, "-")])
def test_format_bytes(value, text):
    assert formats.format_bytes(value) == text


# ------------------------------------------------------------------------------------------ CLI

def test_cli_prints_the_default_file(tmp_path, board, monkeypatch, capsys):
    for r in board:
        store.append(r, tmp_path / store.DEFAULT_PATH)
    monkeypatch.chdir(tmp_path)
    assert app.main([]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in out[2:]] == ["M-M-", "*-M-", "**----"]
    assert app.main(["--format", "csv", "--top", "2"]) == 0
    assert len(list(csv.DictReader(io.StringIO(capsys.readouterr().out)))) == 2
    assert app.main(["--format", "json", "--search", "s|2"]) == 0
    assert [r["pattern"] for r in json.loads(capsys.readouterr().out)] == ["**----"]
    assert app.main(["--format", "md", "--output", "out/board.md"]) == 0
    assert capsys.readouterr().out.strip() == "out/board.md"
    assert (tmp_path / "out/board.md").read_text().startswith("| # | pattern")
    assert app.main(["--html", "report.html"]) == 0
    assert capsys.readouterr().out.strip() == "report.html"  # only the path: no table asked for
    assert 'id="leaderboard"' in (tmp_path / "report.html").read_text()


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_cli_errors_are_one_line_and_exit_2(tmp_path, board):
    missing = tmp_path / "none.jsonl"
    assert _one_line_error(run("--file", str(missing))) == (
        f"composer-leaderboard: error: no leaderboard at {missing} (run composer-search first)")
    assert _one_line_error(run(cwd=tmp_path)) == (  # the default path, relative to the cwd
        "composer-leaderboard: error: no leaderboard at outputs/leaderboard.jsonl (run composer-search first)")
    path = tmp_path / "board.jsonl"
    for r in board:
        store.append(r, path)
    assert _one_line_error(run("--file", str(path), "--search", "nope")) == (
        "composer-leaderboard: error: unknown search 'nope' (known searches: s1, s|2)")
    assert "--top must be a positive integer" in _one_line_error(run("--file", str(path), "--top", "0"))
    with path.open("a") as f:
        f.write("not json\n")
    assert f"{path} line 5: malformed" in _one_line_error(run("--file", str(path)))
    usage = run("--format", "xml")  # argparse's own usage error
    assert usage.returncode == 2 and "invalid choice: 'xml'" in usage.stderr


def test_cli_subprocess_succeeds_from_the_cwd(tmp_path, board):
    for r in board:
        store.append(r, tmp_path / "outputs" / "leaderboard.jsonl")
    result = run("--top", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3 and "M-M-" in result.stdout


def test_imports_no_torch():
    code = "import sys, search.leaderboard.formats, search.leaderboard.html; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60).returncode == 0
