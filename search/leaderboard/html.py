"""The leaderboard as one static HTML page: a sortable table, a Pareto plot, the searches' curves.

Self-contained: inline CSS, a few lines of inline JS (table sorting only) and inline SVG drawn
here, so the page opens from a file:// URL with no network. All record text goes through
html.escape, and the script reads its data from DOM attributes only: no record text ever sits
inside <script>. Imports no torch.

  table   `#leaderboard`, one `tr.arch[data-pattern]` per architecture, `th[data-key]` headers;
          a click sorts by that column (numbers numerically, empty cells last), a second reverses
  pareto  `svg#pareto`: proxy score (y) against bytes of inference state per token at a 32K
          context at 1B (x; log scale when the range is wide), one `circle.point` per plotted
          architecture; the non-dominated ones (higher score, fewer bytes) joined by `polyline.front`
  curves  `svg#curves`: one `polyline.curve[data-search]` per search, best score so far against
          evaluations, with a legend
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from search.leaderboard.store import current
from search.leaderboard.formats import (
    format_bytes,
    format_count,
    format_flops,
    format_score,
    format_share,
    needle_columns,
    rows,
    task_columns,
)

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22")
WIDE_RANGE = 10.0  # x max / min at or above which the Pareto plot uses a log axis


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


# ------------------------------------------------------------------------------------------ table

@dataclass(frozen=True, kw_only=True)
class _Column:
    key: str  # the `rows` column, the th's data-key
    label: str
    numeric: bool
    show: Callable[[Any], str]  # row value -> cell text
    hint: str = ""  # header tooltip


def _columns(tasks: Sequence[str], needles: Sequence[str] = ()) -> list[_Column]:
    def plain(v: Any) -> str:
        return "-" if v is None else str(v)

    return [
        _Column(key="rank", label="#", numeric=True, show=plain),
        _Column(key="pattern", label="pattern", numeric=False, show=plain,
                hint="one letter per layer: * attention, - MLP, M Mamba-2"),
        _Column(key="score", label="score", numeric=True, show=format_score,
                hint="mean over tasks of the mean accuracy over seeds"),
        _Column(key="score_std", label="± std", numeric=True, show=format_score,
                hint="population std over seeds of the mean over tasks"),
        _Column(key="n_seeds", label="seeds", numeric=True, show=plain),
        *(_Column(key=t, label=t.removeprefix("task:"), numeric=True, show=format_score, hint="mean over seeds")
          for t in tasks),
        *(_Column(key=n, label=n, numeric=True, show=format_score,
                  hint=f"needle-in-a-haystack exact retrieval at {n.removeprefix('needle@')} the training context")
          for n in needles),
        _Column(key="attention_share", label="attn", numeric=True, show=format_share, hint="share of * layers"),
        _Column(key="proxy_params", label="proxy params", numeric=True, show=format_count),
        _Column(key="params_350m", label="350M params", numeric=True, show=format_count),
        _Column(key="params_1b", label="1B params", numeric=True, show=format_count),
        _Column(key="params_3b", label="3B params", numeric=True, show=format_count),
        _Column(key="layers_1b", label="1B layers", numeric=True, show=plain),
        _Column(key="flops_1b", label="1B FLOPs/tok", numeric=True, show=format_flops,
                hint="training FLOPs per token at 1B, seq_len 2048"),
        _Column(key="state_4k", label="1B state/tok 4K", numeric=True, show=format_bytes,
                hint="bf16 inference state per token of context at 4K tokens, at 1B"),
        _Column(key="state_32k", label="1B state/tok 32K", numeric=True, show=format_bytes,
                hint="bf16 inference state per token of context at 32K tokens, at 1B"),
        _Column(key="role", label="role", numeric=False, show=plain),
        _Column(key="aggregator", label="aggregator", numeric=False, show=plain),
        _Column(key="strategy", label="strategy", numeric=False, show=plain),
        _Column(key="search", label="search", numeric=False, show=plain),
        _Column(key="created", label="created", numeric=False, show=plain),
    ]


def _table(table: Sequence[Mapping[str, Any]], grown: Mapping[tuple[str, str, str], str]) -> str:
    """The sortable table; `grown`: (search, role, pattern) -> its 1B pattern, the pattern cell's tooltip."""
    if not table:
        return '<p class="empty">No architectures yet: composer-search adds them to the leaderboard.</p>'
    columns = _columns(task_columns(table), needle_columns(table))
    head = "".join(
        f'<th data-key="{_e(c.key)}" data-type="{"num" if c.numeric else "text"}"'
        + (f' title="{_e(c.hint)}"' if c.hint else "") + f">{_e(c.label)}</th>"
        for c in columns
    )
    body = []
    for row in table:
        cells = []
        for c in columns:
            value = row.get(c.key)
            raw = "" if value is None else repr(value) if isinstance(value, float) else str(value)
            css = ' class="pattern"' if c.key == "pattern" else ' class="num"' if c.numeric else ""
            big = grown.get((row["search"], row["role"], row["pattern"])) if c.key == "pattern" else None
            tip = f' title="at 1B: {_e(big)}"' if big else ""
            cells.append(f'<td{css} data-value="{_e(raw)}"{tip}>{_e(c.show(value))}</td>')
        body.append(f'<tr class="arch" data-pattern="{_e(row["pattern"])}">{"".join(cells)}</tr>')
    return (f'<div class="scroll"><table id="leaderboard"><thead><tr>{head}</tr></thead>'
            f'<tbody>\n{chr(10).join(body)}\n</tbody></table></div>')


# ------------------------------------------------------------------------------------------ plots

@dataclass(frozen=True, kw_only=True)
class _Axis:
    """Maps data values in [lo, hi] to pixels in [start, end] (linear, or log2 when `log`)."""

    lo: float
    hi: float
    start: float  # pixel of lo
    end: float  # pixel of hi
    log: bool = False
    binary: bool = False  # linear ticks at 1, 2, 4, 8... × a power of 1024 (bytes), not 1, 2, 5 × 10^k
    integer: bool = False  # counts: no ticks between whole numbers

    def _t(self, v: float) -> float:
        return math.log2(v) if self.log else v

    def __call__(self, v: float) -> float:
        span = self._t(self.hi) - self._t(self.lo)
        return self.start + (self._t(v) - self._t(self.lo)) / span * (self.end - self.start)

    def ticks(self) -> list[float]:
        if self.log:  # powers of two, at most ~6
            a, b = math.ceil(math.log2(self.lo) - 1e-9), math.floor(math.log2(self.hi) + 1e-9)
            step = max(1, math.ceil((b - a + 1) / 6))
            return [2.0**k for k in range(a, b + 1, step)]
        raw = (self.hi - self.lo) / 5
        if self.binary:
            mag = 1024 ** max(0, math.floor(math.log(raw, 1024)))
            step = next(2**k * mag for k in range(11) if 2**k * mag >= raw)
        else:
            mag = 10 ** math.floor(math.log10(raw))
            step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
            if self.integer:
                step = max(1, step)
        first = math.ceil(self.lo / step - 1e-9)
        return [k * step for k in range(first, math.floor(self.hi / step + 1e-9) + 1)]


def _range(values: Sequence[float], *, pad: float = 0.05, log: bool = False) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if log:
        return lo / 2**0.25, hi * 2**0.25
    if hi == lo:
        margin = abs(lo) * 0.1 or 0.5
        return lo - margin, hi + margin
    margin = (hi - lo) * pad
    return lo - margin, hi + margin


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points, x ascending: lower x (bytes) and higher y (score) are
    better; a point is dominated when another is at least as good in both and better in one."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    for i in order:
        x, y = points[i]
        if not front or y > points[front[-1]][1] or (x, y) == points[front[-1]]:
            front.append(i)
    return front


W, H = 720, 380
LEFT, RIGHT, TOP, BOTTOM = 78, 20, 16, 52  # plot margins, px


def _frame(x: _Axis, y: _Axis, *, x_label: str, y_label: str, x_fmt: Callable[[float], str],
           y_fmt: Callable[[float], str]) -> list[str]:
    """Axes, grid, tick labels and axis titles of one plot."""
    out = [f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{x.end - LEFT:.1f}" height="{y.start - TOP:.1f}"/>']
    for t in x.ticks():
        px = x(t)
        out.append(f'<line class="grid" x1="{px:.1f}" y1="{TOP}" x2="{px:.1f}" y2="{y.start:.1f}"/>'
                   f'<text class="tick" x="{px:.1f}" y="{y.start + 16:.1f}" text-anchor="middle">{_e(x_fmt(t))}</text>')
    for t in y.ticks():
        py = y(t)
        out.append(f'<line class="grid" x1="{LEFT}" y1="{py:.1f}" x2="{x.end:.1f}" y2="{py:.1f}"/>'
                   f'<text class="tick" x="{LEFT - 6}" y="{py + 4:.1f}" text-anchor="end">{_e(y_fmt(t))}</text>')
    middle = (LEFT + x.end) / 2
    out.append(f'<text class="label" x="{middle:.1f}" y="{H - 10}" text-anchor="middle">{_e(x_label)}</text>'
               f'<text class="label" transform="translate(16 {(TOP + y.start) / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle">{_e(y_label)}</text>')
    return out


def _pareto(table: Sequence[Mapping[str, Any]]) -> str:
    shown = [r for r in table if r.get("state_32k") is not None and r.get("score") is not None]
    missing = len(table) - len(shown)
    note = (f'<p class="note">{missing} architecture(s) without a 1B extrapolation are not plotted.</p>'
            if missing else "")
    if not shown:
        return '<p class="empty">No architecture with a 1B extrapolation to plot yet.</p>' + note
    xs, ys = [float(r["state_32k"]) for r in shown], [float(r["score"]) for r in shown]
    log = min(xs) > 0 and max(xs) / min(xs) >= WIDE_RANGE
    (x_lo, x_hi), (y_lo, y_hi) = _range(xs, log=log), _range(ys)
    x = _Axis(lo=x_lo, hi=x_hi, start=LEFT, end=W - RIGHT, log=log, binary=True)
    y = _Axis(lo=y_lo, hi=y_hi, start=H - BOTTOM, end=TOP)
    front = pareto_front(list(zip(xs, ys)))
    x_label = "inference state per token at 32K context, 1B (bytes" + (", log scale)" if log else ")")
    parts = _frame(x, y, x_label=x_label, y_label="proxy score", x_fmt=format_bytes, y_fmt=lambda v: f"{v:.3g}")
    line = " ".join(f"{x(xs[i]):.1f},{y(ys[i]):.1f}" for i in front)
    parts.append(f'<polyline class="front" points="{line}"/>')
    on_front = set(front)
    for i, r in enumerate(shown):
        tip = (f'{r["pattern"]}  score {format_score(r["score"], r.get("score_std"))}  '
               f'{format_bytes(r["state_32k"])}/token at 32K (1B)  {r["search"]} / {r["role"]}')
        css = "point pareto" if i in on_front else "point"
        parts.append(f'<circle class="{css}" data-pattern="{_e(r["pattern"])}" cx="{x(xs[i]):.1f}" '
                     f'cy="{y(ys[i]):.1f}" r="{6 if i in on_front else 4.5}"><title>{_e(tip)}</title></circle>')
    for i in front:  # name the front's patterns; the others have their tooltip
        name = shown[i]["pattern"] if len(shown[i]["pattern"]) <= 20 else shown[i]["pattern"][:19] + "…"
        left = x(xs[i]) > x.end - 140  # near the right edge: label on the left of the point
        parts.append(f'<text class="front-label" x="{x(xs[i]) + (-9 if left else 9):.1f}" y="{y(ys[i]) + 4:.1f}" '
                     f'text-anchor="{"end" if left else "start"}">{_e(name)}</text>')
    return (f'<svg id="pareto" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
            f'role="img" aria-label="score against inference state">{"".join(parts)}</svg>' + note)


def _steps(points: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    """A best-so-far curve as a step line: flat until the next improvement."""
    out: list[tuple[float, float]] = []
    for index, best in points:
        if out:
            out.append((index, out[-1][1]))
        out.append((index, best))
    return out


def _curves(searches: Sequence[Mapping[str, Any]]) -> str:
    if not searches:
        return '<p class="empty">No searches recorded yet.</p>'
    curves = [[tuple(p) for p in s.get("best_so_far", [])] for s in searches]
    points = [p for c in curves for p in c]
    legend_w = 200
    y_lo, y_hi = _range([p[1] for p in points] or [0.0, 1.0])
    x = _Axis(lo=1, hi=max([2] + [p[0] for p in points]), start=LEFT, end=W - RIGHT - legend_w, integer=True)
    y = _Axis(lo=y_lo, hi=y_hi, start=H - BOTTOM, end=TOP)
    parts = _frame(x, y, x_label="evaluations", y_label="best score so far", x_fmt=lambda v: f"{v:g}",
                   y_fmt=lambda v: f"{v:.3g}")
    legend = []
    for n, (s, curve) in enumerate(zip(searches, curves)):
        color, name = PALETTE[n % len(PALETTE)], str(s["search"])
        line = " ".join(f"{x(i):.1f},{y(b):.1f}" for i, b in _steps(curve))
        parts.append(f'<polyline class="curve" data-search="{_e(name)}" points="{line}" stroke="{color}">'
                     f'<title>{_e(name)}</title></polyline>')
        if curve:
            i, b = curve[-1]
            parts.append(f'<circle class="curve-end" cx="{x(i):.1f}" cy="{y(b):.1f}" r="3.5" fill="{color}">'
                         f'<title>{_e(f"{name}: best {b:.3f} after {i:g} evaluations")}</title></circle>')
        ly = TOP + 14 + 20 * n
        short = name if len(name) <= 24 else name[:23] + "…"
        legend.append(f'<g class="legend-item"><line x1="{W - legend_w}" y1="{ly - 4}" x2="{W - legend_w + 22}" '
                      f'y2="{ly - 4}" stroke="{color}" stroke-width="3"/><text x="{W - legend_w + 28}" y="{ly}">'
                      f'{_e(short)}<title>{_e(name)} ({_e(s.get("strategy", "?"))}, '
                      f'{_e(s.get("n_evaluations", "?"))} evaluations, {_e(s.get("n_failed", "?"))} failed)'
                      f'</title></text></g>')
    parts.append(f'<g class="legend">{"".join(legend)}</g>')
    return (f'<svg id="curves" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
            f'role="img" aria-label="best score so far per search">{"".join(parts)}</svg>')


# ------------------------------------------------------------------------------------------ page

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; color: #222; margin: 24px; max-width: 1600px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.summary, .note, .empty { color: #555; } .empty { font-style: italic; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 9px; border-bottom: 1px solid #e3e3e3; white-space: nowrap; text-align: left; }
th { background: #f4f5f7; cursor: pointer; user-select: none; position: sticky; top: 0; }
th:hover { background: #e8eaee; }
th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: 10px; }
th[aria-sort="descending"]::after { content: " \\25BC"; font-size: 10px; }
td.num { text-align: right; } td.pattern { font-family: ui-monospace, Menlo, Consolas, monospace; }
tr.arch:hover td { background: #f7fafe; }
svg { display: block; margin: 4px 0; font-size: 12px; }
.frame { fill: none; stroke: #999; } .grid { stroke: #eee; } .tick { fill: #555; } .label { fill: #222; }
.point { fill: #9db7d5; stroke: #4a6f99; } .point.pareto { fill: #d62728; stroke: #7a1010; }
.front { fill: none; stroke: #d62728; stroke-width: 1.5; stroke-dasharray: 5 3; }
.curve { fill: none; stroke-width: 2; }
.front-label { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 11px; fill: #7a1010; }
"""

_JS = """
(function () {
  var table = document.getElementById("leaderboard");
  if (!table) return;
  var body = table.tBodies[0];
  var headers = Array.prototype.slice.call(table.querySelectorAll("th[data-key]"));
  headers.forEach(function (th, col) {
    th.addEventListener("click", function () {
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      headers.forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var numeric = th.getAttribute("data-type") === "num";
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var va = a.cells[col].getAttribute("data-value"), vb = b.cells[col].getAttribute("data-value");
        if (va === "" || vb === "") return (va === "") - (vb === "");  // empty cells last, either way
        var d = numeric ? Number(va) - Number(vb) : (va < vb ? -1 : va > vb ? 1 : 0);
        return ascending ? d : -d;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
})();
"""


def render(records: Iterable[Mapping[str, Any]], *, generated: datetime | None = None,
           title: str = "composer leaderboard") -> str:
    """The whole page for these records (current versions only), as one HTML string."""
    records = current(records)
    table = rows(records)
    searches = sorted((r for r in records if r["kind"] == "search"), key=lambda r: r["search"])
    grown = {(r["search"], r["role"], r["pattern"]): r.get("targets", {}).get("1b", {}).get("pattern")
             for r in records if r["kind"] == "architecture"}
    when = (generated or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>{_e(title)}</h1>
<p class="summary"><span id="n-architectures">{len(table)}</span> architectures ·
<span id="n-searches">{len(searches)}</span> searches · generated <time>{_e(when)}</time></p>
</header>
<section><h2>Architectures</h2>
<p class="note">Click a column header to sort; click it again to reverse. Costs are of the pattern
extrapolated to 1B (stacked below 16 layers, stretched from 16).</p>
{_table(table, grown)}
</section>
<section><h2>Quality against inference state</h2>
<p class="note">Red: the Pareto front (no other architecture scores higher with less state per token).</p>
{_pareto(table)}
</section>
<section><h2>Searches: best score so far</h2>
{_curves(searches)}
</section>
<script>{_JS}</script>
</body>
</html>
"""


def write(records: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Render the report and write it to `path` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(records), encoding="utf-8")
    return path
