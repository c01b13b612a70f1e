"""The leaderboard as one static HTML page: a sortable table, a Pareto plot, the searches' curves,
and the rank-fidelity studies when there are any.

Self-contained: inline CSS, a few lines of inline JS (table sorting only) and inline SVG drawn
here, so the page opens from a file:// URL with no network. All record text goes through
html.escape, and the script reads its data from DOM attributes only: no record text ever sits
inside <script>. Imports no torch.

  table     `#leaderboard`, one `tr.arch[data-pattern]` per architecture, `th[data-key]` headers;
            a click sorts by that column (numbers numerically, empty cells last), a second reverses.
            A baseline's row is `tr.arch.baseline` (muted), its role cell a `span.badge`
  pareto    `svg#pareto[data-x]`: proxy score (y) against a cost (x; log scale when the range is wide):
            `pareto_x="state"` (the default), bytes of inference state per token at a 32K context at 1B;
            `"decode"`, composer-bench's measured decode tokens/s (the largest batch that fit, at the
            largest context it measured; more is better). One `circle.point` per plotted architecture a
            search found; the non-dominated ones (higher score, and fewer bytes or more tokens/s) joined
            by `polyline.front`. Baselines are `path.baseline-point` diamonds, labelled, never on the front
  curves    `svg#curves`: one `polyline.curve[data-search]` per search, best score so far against
            evaluations, with a legend; each of the search's baselines a dashed `line.baseline-ref`
            across the plot at its score, labelled with its pattern
  fidelity  `section#fidelity` (only with fidelity records): per study an `article.fidelity` with its
            rungs, `table.correlations` (Spearman and Kendall with their intervals, decision accuracy),
            `table.noise-floor`, and per rung an `svg.fidelity-scatter[data-rung]`: proxy score (x)
            against the rung's bits per byte, mean over seeds (y, lower is better), one `.fid-point`
            per pattern (`.baseline` diamond, `.aggregate` square, `.top` filled, `.plain` the rest) with
            its seeds as `line.seed-tick`s
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from composer.errors import ConfigError
from primitives.registry import describe_alphabet
from search.leaderboard.formats import (
    correlation_text,
    fidelity_records,
    format_bytes,
    format_context,
    format_count,
    format_flops,
    format_interval,
    format_ratio,
    format_score,
    format_share,
    has_experts,
    has_measured,
    needle_columns,
    rows,
    short_device,
    task_columns,
    task_subset_rows,
)
from search.leaderboard.records import BASELINE
from search.leaderboard.store import current

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
                hint=f"one letter per layer: {describe_alphabet()}"),
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
        _Column(key="active_params_1b", label="1B active params", numeric=True, show=format_count,
                hint="parameters one token runs through at 1B (MoE layers: router, top-k and shared experts)"),
        _Column(key="layers_1b", label="1B layers", numeric=True, show=plain),
        _Column(key="flops_1b", label="1B FLOPs/tok", numeric=True, show=format_flops,
                hint="training FLOPs per token at 1B, seq_len 2048"),
        _Column(key="state_4k", label="1B state/tok 4K", numeric=True, show=format_bytes,
                hint="bf16 inference state per token of context at 4K tokens, at 1B"),
        _Column(key="state_32k", label="1B state/tok 32K", numeric=True, show=format_bytes,
                hint="bf16 inference state per token of context at 32K tokens, at 1B"),
        *_MEASURED,
        _Column(key="role", label="role", numeric=False, show=plain),
        _Column(key="aggregator", label="aggregator", numeric=False, show=plain),
        _Column(key="strategy", label="strategy", numeric=False, show=plain),
        _Column(key="search", label="search", numeric=False, show=plain),
        _Column(key="created", label="created", numeric=False, show=plain),
    ]


_MEASURED = (  # composer-bench's figures, only when a row has them (`_table`)
    _Column(key="bench_device", label="measured on", numeric=False, show=short_device,
            hint="the device composer-bench ran on; its size and context are in the cells' tooltips"),
    _Column(key="decode_tps", label="decode tok/s", numeric=True, show=format_count,
            hint="measured decode tokens/s at the largest batch that fit, at the largest context measured"),
    _Column(key="decode_batch", label="batch", numeric=True, show=lambda v: "-" if v is None else str(v),
            hint="the largest decode batch that fit (capped by composer-bench's max_batch)"),
    _Column(key="decode_vs_llama", label="vs Llama", numeric=True, show=format_ratio,
            hint="decode tokens/s over the Llama layout's of the same size, same run"),
    _Column(key="decode_memory", label="memory b1", numeric=True, show=format_bytes,
            hint="peak memory decoding one sequence at that context (weights, state, activations)"),
    _Column(key="prefill_tps", label="prefill tok/s", numeric=True, show=format_count,
            hint="measured prefill tokens/s at that context, batch 1"),
    _Column(key="train_tps", label="train tok/s", numeric=True, show=format_count,
            hint="measured training tokens/s (forward, backward, AdamW)"),
)
_MEASURED_KEYS = {c.key for c in _MEASURED}


def _table(table: Sequence[Mapping[str, Any]], grown: Mapping[tuple[str, str, str], str]) -> str:
    """The sortable table; `grown`: (search, role, pattern) -> its 1B pattern, the pattern cell's tooltip."""
    if not table:
        return '<p class="empty">No architectures yet: composer-search adds them to the leaderboard.</p>'
    measured = has_measured(table)
    columns = [c for c in _columns(task_columns(table), needle_columns(table))
               if (c.key != "active_params_1b" or has_experts(table))  # only where MoE layers make it differ
               and (c.key not in _MEASURED_KEYS or measured)]
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
            if c.key in _MEASURED_KEYS and row.get("bench_device") is not None:
                tip = f' title="{_e(_measured_where(row))}"'

            text = _e(c.show(value))
            if c.key == "role" and value == BASELINE:
                text = f'<span class="badge" title="a reference pattern, not found by the search">{text}</span>'
            cells.append(f'<td{css} data-value="{_e(raw)}"{tip}>{text}</td>')
        css = "arch baseline" if row["role"] == BASELINE else "arch"
        body.append(f'<tr class="{css}" data-pattern="{_e(row["pattern"])}">{"".join(cells)}</tr>')
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


def _measured_where(row: Mapping[str, Any]) -> str:
    return (f"{row['bench_device']}, {row['bench_size']}, {format_context(row['bench_context'])} context "
            f"(composer-bench)")


def pareto_front(points: Sequence[tuple[float, float]], *, lower_x_is_better: bool = True) -> list[int]:
    """Indices of the non-dominated points, x ascending: lower x (bytes; with `lower_x_is_better=False`
    higher x, tokens/s) and higher y (score) are better; a point is dominated when another is at least
    as good in both and better in one."""
    if not lower_x_is_better:
        return pareto_front([(-x, y) for x, y in points])[::-1]
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


def _diamond(cx: float, cy: float, r: float) -> str:
    """The path of a diamond (a baseline's marker) centred on (cx, cy)."""
    return f"M{cx:.1f},{cy - r:.1f} L{cx + r:.1f},{cy:.1f} L{cx:.1f},{cy + r:.1f} L{cx - r:.1f},{cy:.1f} Z"


def _short(pattern: str, n: int = 20) -> str:
    return pattern if len(pattern) <= n else pattern[: n - 1] + "…"


@dataclass(frozen=True, kw_only=True)
class _Cost:
    """A Pareto plot's x axis: a `rows` column and how to show it."""

    key: str
    label: str  # the axis title, before its unit
    lower_is_better: bool
    binary: bool  # bytes: ticks at powers of 1024
    show: Callable[[float], str]
    tip: Callable[[Mapping[str, Any]], str]  # a point's cost in its tooltip
    missing: str  # why a row is not plotted
    heading: str  # the section's title


PARETO_AXES: dict[str, _Cost] = {
    "state": _Cost(key="state_32k", label="inference state per token at 32K context, 1B (bytes",
                   lower_is_better=True, binary=True, show=format_bytes,
                   tip=lambda r: f"{format_bytes(r['state_32k'])}/token at 32K (1B)",
                   missing="without a 1B extrapolation", heading="Quality against inference state"),
    "decode": _Cost(key="decode_tps", label="measured decode throughput (tokens/s at the largest batch that fit",
                    lower_is_better=False, binary=False, show=format_count,
                    tip=lambda r: f"{format_count(r['decode_tps'])} decode tokens/s at batch {r['decode_batch']}, "
                                  f"{_measured_where(r)}",
                    missing="without composer-bench figures", heading="Quality against measured decode throughput"),
}


def _pareto(table: Sequence[Mapping[str, Any]], cost: _Cost = PARETO_AXES["state"]) -> str:
    shown = [r for r in table if r.get(cost.key) is not None and r.get("score") is not None]
    missing = len(table) - len(shown)
    note = (f'<p class="note">{missing} architecture(s) {_e(cost.missing)} are not plotted.</p>'
            if missing else "")
    if not shown:
        return f'<p class="empty">No architecture {_e(cost.missing.replace("without", "with"))} to plot yet.</p>' + note
    xs, ys = [float(r[cost.key]) for r in shown], [float(r["score"]) for r in shown]
    log = min(xs) > 0 and max(xs) / min(xs) >= WIDE_RANGE
    (x_lo, x_hi), (y_lo, y_hi) = _range(xs, log=log), _range(ys)
    x = _Axis(lo=x_lo, hi=x_hi, start=LEFT, end=W - RIGHT, log=log, binary=cost.binary)
    y = _Axis(lo=y_lo, hi=y_hi, start=H - BOTTOM, end=TOP)
    found = [i for i, r in enumerate(shown) if r["role"] != BASELINE]  # the front is of what the searches found
    front = [found[k] for k in pareto_front([(xs[i], ys[i]) for i in found], lower_x_is_better=cost.lower_is_better)]
    x_label = cost.label + (", log scale)" if log else ")")
    parts = _frame(x, y, x_label=x_label, y_label="proxy score", x_fmt=cost.show, y_fmt=lambda v: f"{v:.3g}")
    if front:
        line = " ".join(f"{x(xs[i]):.1f},{y(ys[i]):.1f}" for i in front)
        parts.append(f'<polyline class="front" points="{line}"/>')
    on_front = set(front)
    for i, r in enumerate(shown):
        tip = (f'{r["pattern"]}  score {format_score(r["score"], r.get("score_std"))}  '
               f'{cost.tip(r)}  {r["search"]} / {r["role"]}')
        if r["role"] == BASELINE:
            parts.append(f'<path class="baseline-point" data-pattern="{_e(r["pattern"])}" '
                         f'd="{_diamond(x(xs[i]), y(ys[i]), 6.5)}"><title>{_e(tip)}</title></path>')
            continue
        css = "point pareto" if i in on_front else "point"
        parts.append(f'<circle class="{css}" data-pattern="{_e(r["pattern"])}" cx="{x(xs[i]):.1f}" '
                     f'cy="{y(ys[i]):.1f}" r="{6 if i in on_front else 4.5}"><title>{_e(tip)}</title></circle>')
    labelled = front + [i for i, r in enumerate(shown) if r["role"] == BASELINE]
    for i in labelled:  # name the front's patterns and the baselines; the others have their tooltip
        css = "baseline-label" if shown[i]["role"] == BASELINE else "front-label"
        left = x(xs[i]) > x.end - 140  # near the right edge: label on the left of the point
        parts.append(f'<text class="{css}" x="{x(xs[i]) + (-9 if left else 9):.1f}" y="{y(ys[i]) + 4:.1f}" '
                     f'text-anchor="{"end" if left else "start"}">{_e(_short(shown[i]["pattern"]))}</text>')
    axis = next(name for name, c in PARETO_AXES.items() if c is cost)
    return (f'<svg id="pareto" data-x="{_e(axis)}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" '
            f'width="{W}" height="{H}" role="img" aria-label="{_e(cost.heading.replace("Quality", "score"))}">'
            f'{"".join(parts)}</svg>' + note)


def _steps(points: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    """A best-so-far curve as a step line: flat until the next improvement."""
    out: list[tuple[float, float]] = []
    for index, best in points:
        if out:
            out.append((index, out[-1][1]))
        out.append((index, best))
    return out


def _spread(positions: Sequence[float], gap: float) -> list[float]:
    """Label positions moved apart (downwards) until consecutive ones are at least `gap` apart, order kept."""
    order = sorted(range(len(positions)), key=lambda i: positions[i])
    out = list(positions)
    for previous, i in zip(order, order[1:]):
        out[i] = max(out[i], out[previous] + gap)
    return out


def _curves(searches: Sequence[Mapping[str, Any]],
            baselines: Mapping[str, Sequence[tuple[str, float]]] | None = None) -> str:
    """The best-so-far curves; `baselines`: search -> its (pattern, score) baselines, dashed lines."""
    if not searches:
        return '<p class="empty">No searches recorded yet.</p>'
    curves = [[tuple(p) for p in s.get("best_so_far", [])] for s in searches]
    refs = [(n, str(s["search"]), pattern, score) for n, s in enumerate(searches)
            for pattern, score in (baselines or {}).get(s["search"], ())]
    points = [p for c in curves for p in c]
    legend_w = 200
    y_lo, y_hi = _range([p[1] for p in points] + [score for *_, score in refs] or [0.0, 1.0])
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
    label_ys = _spread([y(score) - 4 for *_, score in refs], gap=12)
    for (n, name, pattern, score), label_y in zip(refs, label_ys):
        color, py = PALETTE[n % len(PALETTE)], y(score)
        tip = f"baseline {pattern} of {name}: score {score:.3f}"
        parts.append(f'<line class="baseline-ref" data-search="{_e(name)}" data-pattern="{_e(pattern)}" '
                     f'x1="{LEFT}" y1="{py:.1f}" x2="{x.end:.1f}" y2="{py:.1f}" stroke="{color}">'
                     f'<title>{_e(tip)}</title></line>'
                     f'<text class="baseline-label" x="{x.end - 4:.1f}" y="{label_y:.1f}" text-anchor="end" '
                     f'fill="{color}">{_e(_short(pattern))}<title>{_e(tip)}</title></text>')
    if refs:
        ly = TOP + 14 + 20 * len(searches)
        legend.append(f'<g class="legend-item"><line class="baseline-key" x1="{W - legend_w}" y1="{ly - 4}" '
                      f'x2="{W - legend_w + 22}" y2="{ly - 4}"/><text x="{W - legend_w + 28}" y="{ly}">'
                      f'baselines (dashed)</text></g>')
    parts.append(f'<g class="legend">{"".join(legend)}</g>')
    return (f'<svg id="curves" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
            f'role="img" aria-label="best score so far per search">{"".join(parts)}</svg>')


# ------------------------------------------------------------------------------------------ rank fidelity

MARKS = ("baseline", "aggregate", "top", "plain")  # a fidelity point's marker, in drawing order: last on top
_MARK_OF = {"baseline": "baseline", "aggregate": "aggregate", "best_single": "top", "top": "top"}


def _mark(roles: Sequence[str]) -> str:
    """The marker of a pattern in a fidelity scatter: the first of its roles in MARKS order, else plain."""
    marks = {_MARK_OF[r] for r in roles if r in _MARK_OF}
    return next((m for m in MARKS if m in marks), "plain")


def _static_table(css: str, header: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    """A small table that does not sort. A body cell is a value (shown as is, '-' for None) or a pair
    (text shown, raw value); the raw value is the cell's data-value."""
    def cell(item: Any) -> str:
        text, raw = item if isinstance(item, tuple) else ("-" if item is None else str(item), item)
        return f'<td data-value="{_e("" if raw is None else raw)}">{_e(text)}</td>'

    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(cell(item) for item in row) + "</tr>" for row in body)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>'


def _percent(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def _fixed(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def _fidelity_scatter(record: Mapping[str, Any], rung: Mapping[str, Any], sid: str) -> str:
    """Proxy score (x) against the rung's bits per byte (y, mean over seeds; each seed a tick)."""
    name = rung["name"]
    points = []
    for p in record["patterns"]:
        result = p["rungs"].get(name)
        if p.get("proxy") is not None and result is not None and result.get("mean") is not None:
            seeds = sorted(result["bits_per_byte"].items(), key=lambda item: int(item[0]))
            points.append((p, result, seeds))
    missing = len(record["patterns"]) - len(points)
    note = (f'<p class="note">{missing} pattern(s) without a proxy score or a {_e(name)} result are not plotted.</p>'
            if missing else "")
    if not points:
        return f'<p class="empty">No pattern with a proxy score and a {_e(name)} result yet.</p>' + note
    xs = [float(p["proxy"]) for p, _, _ in points]
    ys = [float(r["mean"]) for _, r, _ in points] + [float(v) for *_, seeds in points for _, v in seeds]
    x = _Axis(lo=_range(xs)[0], hi=_range(xs)[1], start=LEFT, end=W - RIGHT)
    y = _Axis(lo=_range(ys)[0], hi=_range(ys)[1], start=H - BOTTOM, end=TOP)
    parts = _frame(x, y, x_label="proxy score (higher is better)", y_label=f"{name} bits per byte (lower is better)",
                   x_fmt=lambda v: f"{v:.3g}", y_fmt=lambda v: f"{v:.3g}")
    labels = []
    for p, result, seeds in sorted(points, key=lambda item: -MARKS.index(_mark(item[0]["roles"]))):
        mark, px, py = _mark(p["roles"]), x(float(p["proxy"])), y(float(result["mean"]))
        values = [float(v) for _, v in seeds]
        if len(values) > 1:
            parts.append(f'<line class="seed-range" x1="{px:.1f}" y1="{y(min(values)):.1f}" x2="{px:.1f}" '
                         f'y2="{y(max(values)):.1f}"/>')
        for seed, v in seeds:
            tip = f"{p['pattern']} seed {seed}: {v:.4f} bits per byte"
            parts.append(f'<line class="seed-tick" x1="{px - 4:.1f}" y1="{y(v):.1f}" x2="{px + 4:.1f}" '
                         f'y2="{y(v):.1f}"><title>{_e(tip)}</title></line>')
        per_seed = ", ".join(f"seed {seed} {v:.4f}" for seed, v in seeds)
        tip = (f"{p['pattern']} ({', '.join(p['roles'])})  proxy {p['proxy']:.3f}  {name}: {result['mean']:.4f} "
               f"bits per byte ({per_seed}), grown to {result['grown']}, "
               f"{format_count(result['n_non_embedding_params'])} non-embedding params")
        attrs = (f'class="fid-point {mark}" data-pattern="{_e(p["pattern"])}" data-proxy="{p["proxy"]!r}" '
                 f'data-bpb="{result["mean"]!r}"')
        if mark == "baseline":
            tag, shape = "path", f'd="{_diamond(px, py, 7)}"'
        elif mark == "aggregate":
            tag, shape = "rect", f'x="{px - 5.5:.1f}" y="{py - 5.5:.1f}" width="11" height="11"'
        else:
            tag, shape = "circle", f'cx="{px:.1f}" cy="{py:.1f}" r="{5 if mark == "top" else 4}"'
        parts.append(f"<{tag} {attrs} {shape}><title>{_e(tip)}</title></{tag}>")
        if mark in ("baseline", "aggregate"):
            left = px > x.end - 140
            labels.append(f'<text class="fid-label {mark}" x="{px + (-10 if left else 10):.1f}" y="{py + 4:.1f}" '
                          f'text-anchor="{"end" if left else "start"}">{_e(_short(p["pattern"]))}</text>')
    return (f'<svg class="fidelity-scatter" id="{_e(sid)}" data-rung="{_e(name)}" xmlns="http://www.w3.org/2000/svg" '
            f'viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
            f'aria-label="{_e(f"proxy score against {name} bits per byte")}">{"".join(parts + labels)}</svg>' + note)


def _fidelity_study(record: Mapping[str, Any], n: int) -> str:
    proxy = record["proxy"]
    origin = f"search {record['search']} · " if record.get("search") else ""
    rungs = _static_table(
        "rungs", ["rung", "d_model", "non-embedding params", "tokens", "tokens/param", "seeds", "growth"],
        [[r["name"], r["d_model"], (format_count(r["target_non_embedding_params"]), r["target_non_embedding_params"]),
          (format_count(r["tokens"]), r["tokens"]), (f"{r['tokens_per_param']:g}", r["tokens_per_param"]),
          (" ".join(map(str, r["seeds"])), len(r["seeds"])), r["method"]] for r in record["rungs"]])
    correlations = _static_table(
        "correlations", ["ranking", "→ rung", "n", "Spearman [interval]", "Kendall [interval]", "decisions"],
        [[c["x"], c["y"], c["n"], (format_interval(c["spearman"]), c["spearman"]["value"]),
          (format_interval(c["kendall"]), c["kendall"]["value"]),
          (_percent(c["decision_accuracy"]), c["decision_accuracy"])]
         for c in [*record["correlations"], *({**c, "x": f"share of {c['letter']}"} for c in record.get("composition", [])),
                   *task_subset_rows(record.get("task_subsets"))]])
    noise = _static_table(
        "noise-floor", ["rung", "patterns", "seeds", "seed Spearman", "seed decisions", "neighbour swaps", "std (bpb)"],
        [[rung, f["n_patterns"], f["n_seeds"], (_fixed(f["seed_spearman"]), f["seed_spearman"]),
          (_percent(f["seed_decision_accuracy"]), f["seed_decision_accuracy"]),
          (_percent(f["neighbour_swap_rate"]), f["neighbour_swap_rate"]), (_fixed(f["std"], ".3g"), f["std"])]
         for rung, f in record["noise_floor"].items()])
    by_pair = {(c["x"], c["y"]): c for c in record["correlations"]}
    figures = []
    for k, rung in enumerate(record["rungs"]):
        c = by_pair.get(("proxy", rung["name"]))
        caption = _e(correlation_text(c)) if c else f"proxy -> {_e(rung['name'])}: no correlation recorded"
        figures.append(f"<figure>{_fidelity_scatter(record, rung, f'fidelity-{n}-{k}')}"
                       f"<figcaption>{caption}</figcaption></figure>")
    return f"""<article class="fidelity" data-run-dir="{_e(record['run_dir'])}">
<h3>{_e(record['name'])}</h3>
<p class="note">{_e(origin)}proxy {_e(proxy['evaluator'])} at d_model {_e(proxy['d_model'])},
seed {_e(proxy['seed'])} ·
{_e(len(record['patterns']))} patterns · {_e(record['run_dir'])} · {_e(record['created'])}</p>
{rungs}
<h4>Rank correlations</h4>
<p class="note">How well a ranking of the patterns (by proxy score, or by a smaller rung's bits per byte)
predicts the rung's ranking by bits per byte: Spearman and Kendall (1: the same order), each with its
interval; decisions: the share of pattern pairs it orders as the rung does. "share of M": the patterns
ranked by how many of their layers are that primitive, alone (against the proxy: what it rewards; against a
rung: a ranking the proxy should beat). "tasks …": the proxy's score over some of its tasks only (the mean of
their scores: what an evaluator of those tasks would give), against the full proxy and each rung; the first is
the fewest tasks that rank as all of them (Spearman at least the study's agreement).</p>
{correlations}
<h4>Noise floor</h4>
<p class="note">How well each rung agrees with itself across training seeds: the best a proxy can hope for.
Seed Spearman and seed decisions compare the orders of different seeds; neighbour swaps: how often patterns
next to each other in the order change places between seeds; std: the spread of bits per byte over seeds.</p>
{noise}
<h4>Proxy score against each rung</h4>
<p class="note">One mark per pattern at its mean over seeds, each seed's bits per byte a tick on a whisker.
Diamonds: baselines; squares: the aggregate; filled circles: the search's top and best single; plain
circles: random or given patterns. A faithful proxy puts the marks on a falling line (higher score, fewer
bits per byte).</p>
<div class="figures">{"".join(figures)}</div>
</article>"""


def _fidelity(records: Sequence[Mapping[str, Any]]) -> str:
    """The 'Rank fidelity' section ('' without fidelity records)."""
    studies = fidelity_records(records)
    if not studies:
        return ""
    articles = "\n".join(_fidelity_study(r, n) for n, r in enumerate(studies))
    return f"""<section id="fidelity"><h2>Rank fidelity</h2>
<p class="note">Does the proxy rank architectures as larger training does? Each study (composer-fidelity)
trains the same patterns at larger rungs and compares the orders.</p>
{articles}
</section>
"""


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
tr.baseline td { color: #666; font-style: italic; background: #fafafa; }
.badge { display: inline-block; padding: 0 7px; border-radius: 9px; background: #e4e4e4; color: #444;
         font-size: 11px; font-style: normal; }
.baseline-point { fill: #fff; stroke: #444; stroke-width: 1.5; }
.baseline-label, .fid-label { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 11px; }
#pareto .baseline-label, .fid-label { fill: #444; }
.baseline-ref { stroke-width: 1.5; stroke-dasharray: 6 4; opacity: 0.85; }
.baseline-key { stroke: #666; stroke-width: 2; stroke-dasharray: 6 4; }
h3 { font-size: 15px; margin: 20px 0 4px; } h4 { font-size: 14px; margin: 14px 0 4px; }
article.fidelity table { margin: 6px 0; } article.fidelity th { cursor: default; position: static; }
article.fidelity td { text-align: right; } article.fidelity td:first-child { text-align: left; }
.figures { display: flex; flex-wrap: wrap; gap: 12px; } figure { margin: 0; }
figcaption { color: #555; font-size: 13px; }
.seed-range { stroke: #aaa; } .seed-tick { stroke: #666; stroke-width: 1.5; }
.fid-point.plain { fill: #c9d6e6; stroke: #4a6f99; } .fid-point.top { fill: #1f77b4; stroke: #0d3c66; }
.fid-point.aggregate { fill: #d62728; stroke: #7a1010; }
.fid-point.baseline { fill: #fff; stroke: #222; stroke-width: 2; }
.fid-label.aggregate { fill: #7a1010; }
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
           title: str = "composer leaderboard", pareto_x: str = "state") -> str:
    """The whole page for these records (current versions only), as one HTML string. `pareto_x`: the Pareto
    plot's cost axis, "state" (inference state per token at 1B) or "decode" (measured decode tokens/s)."""
    if pareto_x not in PARETO_AXES:
        raise ConfigError(f"pareto_x must be one of {', '.join(PARETO_AXES)}, got {pareto_x!r}")
    cost = PARETO_AXES[pareto_x]
    records = current(records)
    table = rows(records)
    searches = sorted((r for r in records if r["kind"] == "search"), key=lambda r: r["search"])
    baselines: dict[str, list[tuple[str, float]]] = {}
    for row in table:
        if row["role"] == BASELINE and row.get("score") is not None:
            baselines.setdefault(row["search"], []).append((row["pattern"], float(row["score"])))
    n_fidelity = sum(r["kind"] == "fidelity" for r in records)
    studies = f' · <span id="n-fidelity">{n_fidelity}</span> fidelity studies' if n_fidelity else ""
    better = "with less state per token" if pareto_x == "state" else "with more measured decode throughput"
    pareto_note = ("Red: the Pareto front of the architectures the searches found (no other found architecture "
                   f"scores higher {better}).")
    curves_note = "Each search's best score after each evaluation."
    if baselines:
        pareto_note += (" White diamonds: baselines, reference patterns the searches evaluated beside their "
                        "candidates; shown for comparison, never on the front.")
        curves_note += (" Dashed lines: each search's baselines (reference patterns, labelled), at their scores, "
                        "in the search's colour.")
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
<span id="n-searches">{len(searches)}</span> searches{studies} · generated <time>{_e(when)}</time></p>
</header>
<section><h2>Architectures</h2>
<p class="note">Click a column header to sort; click it again to reverse. Costs are of the pattern
extrapolated to 1B (stacked below 16 layers, stretched from 16).</p>
{_table(table, grown)}
</section>
<section><h2>{_e(cost.heading)}</h2>
<p class="note">{_e(pareto_note)}</p>
{_pareto(table, cost)}
</section>
<section><h2>Searches: best score so far</h2>
<p class="note">{_e(curves_note)}</p>
{_curves(searches, baselines)}
</section>
{_fidelity(records)}<script>{_JS}</script>
</body>
</html>
"""


def write(records: Iterable[Mapping[str, Any]], path: str | Path, *, pareto_x: str = "state") -> Path:
    """Render the report and write it to `path` (parent folders created); returns the path."""
    page = render(records, pareto_x=pareto_x)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
