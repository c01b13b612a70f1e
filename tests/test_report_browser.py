"""search.leaderboard.html opened in a real headless browser (Debian's Chromium, driven by Playwright).

Needs `pip install playwright` (the PyPI wheel; its own browser download is not used) and
`apt-get install chromium`; COMPOSER_CHROMIUM overrides the browser's path.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from primitives.registry import REGISTRY
from search.leaderboard import formats, records as rec
from search.leaderboard import html as report

CHROMIUM = os.environ.get("COMPOSER_CHROMIUM", "/usr/bin/chromium")
ODD_SEARCH = 'evo <b>&"1"'  # must come back as text, never as markup

# pattern -> (per-task scores over two seeds, search): distinct scores, so every sort order is unique
ARCHS = {
    "*-M-": ({"recall": [0.80, 0.90], "copy": [0.70, 0.60]}, "random-1"),
    "**----": ({"recall": [0.95, 0.90], "copy": [0.85, 0.80]}, "random-1"),
    "M-M-": ({"recall": [0.60, 0.50], "copy": [0.40, 0.45]}, ODD_SEARCH),
    "*-": ({"recall": [0.70, 0.75], "copy": [0.65, 0.70]}, ODD_SEARCH),
    "MMM-MMM-*-": ({"recall": [0.90, 0.85], "copy": [0.75, 0.70]}, ODD_SEARCH),
}
CURVES = {"random-1": [(1, 0.3), (2, 0.2), (4, 0.85), (6, 0.86)], ODD_SEARCH: [(1, 0.5), (3, 0.8)]}


def _records(archs: dict = ARCHS) -> list[dict]:
    out = [rec.architecture_record(p, search=s, strategy="random", role="candidate", aggregator=None,
                                  task_scores=scores, seeds=[0, 1], proxy_d_model=64, proxy_vocab_size=32,
                                  seq_len=64, evaluator="mad") for p, (scores, s) in archs.items()]
    out += [rec.search_record(search=s, strategy="random", evaluator="mad", storage="x", run_dir="o", curve=c,
                             n_evaluations=c[-1][0], n_failed=0, space={}) for s, c in CURVES.items()]
    return out


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return _records()


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), f"no browser at {CHROMIUM}: apt-get install chromium (or set COMPOSER_CHROMIUM)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])  # root in CI: no sandbox
        yield browser
        browser.close()


class Opened:
    """A report page with every console error, page error and network request it made."""

    def __init__(self, browser: Browser, path: Path) -> None:
        self.page: Page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(path.as_uri())

    def patterns(self) -> list[str]:
        return self.page.eval_on_selector_all("#leaderboard tr.arch", "rows => rows.map(r => r.dataset.pattern)")

    def column(self, key: str) -> list[str]:
        """Cell values of a column in display order, read from the DOM."""
        return self.page.eval_on_selector_all(
            "#leaderboard tr.arch",
            f"""rows => {{ const i = [...document.querySelectorAll('#leaderboard th')]
                                      .findIndex(th => th.dataset.key === {key!r});
                           return rows.map(r => r.cells[i].dataset.value); }}""")


@pytest.fixture
def opened(browser, records, tmp_path):
    path = report.write(records, tmp_path / "report.html")
    page = Opened(browser, path)
    yield page
    page.page.close()


def test_loads_without_errors_or_network(opened):
    assert opened.errors == []
    assert opened.requests == [opened.page.url]  # the file itself, nothing fetched
    assert opened.page.text_content("#n-architectures") == "5" and opened.page.text_content("#n-searches") == "2"


def test_screenshot(opened, tmp_path):
    shot = tmp_path / "report.png"
    opened.page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert width == 1400 and height > 900 and len(data) > 30_000  # taller than the viewport: table + 2 plots
    for svg in ("#pareto", "#curves"):
        box = opened.page.locator(svg).bounding_box()
        assert box is not None and box["width"] > 500 and box["height"] > 300


def test_table_has_one_row_per_architecture(opened, records):
    by_score = [r["pattern"] for r in formats.rows(records)]
    assert opened.patterns() == by_score == ["**----", "MMM-MMM-*-", "*-M-", "*-", "M-M-"]
    cells = opened.page.eval_on_selector_all("#leaderboard td.pattern", "cs => cs.map(c => c.textContent)")
    assert cells == by_score
    searches = opened.column("search")
    assert searches.count(ODD_SEARCH) == 3  # escaped in the HTML, read back as the original text
    assert opened.page.locator("#leaderboard b").count() == 0
    hint = opened.page.get_attribute("#leaderboard th[data-key=pattern]", "title")  # every letter of the registry
    assert all(f"'{p.letter}' ({p.name})" in hint for p in REGISTRY.values()), hint


def test_clicking_headers_sorts(opened):
    page = opened.page
    page.click('th[data-key="score"]')
    scores = [float(v) for v in opened.column("score")]
    assert scores == sorted(scores) and opened.patterns()[0] == "M-M-"
    assert page.get_attribute('th[data-key="score"]', "aria-sort") == "ascending"
    page.click('th[data-key="score"]')
    assert [float(v) for v in opened.column("score")] == sorted(scores, reverse=True)
    assert page.get_attribute('th[data-key="score"]', "aria-sort") == "descending"
    page.click('th[data-key="proxy_params"]')  # numeric, not text order: 271K < 1.4M
    params = [int(v) for v in opened.column("proxy_params")]
    assert params == sorted(params) and params != sorted(params, key=str)
    page.click('th[data-key="pattern"]')  # text
    assert opened.patterns() == sorted(ARCHS)
    assert opened.errors == []


def test_empty_cells_sort_last_both_ways(browser, tmp_path):
    archs = {**ARCHS, "*-" * 20: ({"recall": [0.99, 0.99], "copy": [0.99, 0.99]}, "random-1")}  # no 1B size
    page = Opened(browser, report.write(_records(archs), tmp_path / "r.html"))
    for _ in range(2):
        page.page.click('th[data-key="params_1b"]')
        values = page.column("params_1b")
        assert values[-1] == "" and "" not in values[:-1]
    assert page.page.locator("#pareto circle.point").count() == 5  # the one without a 1B size is not plotted
    assert "1 architecture(s) without a 1B extrapolation" in page.page.text_content("body")
    assert page.errors == []


def test_plots_have_one_mark_per_architecture_and_search(opened, records):
    table = formats.rows(records)
    points = opened.page.eval_on_selector_all("#pareto circle.point", "cs => cs.map(c => c.dataset.pattern)")
    assert sorted(points) == sorted(ARCHS)
    tips = opened.page.eval_on_selector_all("#pareto circle.point title", "ts => ts.map(t => t.textContent)")
    assert all(t.startswith(p) for p, t in zip(points, tips))
    # the front, by brute force: no other architecture scores at least as high with at most as many bytes
    front = {r["pattern"] for r in table
             if not any(o is not r and o["score"] >= r["score"] and o["state_32k"] <= r["state_32k"]
                        and (o["score"], o["state_32k"]) != (r["score"], r["state_32k"]) for o in table)}
    highlighted = opened.page.eval_on_selector_all("#pareto circle.pareto", "cs => cs.map(c => c.dataset.pattern)")
    assert set(highlighted) == front and 0 < len(front) < len(ARCHS)
    curves = opened.page.eval_on_selector_all("#curves polyline.curve", "ls => ls.map(l => l.dataset.search)")
    assert sorted(curves) == sorted(CURVES)
    legend = opened.page.eval_on_selector_all("#curves .legend text", "ts => ts.map(t => t.firstChild.textContent)")
    assert sorted(legend) == sorted(CURVES)
    labels = opened.page.eval_on_selector_all("#curves text.label", "ts => ts.map(t => t.textContent)")
    assert labels == ["evaluations", "best score so far"]


def test_empty_report_still_renders(browser, tmp_path):
    page = Opened(browser, report.write([], tmp_path / "empty.html"))
    assert page.errors == []
    assert page.page.locator("#leaderboard").count() == 0 and page.page.locator("svg").count() == 0
    text = page.page.text_content("body")
    assert "No architectures yet" in text and "No searches recorded yet" in text
    assert page.page.text_content("#n-architectures") == "0"


def test_pareto_front_rule():
    # (bytes, score): lower bytes and higher score are better
    points = [(10, 0.5), (20, 0.7), (15, 0.4), (30, 0.7), (5, 0.3), (20, 0.7)]
    assert report.pareto_front(points) == [4, 0, 1, 5]  # x ascending; exact duplicates both kept


def test_baselines_and_rank_fidelity_are_drawn(browser, tmp_path):
    from tests.test_leaderboard_fidelity import fidelity_result

    best = {"recall": [0.99, 0.99], "copy": [0.99, 0.99]}  # scores above every candidate: it would lead the front
    baseline = rec.architecture_record("*-*-", search="random-1", strategy="random", role="baseline", aggregator=None,
                                       task_scores=best, seeds=[0, 1], proxy_d_model=64, proxy_vocab_size=32,
                                       seq_len=64, evaluator="mad")
    opened = Opened(browser, report.write([*_records(), baseline, rec.fidelity_record(fidelity_result())],
                                          tmp_path / "report.html"))
    page = opened.page
    assert opened.errors == [] and opened.requests == [page.url]
    assert page.text_content("#n-architectures") == "6" and page.text_content("#n-fidelity") == "1"

    row = page.locator("#leaderboard tr.baseline")
    assert row.count() == 1 and row.get_attribute("data-pattern") == "*-*-" and opened.patterns()[0] == "*-*-"
    assert row.locator(".badge").is_visible() and row.locator(".badge").inner_text() == "baseline"
    assert page.eval_on_selector("#leaderboard tr.baseline td", "td => getComputedStyle(td).fontStyle") == "italic"
    assert page.eval_on_selector("#leaderboard tr.arch:not(.baseline) td",
                                 "td => getComputedStyle(td).fontStyle") == "normal"

    diamond = page.locator("#pareto path.baseline-point")
    assert diamond.count() == 1 and diamond.is_visible() and diamond.get_attribute("data-pattern") == "*-*-"
    front = page.eval_on_selector_all("#pareto circle.pareto", "cs => cs.map(c => c.dataset.pattern)")
    assert front and "*-*-" not in front

    ref = page.locator('#curves line.baseline-ref[data-search="random-1"]')
    assert ref.count() == 1 and ref.get_attribute("data-pattern") == "*-*-"
    assert ref.bounding_box()["width"] > 300  # across the plot (a horizontal line: no height to be "visible")
    assert page.eval_on_selector("#curves line.baseline-ref", "l => getComputedStyle(l).strokeDasharray") != "none"
    assert page.eval_on_selector("#curves text.baseline-label", "t => t.firstChild.textContent") == "*-*-"

    section = page.locator("#fidelity")
    assert section.is_visible() and section.locator("h2").inner_text() == "Rank fidelity"
    first = page.eval_on_selector_all("#fidelity table.correlations tbody tr:first-child td",
                                      "tds => tds.map(t => t.textContent)")
    assert first == ["proxy", "r1", "5", "0.91 [0.80, 0.97]", "0.78 [0.62, 0.90]", "85%"]
    scatters = section.locator("svg.fidelity-scatter")
    assert scatters.count() == 2
    for i in range(2):
        frame = scatters.nth(i).locator("rect.frame").bounding_box()
        points = scatters.nth(i).locator(".fid-point")
        assert points.count() == 5  # the pattern without a proxy score is left out
        for j in range(5):
            box = points.nth(j).bounding_box()
            assert points.nth(j).is_visible() and box["width"] > 5
            centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            assert frame["x"] < centre[0] < frame["x"] + frame["width"]
            assert frame["y"] < centre[1] < frame["y"] + frame["height"]
        marks = points.evaluate_all("ps => ps.map(p => p.tagName + ' ' + p.classList[1])")
        assert sorted(marks) == ["circle plain", "circle plain", "circle top", "path baseline", "rect aggregate"]
        assert scatters.nth(i).locator("line.seed-tick").count() == 10
    assert opened.errors == []
